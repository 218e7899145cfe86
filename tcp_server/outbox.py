"""A connection's outgoing queue: bounded in bytes, drained in batches by one writer thread.

Like an IRC server's SendQ: a peer that stops reading fills its own outbox, and the producer
learns it from put() at once instead of blocking, so one slow client never stalls another.

With a `schedule` and a `try_send` (see tcp_server/flusher.py), an outbox that goes from idle
to non-empty is handed to the shared flusher thread, which writes it without blocking; the
connection's writer thread takes over only when the socket does not take everything, or at
close. One of them owns the outbox at a time, so bytes go out once and in order.
"""

from __future__ import annotations

import enum
import threading
from collections import deque
from collections.abc import Callable


class _Owner(enum.Enum):
    FLUSHER = "flusher"
    WRITER = "writer"


class Outbox:
    def __init__(
        self,
        max_bytes: int,
        try_send: Callable[[bytes], int] | None = None,
        schedule: Callable[[Outbox], None] | None = None,
    ) -> None:
        self._max_bytes = max_bytes
        self._try_send = try_send
        self._schedule = schedule if try_send is not None else None
        # _lock guards everything below. _ready is its condition: producers notify it on put()
        # and close(); the single consumer (the connection's writer) waits on it in take().
        # Hot paths take the bare lock (`with self._lock`, no Python-level __enter__).
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)
        self._chunks: deque[bytes] = deque()
        self._queued_bytes = 0
        self._closed = False
        # Who writes what is queued: nobody (idle), the flusher or the writer thread.
        self._owner: _Owner | None = None
        # _drained: notified when queued bytes go out, if anyone waits (wait_for_room).
        self._drained = threading.Condition(self._lock)
        self._room_waiters = 0

    def put(self, data: bytes) -> bool:
        """Queue data without blocking. False: the outbox is full (the data was not queued).

        After close() data is silently discarded and True returned: the connection is already
        on its way out, and a late delivery is no reason to drop it twice.
        """
        with self._lock:
            if self._closed:
                return True
            if self._queued_bytes + len(data) > self._max_bytes:
                return False
            self._chunks.append(data)
            self._queued_bytes += len(data)
            if self._owner is _Owner.FLUSHER:
                return True  # it takes this along
            if self._owner is None and self._schedule is not None:
                self._owner = _Owner.FLUSHER
            else:
                self._owner = _Owner.WRITER
                self._ready.notify()
                return True
        self._schedule(self)  # outside the lock: the flusher has a lock of its own
        return True

    def wait_for_room(self, size: int, budget: int, timeout: float) -> bool:
        """Wait until `size` more bytes fit in `budget` (or nothing is queued); False on
        timeout or close. For a producer that may wait: the replay of missed messages."""
        with self._lock:
            self._room_waiters += 1
            try:
                return self._drained.wait_for(
                    lambda: self._closed or not self._chunks
                    or self._queued_bytes + size <= budget,
                    timeout,
                ) and not self._closed
            finally:
                self._room_waiters -= 1

    def flush(self) -> bool:
        """The flusher's turn: write what is queued without blocking.

        Returns True when more was queued meanwhile (call again). Whatever the socket does not
        take, and a closing outbox, goes to the writer thread.
        """
        assert self._try_send is not None
        with self._lock:
            data = self._chunks[0] if len(self._chunks) == 1 else b"".join(self._chunks)
            self._chunks.clear()
            self._queued_bytes = 0
            if self._room_waiters:
                self._drained.notify_all()
        sent = 0
        if data:
            try:
                sent = self._try_send(data)
            except OSError:  # full (EAGAIN) or broken: the writer's sendall waits or fails
                sent = 0
        with self._lock:
            if sent < len(data):
                self._chunks.appendleft(data[sent:] if sent else data)
                self._queued_bytes += len(data) - sent
            if sent < len(data) or self._closed:
                self._owner = _Owner.WRITER
                self._ready.notify()
                return False
            if self._chunks:
                return True
            self._owner = None
            return False

    def close(self, final: bytes | None = None, *, discard: bool = False) -> bool:
        """Accept nothing more; optionally drop what is queued and end with `final`.

        Returns False if the outbox was already closed (then nothing changes).
        """
        with self._lock:
            if self._closed:
                return False
            self._closed = True
            if discard:
                self._chunks.clear()
                self._queued_bytes = 0
            if final is not None:
                self._chunks.append(final)
                self._queued_bytes += len(final)
            self._drained.notify_all()
            if self._owner is None:
                self._owner = _Owner.WRITER  # the flusher, if it owns us, hands over when done
            self._ready.notify()
            return True

    @property
    def closed(self) -> bool:
        with self._lock:
            return self._closed

    def take(self) -> bytes | None:
        """Wait for data and return all that is queued as one batch; None once closed and empty.

        The wake-up path is put()/close(): there is no timeout because close() always comes,
        from the connection that owns this outbox.
        """
        with self._ready:
            if self._owner is _Owner.WRITER and not self._chunks and not self._closed:
                self._owner = None  # the batch before is written: idle again
            while self._owner is not _Owner.WRITER:
                if self._owner is None and self._closed:
                    self._owner = _Owner.WRITER
                    break
                self._ready.wait()
            if not self._chunks:
                return None
            batch = self._chunks[0] if len(self._chunks) == 1 else b"".join(self._chunks)
            self._chunks.clear()
            self._queued_bytes = 0
            if self._room_waiters:
                self._drained.notify_all()
            return batch
