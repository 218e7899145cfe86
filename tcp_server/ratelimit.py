"""A token bucket: `rate_per_s` requests a second on average, bursts of up to `burst`."""

from __future__ import annotations

import time
from collections.abc import Callable


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
