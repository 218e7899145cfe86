"""The one thread that writes every client socket, and closes it.

Why one thread: a connection's own writer thread would sleep while its outbox is empty, and
waking it for every event costs a futex wake-up plus a GIL hand-over, tens of microseconds in
CPython, and a thread's memory per client. The flusher instead takes each outbox that went from
idle to due (see tcp_server/outbox.py for who writes a socket when), sends everything it holds
in one non-blocking send, and goes on with the next: one wake-up of this thread per burst, not
one per recipient, and all that one recv() of a sender produced leaves in one send per
recipient.

A socket that does not take everything is registered for EVENT_WRITE in ONE selector (epoll)
and left alone until the kernel says it is writable again; only while it has unsent data, so
the selector holds only the slow sockets. The flusher sleeps in that selector; schedule() wakes
it through a socketpair, only when it sleeps. Nothing polls, except sockets that are closing:
their last bytes must be acknowledged before the close (see Outbox.close_socket), and no event
reports an acknowledgement, so those are looked at every LINGER_POLL_S until their deadline.

Backpressure: the outboxes report when one is over its budget although its socket takes data
(the flusher is behind, not the client); wait_caught_up() makes the readers of senders wait
until the flusher has caught up, so the senders slow down instead of a reading client being
dropped.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import selectors
import socket
import threading
import time

from tcp_server.outbox import Flushed, Outbox

log = logging.getLogger(__name__)

LINGER_POLL_S = 0.005
CAUGHT_UP_CHECK_S = 1.0  # a waiting reader looks again this often (its connection may close)


class Flusher:
    def __init__(self) -> None:
        # _lock guards _due, _sleeping, _stopping, _stop_deadline and _lagging; _caught_up
        # (its condition) is notified when _lagging drops to 0.
        self._lock = threading.Lock()
        self._caught_up = threading.Condition(self._lock)
        self._due: list[Outbox] = []
        self._sleeping = False
        self._stopping = False
        self._stopped = False
        self._stop_deadline = 0.0
        self._lagging = 0
        # The flusher thread's own: the selector of blocked sockets, the deadlines of closing
        # outboxes, and the sockets lingering until the peer acknowledged their last bytes.
        self._deadlines: list[tuple[float, int, Outbox]] = []
        self._lingering: list[tuple[float, Outbox]] = []
        self._linger_checked = 0.0  # time.monotonic() when _lingering was last looked at
        self._order = itertools.count()
        self._thread = threading.Thread(target=self._run, name="flusher")

    def start(self) -> None:
        """Open the selector and its wake-up socketpair, start the thread (stop() closes)."""
        self._selector = selectors.DefaultSelector()
        self._wake_reader, self._wake_writer = socket.socketpair()
        self._wake_reader.setblocking(False)
        self._wake_writer.setblocking(False)
        self._selector.register(self._wake_reader, selectors.EVENT_READ)
        self._thread.start()

    def schedule(self, outbox: Outbox) -> bool:
        """Have outbox.flush() called soon (an outbox schedules itself when it becomes due).
        False once the flusher has stopped."""
        with self._lock:
            if self._stopped:
                return False
            self._due.append(outbox)
            wake, self._sleeping = self._sleeping, False
        if wake:
            with contextlib.suppress(BlockingIOError):  # full: a wake-up is pending anyway
                self._wake_writer.send(b"\0")
        return True

    def lag(self, change: int) -> None:
        with self._lock:
            self._lagging += change
            if not self._lagging:
                self._caught_up.notify_all()

    @property
    def lagging(self) -> int:
        """Outboxes over their budget on sockets that take data (a hint: no lock)."""
        return self._lagging

    def wait_caught_up(self) -> None:
        """Backpressure: wait (at most CAUGHT_UP_CHECK_S) until no outbox is lagging."""
        with self._lock:
            if self._lagging and not self._stopping:
                self._caught_up.wait(CAUGHT_UP_CHECK_S)

    def stop(self, deadline: float, timeout: float) -> None:
        """Finish what is due, cut off what is not out by `deadline`, end the thread, join it."""
        with self._lock:
            self._stopping = True
            self._stop_deadline = deadline
            self._caught_up.notify_all()
        if self._thread.ident is None:
            return
        with contextlib.suppress(BlockingIOError):
            self._wake_writer.send(b"\0")
        self._thread.join(max(0.0, deadline - time.monotonic()) + timeout)
        if self._thread.is_alive():
            log.error("flusher did not stop")
            return
        self._selector.close()
        self._wake_reader.close()
        self._wake_writer.close()

    # --- the flusher thread -------------------------------------------------------------------

    def _run(self) -> None:
        again: list[Outbox] = []
        try:
            while True:
                with self._lock:
                    due, self._due = self._due, []
                    stopping, stop_deadline = self._stopping, self._stop_deadline
                    idle = not due and not again
                    self._sleeping = idle
                if again:
                    due = again + due
                if stopping and idle and self._done_stopping(stop_deadline):
                    return
                if idle or len(self._selector.get_map()) > 1:  # else only the wake-up socket
                    ready = self._selector.select(self._timeout(idle, stopping, stop_deadline))
                else:
                    ready = []
                if idle:
                    with self._lock:
                        self._sleeping = False
                for key, _ in ready:
                    if key.fileobj is self._wake_reader:
                        self._drain_wake_ups()
                        continue
                    outbox: Outbox = key.data
                    self._selector.unregister(key.fileobj)
                    outbox.writable()
                    due.append(outbox)
                del ready
                again = self._flush_all(due)
                del due  # keep no reference to an outbox while asleep: it must be freeable
                self._check_deadlines()
        except Exception:
            log.exception("flusher failed")
            raise
        finally:
            self._cut_off_everything()

    def _timeout(self, idle: bool, stopping: bool, stop_deadline: float) -> float | None:
        if not idle:
            return 0
        now = time.monotonic()
        limits = []
        if self._lingering:
            limits.append(LINGER_POLL_S)
        if self._deadlines:
            limits.append(self._deadlines[0][0] - now)
        if stopping:
            limits.append(stop_deadline - now)
        return max(0.0, min(limits)) if limits else None

    def _done_stopping(self, stop_deadline: float) -> bool:
        """Stopping: everything is out (nothing blocked, lingering) or the deadline passed."""
        blocked = len(self._selector.get_map()) > 1  # the wake-up socket is always there
        return (not blocked and not self._lingering) or time.monotonic() >= stop_deadline

    def _drain_wake_ups(self) -> None:
        # One read, not a loop until EAGAIN: a wake-up is sent only to a sleeping flusher, so
        # one or two bytes wait here; any sent after this read wake the next select() at once.
        with contextlib.suppress(BlockingIOError):
            self._wake_reader.recv(4_096)

    def _flush_all(self, due: list[Outbox]) -> list[Outbox]:
        """Flush each once; returns those to flush again (more was queued meanwhile)."""
        again: list[Outbox] = []
        for outbox in due:
            try:
                result = outbox.flush()
                if result is Flushed.AGAIN:
                    again.append(outbox)
                elif result is Flushed.BLOCKED:
                    self._block(outbox)
                elif result is Flushed.CLOSE:
                    self._close(outbox)
            except Exception:  # one broken outbox must not stop everyone's output
                log.exception("flusher: flush failed")
        return again

    def _block(self, outbox: Outbox) -> None:
        sock = outbox.sock
        assert sock is not None
        with contextlib.suppress(KeyError):  # already registered (closed while blocked)
            self._selector.register(sock, selectors.EVENT_WRITE, outbox)
        if outbox.closed:
            heapq.heappush(self._deadlines, (outbox.deadline, next(self._order), outbox))

    def _close(self, outbox: Outbox) -> None:
        sock = outbox.sock
        assert sock is not None
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(sock)
        deadline = outbox.deadline
        if not outbox.close_socket(deadline):
            self._lingering.append((deadline, outbox))

    def _check_deadlines(self) -> None:
        now = time.monotonic()
        while self._deadlines and self._deadlines[0][0] <= now:
            outbox = heapq.heappop(self._deadlines)[2]
            if outbox.cut_off() is Flushed.CLOSE:
                self._close(outbox)
            else:
                sock = outbox.sock
                with contextlib.suppress(KeyError, ValueError):
                    self._selector.unregister(sock)  # type: ignore[arg-type]
        # Every LINGER_POLL_S, not at every turn of the loop: a peer acknowledges within its
        # delayed-ACK time (up to 40 ms), and while 10,000 byes go out at a shutdown the
        # loop turns thousands of times with thousands of sockets lingering.
        if self._lingering and now - self._linger_checked >= LINGER_POLL_S:
            self._linger_checked = now
            still = []
            for deadline, outbox in self._lingering:
                if not outbox.close_socket(deadline):
                    still.append((deadline, outbox))
            self._lingering = still

    def _cut_off_everything(self) -> None:
        """The end: nothing more will be written; close what the readers are done with."""
        with self._lock:
            self._stopped = True
            due, self._due = self._due, []
        for key in list(self._selector.get_map().values()):
            if key.fileobj is not self._wake_reader:
                due.append(key.data)
                self._selector.unregister(key.fileobj)
        due.extend(outbox for _, _, outbox in self._deadlines)
        due.extend(outbox for _, outbox in self._lingering)
        self._deadlines.clear()
        self._lingering.clear()
        for outbox in due:
            outbox.cut_off()
            outbox.close_socket(None)
