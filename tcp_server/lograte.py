"""Bounded logging under floods: per address, a few lines at once and then about one a second
(connections), or one a minute (wrong gateway secrets); what is held back is counted and the
next line says how many. A flood from one address cannot fill the disk, and every other
address is still logged in full."""

from __future__ import annotations

import time
from collections.abc import Callable

from tcp_server.ratelimit import BucketsByKey


class LogRate:
    """A token bucket per key: `burst` lines at once, then one per `every` seconds."""

    def __init__(
        self, every: float, burst: int = 1, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._buckets = BucketsByKey(1.0 / every, burst, clock)

    def allow(self, key: str) -> int | None:
        """None: do not log this one. Otherwise log it, with the number held back before it."""
        return self._buckets.take(key)


def held_back(count: int, what: str) -> str:
    """The suffix of a line after `count` were held back (empty if none)."""
    return f" ({count} more {what} not logged)" if count else ""
