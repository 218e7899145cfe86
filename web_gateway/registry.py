"""The open websockets of one gateway: their numbers, the limits, their pings, stopping them."""

from __future__ import annotations

import contextlib
import itertools
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from flask import Flask

from tcp_server.addresses import address_group
from tcp_server.lograte import LogRate
from tcp_server.ratelimit import PerMinuteBuckets
from web_gateway.budget import RefusalThrottle
from web_gateway.config import GatewayConfig
from web_gateway.cores import CorePool
from web_gateway.relay import CLOSE_GOING_AWAY, CLOSE_POLICY, CLOSE_TRY_LATER, Ending, Relay

log = logging.getLogger(__name__)


class Refused(Exception):
    """A websocket the gateway does not take: full, too many from its address, or stopping."""

    def __init__(self, ending: Ending) -> None:
        super().__init__(ending.error)
        self.ending = ending


STOPPING = Ending(CLOSE_GOING_AWAY, "the web gateway is shutting down",
                  "the web gateway is shutting down")


class Slot:
    """One admitted websocket; holds its relay once there is one."""

    def __init__(self, registry: RelayRegistry, number: int, group: str) -> None:
        self.number = number
        self._registry = registry
        self._group = group
        self._charged = True  # its open counts against its address's --max-opens-per-ip

    def give_back(self) -> None:
        """Its open does not count: it came to nothing the browser caused (the core could
        not be reached), or it signed in. Like the core's --max-connects-per-ip, the limit
        is on opens that come to nothing, so that browsers behind one address that all
        signed in can all come back at once after a restart. Idempotent; any thread."""
        if self._charged:
            self._charged = False
            self._registry._opens.give_back(self._group)

    def attach(self, relay: Relay) -> None:
        """Make the relay reachable by stop_all() and the pinger; stop it at once if
        stop_all() already ran."""
        self._registry._attach(self.number, relay)


class RelayRegistry:
    """Every open websocket of one app. Any thread may call it.

    One `gateway-pinger` thread (started with the first websocket, ended by stop_all()) pings
    every browser each `ping_interval` and drops those silent for `pong_timeout`: one thread
    for all websockets instead of a timer each.
    """

    def __init__(
        self,
        max_websockets: int,
        stop_grace_s: float,
        *,
        max_per_ip: int = 0,
        opens_per_minute: int = 0,
        ping_interval: float = 0.0,
        pong_timeout: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`max_per_ip` 0: no limit on the websockets open at once per address;
        `opens_per_minute` 0: none on how fast an address opens them; `ping_interval` 0: no
        pings."""
        self._max = max_websockets
        self._max_per_ip = max_per_ip
        # Each websocket is a connection to the core and a sign-in there: an address that
        # opens and closes them in a loop costs the core far more than the gateway. A first
        # burst as large as the address may hold at once (a NAT address's browsers all
        # reconnecting after a restart), then `opens_per_minute`.
        self._opens = PerMinuteBuckets(opens_per_minute, max_per_ip, clock)
        self._stop_grace_s = stop_grace_s
        self._ping_interval = ping_interval
        self._pong_timeout = pong_timeout
        self._numbers = itertools.count(1)
        # _lock guards everything below; _idle (on the same lock) is notified whenever a slot
        # is released, for wait_idle(), and when stopping, for the pinger.
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._slots: dict[int, Relay | None] = {}
        self._per_ip: Counter[str] = Counter()
        self._ended = 0  # websockets that have ended so far
        self._stopping = False
        self._stopper: threading.Thread | None = None
        self._pinger: threading.Thread | None = None

    def count(self) -> int:
        with self._lock:
            return len(self._slots)

    def ended_count(self) -> int:
        """Websockets that have ended since the start (for the worker's memory upkeep)."""
        with self._lock:
            return self._ended

    @contextlib.contextmanager
    def slot(self, ip: str = "") -> Iterator[Slot]:
        """A place for one websocket from `ip` for the duration of the block; raises Refused.
        The limit per address counts an IPv6 address as its /64 (tcp_server/addresses.py)."""
        ip = address_group(ip)
        with self._lock:
            if self._stopping:
                raise Refused(STOPPING)
            if len(self._slots) >= self._max:
                raise Refused(Ending(
                    CLOSE_TRY_LATER, "too many browsers connected",
                    f"the web gateway is full ({self._max} connections); try again later",
                ))
            if self._max_per_ip and self._per_ip[ip] >= self._max_per_ip:
                raise Refused(Ending(
                    CLOSE_POLICY, "too many connections from your address",
                    f"too many connections from your address ({self._max_per_ip} at most); "
                    "close another tab or try again later",
                ))
            if self._opens.take(ip) is None:
                raise Refused(Ending(
                    CLOSE_TRY_LATER, "too many new connections from your address",
                    f"too many new connections from your address ({self._opens.describe()}); "
                    "try again in a few seconds",
                ))
            number = next(self._numbers)
            self._slots[number] = None
            self._per_ip[ip] += 1
            if self._pinger is None and self._ping_interval > 0:
                self._pinger = threading.Thread(target=self._ping, name="gateway-pinger")
                self._pinger.start()
        try:
            yield Slot(self, number, ip)
        finally:
            with self._lock:
                del self._slots[number]
                self._ended += 1
                self._per_ip[ip] -= 1
                if not self._per_ip[ip]:
                    del self._per_ip[ip]
                self._idle.notify_all()

    def _attach(self, number: int, relay: Relay) -> None:
        with self._lock:
            self._slots[number] = relay
            stopping = self._stopping
        if stopping:
            relay.stop()

    def _ping(self) -> None:
        while True:
            with self._idle:
                if self._idle.wait_for(lambda: self._stopping, self._ping_interval):
                    return
                relays = [relay for relay in self._slots.values() if relay is not None]
            now = time.monotonic()
            for relay in relays:  # outside the lock: a drop takes the relay's own
                relay.keep_alive(now, self._pong_timeout)

    def stop_all(self) -> None:
        """Refuse new websockets and end every open one (their browsers are told). Idempotent.

        A browser that does not read cannot be told: the websockets still open after the
        grace period are cut by a `gateway-stop` thread, so that stopping always ends.
        Nothing here blocks on I/O.
        """
        with self._lock:
            if self._stopping:
                return
            self._stopping = True
            self._idle.notify_all()  # the pinger ends
            relays = [relay for relay in self._slots.values() if relay is not None]
            self._stopper = threading.Thread(target=self._cut_stragglers, name="gateway-stop")
        log.info("stopping %d websockets", len(relays))
        for relay in relays:
            relay.stop()
        self._stopper.start()

    def _cut_stragglers(self) -> None:
        if self.wait_idle(self._stop_grace_s):
            return
        with self._lock:
            relays = [relay for relay in self._slots.values() if relay is not None]
        log.warning("%d websockets did not close within %g s; cutting them",
                    len(relays), self._stop_grace_s)
        for relay in relays:
            relay.abort("the web gateway is shutting down")

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no websocket is open; False if some still are after `timeout`."""
        with self._idle:
            return self._idle.wait_for(lambda: not self._slots, timeout)

    def wait_stopped(self, timeout: float) -> bool:
        """After stop_all(): wait for every websocket to end and join the registry's threads."""
        idle = self.wait_idle(timeout)
        with self._lock:
            threads = [thread for thread in (self._stopper, self._pinger) if thread is not None]
        for thread in threads:
            thread.join(max(0.0, timeout))
        return idle


EXTENSION = "chat_gateway"


@dataclass(frozen=True, slots=True)
class Gateway:
    """What one app instance of the gateway holds: its settings, its open websockets, the
    core nodes it relays to, how many refusals each address may cost, and how often it
    logs them."""

    config: GatewayConfig
    relays: RelayRegistry
    cores: CorePool
    refusals: RefusalThrottle
    # Refusals per browser address: at most one line a minute, with the count held back.
    refusal_log: LogRate = field(default_factory=lambda: LogRate(every=60.0))


def gateway_of(app: Flask) -> Gateway:
    """The gateway state that create_app() stored in `app`."""
    gateway = app.extensions[EXTENSION]
    assert isinstance(gateway, Gateway)
    return gateway
