"""A connection's outgoing queue: bounded in bytes, written to its socket by the shared flusher.

Like an IRC server's SendQ: a peer that stops reading fills its own outbox, and the producer
learns it from put() at once instead of blocking, so one slow client never stalls another.

Who writes a socket (the one rule; every change of `_state` is under `_lock`):

    IDLE ----put()/close()/release()----> DUE        (the producer calls flusher.schedule once)
    DUE  ----flush(): all sent, open----> IDLE
    DUE  ----flush(): more queued-------> DUE        (the flusher flushes it again)
    DUE  ----flush(): socket full-------> BLOCKED    (the flusher waits for EVENT_WRITE)
    BLOCKED --socket writable-----------> DUE
    DUE/BLOCKED --closed and all sent,
                  or cut off at the
                  deadline, or broken---> FINISHED   (only the socket's close is left)
    FINISHED --released by the reader---> CLOSED     (the flusher closes the socket)

Only the flusher thread calls flush(), send() and close() on the socket, and only in DUE, so
bytes go out once and in order: what a partial send left over goes back *ahead* of anything
queued meanwhile. Producers (any thread) only append under the lock. The connection's reader
thread never writes; it may shutdown() the socket's read side (under the lock, before CLOSED)
and, when it ends, release()s the socket to the flusher, which closes it once the last bytes
(a bye) are out or the deadline has passed. Without a flusher (the web gateway's relay) the
outbox is a plain queue that one consumer thread drains with take().

Only a client whose socket has stopped taking data is dropped: put() refuses data over the
budget only while the outbox is BLOCKED. An outbox over its budget that the socket would take
means the server is behind; it is accepted and reported to the flusher, whose `lagging` count
makes the readers of senders wait (backpressure) instead of blaming the recipient.
"""

from __future__ import annotations

import contextlib
import enum
import fcntl
import socket
import struct
import termios
import threading
import time
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from collections.abc import Callable


class Writing(enum.Enum):
    IDLE = "idle"
    DUE = "due"
    BLOCKED = "blocked"
    FINISHED = "finished"
    CLOSED = "closed"


class Flushed(enum.Enum):
    """What flush() leaves for the flusher to do."""

    NOTHING = "nothing"  # idle, or finished and waiting for release()
    AGAIN = "again"  # more was queued meanwhile
    BLOCKED = "blocked"  # wait until the socket is writable
    CLOSE = "close"  # finished and released: close the socket (close_socket())


class Scheduler(Protocol):
    def schedule(self, outbox: Outbox) -> bool:
        """Have outbox.flush() called soon; False if the flusher has stopped."""

    def lag(self, change: int) -> None:
        """An outbox began (+1) or stopped (-1) being over its budget on a writable socket."""


class Sock(Protocol):
    """What the flusher needs of a socket (socket.socket; a fake in unit tests)."""

    def send(self, data: bytes, flags: int = ..., /) -> int: ...
    def recv(self, size: int, flags: int = ..., /) -> bytes: ...
    def fileno(self) -> int: ...
    def shutdown(self, how: int, /) -> None: ...
    def close(self) -> None: ...


LINGER_MAX_READS = 16  # unread input dropped before closing: at most 1 MiB, then a reset
RECV_BYTES = 65_536


def unacknowledged_bytes(sock: Sock) -> int:
    """Bytes we sent that the peer has not acknowledged yet (Linux's SIOCOUTQ)."""
    try:
        raw = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
    except (OSError, ValueError):  # ValueError: not a real descriptor (a test's fake)
        return 0
    return int(struct.unpack("i", raw)[0])


class Outbox:
    __slots__ = (
        "__weakref__", "_chunks", "_closed", "_deadline", "_flusher", "_lagging", "_lock",
        "_max_bytes", "_on_overflow", "_partial", "_queued_bytes", "_released", "_sock",
        "_state", "_waiter",
    )

    def __init__(
        self,
        max_bytes: int,
        sock: Sock | None = None,
        flusher: Scheduler | None = None,
        on_overflow: Callable[[], None] | None = None,
    ) -> None:
        """With `sock` and `flusher` the flusher writes the socket; without, take() drains.

        `on_overflow` is called (by the flusher, outside any lock) when the socket stopped
        taking data while more than `max_bytes` are queued: the connection drops the client.
        """
        self._max_bytes = max_bytes
        self._sock = sock
        self._flusher = flusher if sock is not None else None
        self._on_overflow = on_overflow
        # _lock guards every field below.
        self._lock = threading.Lock()
        self._chunks: list[bytes] = []  # a list, not a deque: 56 bytes when idle, not 600
        self._queued_bytes = 0  # including what the flusher is sending right now
        self._state = Writing.IDLE
        self._closed = False  # accepts no more data (the connection is ending)
        self._released = sock is None  # the reader thread is done with the socket
        self._deadline = 0.0  # once closed: when the flusher cuts the last bytes off
        self._partial = False  # the first chunk is the rest of a line the socket took in part
        self._lagging = False  # counted in the flusher's lag (see the module docstring)
        # The one thread waiting for room or data (wait_for_room, take), if any: a lock it
        # holds and blocks on a second time; whoever changes what it waits for releases it.
        # Made only while waiting, so an idle outbox carries no Condition.
        self._waiter: threading.Lock | None = None

    # --- producers (any thread) ---------------------------------------------------------------

    def put(self, data: bytes) -> bool:
        """Queue data without blocking. False: the client stopped reading (not queued).

        After close() data is silently discarded and True returned: the connection is already
        on its way out, and a late delivery is no reason to drop it twice.
        """
        lag = schedule = False
        with self._lock:
            if self._closed:
                return True
            queued = self._queued_bytes + len(data)
            if queued > self._max_bytes:
                if self._state is Writing.BLOCKED or self._flusher is None:
                    return False
                if not self._lagging:  # the socket takes data: the server is behind
                    self._lagging = lag = True
            self._chunks.append(data)
            self._queued_bytes = queued
            if self._state is Writing.IDLE:
                self._state = Writing.DUE
                schedule = self._flusher is not None
            if self._waiter is not None:
                self._wake()
        if lag:
            self._flusher.lag(+1)  # type: ignore[union-attr]
        if schedule:
            self._flusher.schedule(self)  # type: ignore[union-attr]
        return True

    def close(
        self, final: bytes | None = None, *, discard: bool = False, deadline: float | None = None
    ) -> bool:
        """Accept nothing more; optionally drop what is queued and end with `final`.

        `deadline` (time.monotonic()) is when the flusher cuts off what is still unsent (the
        default: now). Returns False if the outbox was already closed (then nothing changes).
        """
        with self._lock:
            if self._closed:
                return False
            self._closed = True
            self._deadline = deadline if deadline is not None else time.monotonic()
            if discard:
                # A line the socket took in part is finished first: the bye must start a line.
                kept = self._chunks[:1] if self._partial else []
                self._chunks[:] = kept
                self._queued_bytes = sum(len(chunk) for chunk in kept)
            if final is not None:
                self._chunks.append(final)
                self._queued_bytes += len(final)
            if self._waiter is not None:
                self._wake()
            schedule = self._mark_due() or self._state is Writing.BLOCKED
        if schedule:
            self._schedule()
        return True

    def release(self) -> None:
        """The reader thread is done with the socket: the flusher may close it."""
        with self._lock:
            self._released = True
            schedule = self._mark_due()
        if schedule:
            self._schedule()

    def shutdown_read(self) -> None:
        """Wake the reader blocked in recv() (it reads end-of-file), unless already closed."""
        with self._lock:
            if self._state is not Writing.CLOSED and self._sock is not None:
                with contextlib.suppress(OSError):  # already disconnected: nothing to wake
                    self._sock.shutdown(socket.SHUT_RD)

    @property
    def closed(self) -> bool:
        with self._lock:
            return self._closed

    @property
    def state(self) -> Writing:
        with self._lock:
            return self._state

    @property
    def deadline(self) -> float:
        with self._lock:
            return self._deadline

    def wait_for_room(self, size: int, budget: int, timeout: float) -> bool:
        """Wait until `size` more bytes fit in `budget` (or nothing is queued); False on
        timeout or close. For a producer that may wait: the replay of missed messages."""
        end = time.monotonic() + timeout
        while True:
            with self._lock:
                if self._closed:
                    return False
                if not self._queued_bytes or self._queued_bytes + size <= budget:
                    return True
                waiter = self._wait()
            if not waiter.acquire(timeout=max(0.0, end - time.monotonic())):
                with self._lock:
                    if self._waiter is waiter:
                        self._waiter = None
                    return not self._closed and (
                        not self._queued_bytes or self._queued_bytes + size <= budget
                    )

    def take(self) -> bytes | None:
        """Without a flusher: wait for data and return all that is queued as one batch; None
        once closed and empty. The wake-up path is put()/close()."""
        assert self._flusher is None, "the flusher writes this outbox"
        while True:
            with self._lock:
                if self._chunks:
                    batch = b"".join(self._chunks)
                    self._chunks.clear()
                    self._queued_bytes = 0
                    self._state = Writing.IDLE
                    if self._waiter is not None:  # one waiting for room
                        self._wake()
                    return batch
                if self._closed:
                    return None
                waiter = self._wait()
            waiter.acquire()

    # --- the flusher thread only --------------------------------------------------------------

    def flush(self) -> Flushed:
        """Write what is queued without blocking (state DUE); see the module docstring."""
        sock = self._sock
        assert sock is not None
        with self._lock:
            if self._state is not Writing.DUE:
                if self._state is Writing.BLOCKED:
                    return Flushed.BLOCKED  # closed meanwhile: the flusher arms its deadline
                if self._state is Writing.FINISHED and self._released:
                    return Flushed.CLOSE
                return Flushed.NOTHING
            chunks = self._chunks
            if not chunks:
                return self._settle()
            data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            self._chunks = []
        try:
            sent = sock.send(data, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:  # the peer is gone: nothing queued can reach it any more
            sent = -1
        overflow = False
        with self._lock:
            if sent < 0:
                self._chunks.clear()
                self._queued_bytes = 0
                self._closed = True
                result = self._finish()
            elif sent < len(data):
                # max(): a drop (close with discard) meanwhile recounted what is queued.
                self._queued_bytes = max(0, self._queued_bytes - sent)
                # Ahead of whatever producers queued while we were sending: the ordering rule.
                self._chunks.insert(0, data[sent:] if sent else data)
                self._partial = self._partial or sent > 0
                self._state = Writing.BLOCKED
                overflow = self._queued_bytes > self._max_bytes and not self._closed
                result = Flushed.BLOCKED
            else:
                self._queued_bytes = max(0, self._queued_bytes - sent)
                self._partial = False
                result = self._settle()
            if self._waiter is not None:
                self._wake()
            unlag = self._lagging and (
                self._queued_bytes <= self._max_bytes or result is not Flushed.AGAIN
            )
            if unlag:
                self._lagging = False
        if unlag:
            self._flusher.lag(-1)  # type: ignore[union-attr]
        if overflow and self._on_overflow is not None:
            self._on_overflow()  # it closes this outbox, with a bye after what was begun
        return result

    def writable(self) -> None:
        """The flusher saw the BLOCKED socket writable: it is due again."""
        with self._lock:
            if self._state is Writing.BLOCKED:
                self._state = Writing.DUE

    def cut_off(self) -> Flushed:
        """The deadline passed with bytes unsent: drop them and end the connection."""
        with self._lock:
            if self._state in (Writing.FINISHED, Writing.CLOSED):
                return Flushed.NOTHING
            self._chunks.clear()
            self._queued_bytes = 0
            self._closed = True
            if self._sock is not None:
                with contextlib.suppress(OSError):  # wake the reader, stop the peer
                    self._sock.shutdown(socket.SHUT_RDWR)
            result = self._finish()
            unlag, self._lagging = self._lagging, False
        if unlag:
            self._flusher.lag(-1)  # type: ignore[union-attr]
        return result

    def close_socket(self, linger_until: float | None) -> bool:
        """FINISHED and released: end our side, and close once the peer has acknowledged
        everything (or at once without `linger_until`). False: not yet acknowledged, call
        again later (the flusher polls lingering sockets until their deadline).

        Closing a socket that still has unread input (a client that keeps sending) makes the
        kernel answer with a reset and throw away what it has not yet delivered of our output,
        the bye among it. So: end our side (a FIN after the data), wait until the peer has
        acknowledged everything, then drop the unread input and close.
        """
        sock = self._sock
        assert sock is not None
        with self._lock:
            if self._state is not Writing.FINISHED or not self._released:
                return True  # not ours to close (yet): release() schedules it again
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)
        if (
            linger_until is not None
            and time.monotonic() < linger_until
            and unacknowledged_bytes(sock) > 0
        ):
            return False
        for _ in range(LINGER_MAX_READS):
            try:
                if not sock.recv(RECV_BYTES, socket.MSG_DONTWAIT):
                    break
            except OSError:  # nothing more to read now (EAGAIN), or the peer is gone
                break
        with self._lock:
            self._state = Writing.CLOSED
            sock.close()
        return True

    @property
    def sock(self) -> Sock | None:
        return self._sock

    # --- helpers (under _lock) ----------------------------------------------------------------

    def _settle(self) -> Flushed:
        """All that was taken went out (DUE): what is left to do."""
        if self._chunks:
            return Flushed.AGAIN
        if self._closed:
            return self._finish()
        self._state = Writing.IDLE
        return Flushed.NOTHING

    def _finish(self) -> Flushed:
        self._state = Writing.FINISHED
        return Flushed.CLOSE if self._released else Flushed.NOTHING

    def _mark_due(self) -> bool:
        """After close() or release(): True if the flusher must look at the outbox now."""
        if self._state is Writing.IDLE:
            self._state = Writing.DUE
            return self._flusher is not None
        return self._state is Writing.FINISHED and self._released

    def _schedule(self) -> None:
        """Outside the lock: the flusher has a lock of its own."""
        if self._flusher is not None and not self._flusher.schedule(self):
            self._close_without_flusher()

    def _close_without_flusher(self) -> None:
        """The flusher has stopped (the server is gone): close the socket here, once the
        reader is done with it; unsent bytes are lost, as at any cut-off."""
        with self._lock:
            if not self._released or self._state is Writing.CLOSED or self._sock is None:
                return
            self._state = Writing.CLOSED
            self._sock.close()

    def _wait(self) -> threading.Lock:
        waiter = self._waiter
        if waiter is None:
            waiter = self._waiter = threading.Lock()
            waiter.acquire()
        return waiter

    def _wake(self) -> None:
        assert self._waiter is not None
        self._waiter.release()
        self._waiter = None
