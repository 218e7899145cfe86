"""One thread that writes, without blocking, for every connection whose writer is idle.

Why: a connection's writer thread sleeps while its outbox is empty, and waking it for every
event costs a futex wake-up plus a GIL hand-over, tens of microseconds in CPython. A join
announced to 1,000 idle clients woke 1,000 writers; a message to everyone woke 99. The flusher
instead takes each outbox that went from empty to non-empty, batches what it holds and sends
it with a non-blocking send: one wake-up (of this thread) per burst, not one per recipient.
Only when a socket does not take everything does the connection's own writer thread take over
(with a blocking sendall), so a slow client still never stalls anyone else.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from typing import Protocol

log = logging.getLogger(__name__)


class Flushable(Protocol):
    def flush(self) -> bool:
        """Write what is queued without blocking; True if more arrived meanwhile."""


class Flusher:
    def __init__(self) -> None:
        # _lock guards _due, _stopping and _idle; the flusher waits on _ready (its condition)
        # when idle, and schedule() notifies it only then.
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)
        self._due: deque[Flushable] = deque()
        self._stopping = False
        self._idle = False
        self._thread = threading.Thread(target=self._run, name="flusher")

    def start(self) -> None:
        self._thread.start()

    def schedule(self, outbox: Flushable) -> None:
        """Have outbox.flush() called soon, once (the outbox schedules itself only when idle)."""
        with self._lock:
            self._due.append(outbox)
            if self._idle:
                self._ready.notify()

    def stop(self, timeout: float) -> None:
        """Flush what is due, then end the thread and join it."""
        with self._lock:
            self._stopping = True
            self._ready.notify()
        if self._thread.ident is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.error("flusher did not stop")

    def _run(self) -> None:
        again: list[Flushable] = []
        while True:
            with self._ready:
                self._due.extend(again)
                while not self._due and not self._stopping:
                    self._idle = True
                    self._ready.wait()
                    self._idle = False
                if not self._due:
                    return
                due = list(self._due)
                self._due.clear()
            again = []
            for outbox in due:
                try:
                    if outbox.flush():
                        again.append(outbox)
                except Exception:  # one broken outbox must not stop everyone's output
                    log.exception("flusher: flush failed")
