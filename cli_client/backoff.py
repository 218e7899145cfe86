"""When to try again: capped exponential backoff with jitter, for reconnecting to the core.

Pure: the random source comes in, so the delays are testable and nothing here sleeps.
"""

from __future__ import annotations

import random
from typing import Final

BASE_DELAY_S: Final = 0.5
MAX_DELAY_S: Final = 15.0
# 2**_MAX_DOUBLINGS * BASE_DELAY_S is far past any sensible cap; counting on would only grow
# an integer for nothing.
_MAX_DOUBLINGS: Final = 32


class Backoff:
    """The delays before successive attempts, "equal jitter" style.

    Attempt n (0 first) waits a random time between half and all of
    min(max_delay_s, base_delay_s * 2**n): the delay grows exponentially up to a cap, and the
    random half keeps many clients that lost the same core from coming back in lockstep (a
    thundering herd), while the fixed half keeps any one client from retrying at once
    (AWS Architecture Blog, "Exponential Backoff And Jitter", 2015). reset() after a success
    starts again from the base.
    """

    def __init__(
        self,
        base_delay_s: float = BASE_DELAY_S,
        max_delay_s: float = MAX_DELAY_S,
        rng: random.Random | None = None,
    ) -> None:
        if not 0 < base_delay_s <= max_delay_s:
            raise ValueError("need 0 < base_delay_s <= max_delay_s")
        self.base_delay_s = base_delay_s
        self.max_delay_s = max_delay_s
        self._rng = rng if rng is not None else random.Random()
        self._attempts = 0

    @property
    def attempts(self) -> int:
        """Delays handed out since the last reset()."""
        return self._attempts

    def ceiling(self, attempt: int) -> float:
        """The longest delay before attempt number `attempt` (0 first)."""
        doublings = min(attempt, _MAX_DOUBLINGS)
        return min(self.max_delay_s, self.base_delay_s * float(2**doublings))

    def next_delay(self) -> float:
        """The delay before the next attempt, in seconds."""
        ceiling = self.ceiling(self._attempts)
        self._attempts += 1
        return ceiling / 2 + self._rng.uniform(0, ceiling / 2)

    def reset(self) -> None:
        """The last attempt succeeded: the next failure starts again from the base delay."""
        self._attempts = 0
