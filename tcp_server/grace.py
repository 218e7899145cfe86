"""Grace periods: one thread that ends away sessions when their time is up.

One thread and a heap for every away session, not a timer thread each: a core restart can
leave thousands of sessions away at once.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


class Deadlines(Generic[T]):
    """Calls `expire(item)` once `item`'s deadline (time.monotonic()) has passed.

    _lock guards the heap and _stopping; the thread waits on _changed (its condition), which
    schedule() notifies when a new deadline is the earliest.
    """

    def __init__(self, expire: Callable[[T], None], name: str = "grace") -> None:
        self._expire = expire
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._heap: list[tuple[float, int, T]] = []
        self._order = itertools.count()  # ties: first scheduled, first expired
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=name)

    def start(self) -> None:
        self._thread.start()

    def schedule(self, item: T, deadline: float) -> None:
        with self._lock:
            heapq.heappush(self._heap, (deadline, next(self._order), item))
            if self._heap[0][2] is item:
                self._changed.notify()

    def stop(self, timeout: float = 1.0) -> None:
        """End the thread; deadlines not yet due are dropped (the store keeps the sessions)."""
        with self._lock:
            self._stopping = True
            self._changed.notify()
        if self._thread.ident is not None:
            self._thread.join(timeout)

    def __len__(self) -> int:
        with self._lock:
            return len(self._heap)

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._stopping:
                    now = time.monotonic()
                    if self._heap and self._heap[0][0] <= now:
                        break
                    self._changed.wait(self._heap[0][0] - now if self._heap else None)
                if self._stopping:
                    return
                _, _, item = heapq.heappop(self._heap)
            try:
                self._expire(item)
            except Exception:  # one failure must not end every other grace period
                log.exception("ending a grace period failed")
