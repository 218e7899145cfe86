"""Bounded logging under floods: per address, a few lines at once and then about one a second
(connections), or one a minute (wrong gateway secrets); what is held back is counted and the
next line says how many. A flood from one address cannot fill the disk, and every other
address is still logged in full."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Final

MAX_KEYS: Final = 10_000  # addresses remembered; the least recently seen is forgotten first


class LogRate:
    """A token bucket per key: `burst` lines at once, then one per `every` seconds."""

    def __init__(
        self, every: float, burst: int = 1, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._every = every
        self._burst = burst
        self._clock = clock
        self._lock = threading.Lock()
        # key -> (tokens, time of last refill, lines held back); guarded by _lock
        self._keys: OrderedDict[str, tuple[float, float, int]] = OrderedDict()

    def allow(self, key: str) -> int | None:
        """None: do not log this one. Otherwise log it, with the number held back before it."""
        now = self._clock()
        with self._lock:
            tokens, last, held = self._keys.pop(key, (float(self._burst), now, 0))
            tokens = min(float(self._burst), tokens + (now - last) / self._every)
            if tokens >= 1.0:
                self._keys[key] = (tokens - 1.0, now, 0)
                answer: int | None = held
            else:
                self._keys[key] = (tokens, now, held + 1)
                answer = None
            if len(self._keys) > MAX_KEYS:
                self._keys.popitem(last=False)
        return answer


def held_back(count: int, what: str) -> str:
    """The suffix of a line after `count` were held back (empty if none)."""
    return f" ({count} more {what} not logged)" if count else ""
