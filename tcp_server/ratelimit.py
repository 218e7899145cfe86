"""Token buckets: `rate_per_s` on average, bursts of up to `burst`; one for a connection's
requests, one per key (an address group) for what is limited per address."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Final

MAX_KEYS: Final = 10_000  # keys remembered; the least recently seen is forgotten first


class TokenBucket:
    def __init__(
        self, rate_per_s: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._rate = rate_per_s
        self._burst = float(burst)
        self._clock = clock
        self._tokens = float(burst)
        self._updated = clock()

    @property
    def unlimited(self) -> bool:
        return self._rate <= 0

    def take(self, cost: int = 1) -> bool:
        """Spend `cost` tokens (at most a whole burst: any request can be made) if there are
        as many; False means the request is over the limit."""
        if self.unlimited:
            return True
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._updated) * self._rate)
        self._updated = now
        spent = min(float(cost), max(self._burst, 1.0))  # a burst of 0: nothing goes
        if self._tokens >= spent:
            self._tokens -= spent
            return True
        return False


class BucketsByKey:
    """A token bucket per key, for any thread: `burst` at once, then `rate_per_s` a second
    (0: no limit). Memory stays bounded: past MAX_KEYS keys the least recently seen is
    forgotten (it starts afresh, most likely full again by then)."""

    def __init__(
        self, rate_per_s: float, burst: int = 1, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._rate = rate_per_s
        self._burst = float(burst)
        self._clock = clock
        self._lock = threading.Lock()
        # key -> (tokens, time of last refill, refusals since the last take); guarded by _lock
        self._keys: OrderedDict[str, tuple[float, float, int]] = OrderedDict()

    def take(self, key: str) -> int | None:
        """Spend one of `key`'s tokens: the number of refusals since its last take, or None
        when it has none left (refused, and counted)."""
        if self._rate <= 0:
            return 0
        now = self._clock()
        with self._lock:
            tokens, last, refused = self._keys.pop(key, (self._burst, now, 0))
            tokens = min(self._burst, tokens + (now - last) * self._rate)
            if tokens >= 1.0:
                self._keys[key] = (tokens - 1.0, now, 0)
                answer: int | None = refused
            else:
                self._keys[key] = (tokens, now, refused + 1)
                answer = None
            if len(self._keys) > MAX_KEYS:
                self._keys.popitem(last=False)
        return answer

    def give_back(self, key: str) -> None:
        """Return the token of a take() whose request then came to nothing (refused for
        another reason): only what had an effect is counted."""
        with self._lock:
            entry = self._keys.get(key)
            if entry is not None:
                tokens, last, refused = entry
                self._keys[key] = (min(self._burst, tokens + 1.0), last, refused)


class PerMinuteBuckets(BucketsByKey):
    """A per-address budget: `per_minute` a minute per key (0: no limit) after a first burst
    of that or `at_once`, whichever is more (everyone one address may hold, at once)."""

    def __init__(
        self, per_minute: int, at_once: int = 0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.per_minute = per_minute
        self.burst = max(per_minute, at_once)
        super().__init__(per_minute / 60.0, self.burst, clock)

    def describe(self) -> str:
        """How a refusal states the budget's numbers."""
        return f"at most {self.per_minute} a minute after the first {self.burst}"
