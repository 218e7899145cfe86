"""The open websockets of one gateway: their numbers, the limit, and stopping them all."""

from __future__ import annotations

import contextlib
import itertools
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass

from flask import Flask

from web_gateway.config import GatewayConfig
from web_gateway.relay import CLOSE_GOING_AWAY, CLOSE_TRY_LATER, Close, Ending, Relay

log = logging.getLogger(__name__)


class Refused(Exception):
    """A websocket the gateway does not take: full or shutting down."""

    def __init__(self, ending: Ending) -> None:
        super().__init__(ending.error)
        self.ending = ending


class Slot:
    """One admitted websocket; holds its relay once there is one."""

    def __init__(self, registry: RelayRegistry, number: int) -> None:
        self.number = number
        self._registry = registry

    def attach(self, relay: Relay) -> None:
        """Make the relay reachable by stop_all(); stop it at once if that already ran."""
        self._registry._attach(self.number, relay)


class RelayRegistry:
    """Every open websocket of one app. Any thread, and a signal handler, may call it."""

    def __init__(self, max_websockets: int, stop_grace_s: float) -> None:
        self._max = max_websockets
        self._stop_grace_s = stop_grace_s
        self._numbers = itertools.count(1)
        # _lock guards _slots, _stopping and _stopper; _idle (on the same lock) is notified
        # whenever a slot is released, for wait_idle().
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._slots: dict[int, Relay | None] = {}
        self._stopping = False
        self._stopper: threading.Thread | None = None

    def count(self) -> int:
        with self._lock:
            return len(self._slots)

    @contextlib.contextmanager
    def slot(self) -> Iterator[Slot]:
        """A place for one websocket for the duration of the block; raises Refused."""
        with self._lock:
            if self._stopping:
                raise Refused(Ending(
                    Close(CLOSE_GOING_AWAY, "the web gateway is shutting down"),
                    "the web gateway is shutting down",
                ))
            if len(self._slots) >= self._max:
                raise Refused(Ending(
                    Close(CLOSE_TRY_LATER, "too many browsers connected"),
                    f"the web gateway is full ({self._max} connections); try again later",
                ))
            number = next(self._numbers)
            self._slots[number] = None
        try:
            yield Slot(self, number)
        finally:
            with self._lock:
                del self._slots[number]
                self._idle.notify_all()

    def _attach(self, number: int, relay: Relay) -> None:
        with self._lock:
            self._slots[number] = relay
            stopping = self._stopping
        if stopping:
            relay.stop()

    def stop_all(self) -> None:
        """Refuse new websockets and end every open one (their browsers are told). Idempotent.

        A browser that does not read cannot be told: the websockets still open after the
        grace period are cut by a `gateway-stop` thread, so that stopping always ends.
        Safe from a signal handler: nothing here blocks on I/O.
        """
        with self._lock:
            if self._stopping:
                return
            self._stopping = True
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
        """After stop_all(): wait for every websocket to end and join the stopper thread."""
        idle = self.wait_idle(timeout)
        with self._lock:
            stopper = self._stopper
        if stopper is not None:
            stopper.join(max(0.0, timeout))
        return idle


EXTENSION = "chat_gateway"


@dataclass(frozen=True, slots=True)
class Gateway:
    """What one app instance of the gateway holds: its settings and its open websockets."""

    config: GatewayConfig
    relays: RelayRegistry


def gateway_of(app: Flask) -> Gateway:
    """The gateway state that create_app() stored in `app`."""
    gateway = app.extensions[EXTENSION]
    assert isinstance(gateway, Gateway)
    return gateway
