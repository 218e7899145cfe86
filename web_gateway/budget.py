"""What the gateway's refusals may cost it: per websocket, and per browser address.

An error object is far bigger than what provokes it: a 6-byte empty frame earns an 80-byte
`bad_request` (13 times as much), and a 12-byte `{"type":"x"}` relayed to the core earns its
`unknown_type`. Unbounded, a hostile page makes the gateway (and the core) write 13 bytes for
each one it sends, and a flood of refused handshakes costs a full HTTP answer each. So:

- `ErrorBudget`, one per websocket: the error objects it has earned, from the gateway or the
  core. Past the budget the websocket is closed (1008), so a flood of bad frames earns a few
  errors and a close, and then nothing.
- `RefusalThrottle`, one per gateway: the gateway's own refusals of websockets per browser
  address (origin, address, limits, configuration). Past the budget, that address's next
  websocket attempts are answered with a bare 429 before any other work, and counted (not
  logged) until the budget has room again.

Both are token buckets (`budget` at once, then `budget` more each `window_s` seconds, evenly):
a burst as large as the budget is fine, a steady stream above budget/window is not.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Final

from tcp_server.addresses import address_group
from tcp_server.ratelimit import MAX_KEYS, BucketsByKey, TokenBucket

# Per websocket: a person mistyping a name or messaging someone who just left earns a few
# errors a minute; a page earns none. Ten within ten seconds is far above that and holds a
# flood to about 1 KB of errors.
MAX_ERRORS: Final = 10
ERROR_WINDOW_S: Final = 10.0
# Per address: refusals are rare for browsers (a page reconnects with a backoff of a second
# or more), but a NAT address can hold a classroom that all reconnects at once when the
# gateway is full or restarting: twenty at once, then two a second.
MAX_REFUSALS: Final = 20
REFUSAL_WINDOW_S: Final = 10.0


def _bucket_rate(budget: int, window_s: float) -> float:
    """Tokens a second for `budget` per `window_s`; 0 (no limit) when either is 0."""
    return budget / window_s if budget > 0 and window_s > 0 else 0.0


class ErrorBudget:
    """The error objects one websocket may earn: `budget` at once, `budget` per `window_s`.

    Both of the relay's readers spend from it (the browser's reader for the gateway's own
    refusals, the core's reader for the core's errors), so a lock guards the bucket.
    `budget` 0: no limit.
    """

    __slots__ = ("_bucket", "_lock")

    def __init__(self, budget: int, window_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._bucket = TokenBucket(_bucket_rate(budget, window_s), budget, clock)
        self._lock = threading.Lock()

    def spend(self, errors: int = 1) -> int:
        """Count `errors` more, in order: how many of them are within the budget (fewer
        than `errors`: the rest are over it, close the websocket)."""
        with self._lock:
            for within in range(errors):
                if not self._bucket.take():
                    return within
            return errors


class RefusalThrottle:
    """The gateway's refusals of websockets per browser address: `budget` at once, then
    `budget` per `window_s`. Any thread may call it; `budget` 0: no limit.

    refused() counts a refusal; once an address is over its budget, throttled() says so for
    each of its next websocket attempts (which count as refusals themselves), until the
    budget has room for one again: a flood stays throttled, a single later attempt does not.
    """

    def __init__(self, budget: int, window_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        rate = _bucket_rate(budget, window_s)
        self._tokens = BucketsByKey(rate, burst=max(1, budget), clock=clock)  # one a refusal
        # _lock guards _over: the addresses that ran out (the least recently seen is
        # forgotten first, as BucketsByKey forgets its keys).
        self._lock = threading.Lock()
        self._over: OrderedDict[str, None] = OrderedDict()

    def refused(self, ip: str) -> bool:
        """Count a refusal of `ip` (its group: an IPv6 address counts as its /64); False: it
        is over the budget (answer it cheaply)."""
        ip = address_group(ip)
        if self._tokens.take(ip) is not None:
            return True
        with self._lock:
            self._over[ip] = None
            self._over.move_to_end(ip)
            if len(self._over) > MAX_KEYS:
                self._over.popitem(last=False)
        return False

    def throttled(self, ip: str) -> bool:
        """A websocket attempt from `ip`: True if it is over its budget (refuse it at once,
        it counts as a refusal); False lets it through (it is then judged as usual)."""
        ip = address_group(ip)
        with self._lock:
            if ip not in self._over:
                return False
        if self._tokens.take(ip) is None:
            return True
        with self._lock:
            self._over.pop(ip, None)
        return False
