"""The core nodes a gateway relays to: which one a new websocket goes to.

With one node (the default) every websocket goes there. With several (`--core A,B,...`, the
nodes of one room, issue 12) new websockets go to each node in turn, and a node that cannot be
reached (refused, timed out) is skipped for the next one: its browsers, whose websockets the
gateway closed when their core connections ended, reconnect and resume their sessions on
another node by themselves (static/js/connection.js).
"""

from __future__ import annotations

import itertools
import logging
import socket
import threading
import time
from typing import Final

from tcp_server.lograte import LogRate, held_back
from tcp_server.protocol import format_address

log = logging.getLogger(__name__)

# A node that could not be reached is tried last for this long, so that a node that is down
# (a connect timeout takes --connect-timeout) does not delay every other new websocket.
RETRY_DOWN_AFTER_S: Final = 5.0


class CorePool:
    """Connects new websockets to the core nodes, round robin, skipping unreachable ones."""

    def __init__(self, addresses: tuple[tuple[str, int], ...], connect_timeout: float) -> None:
        if not addresses:
            raise ValueError("at least one core address is needed")
        self.addresses = addresses
        self._connect_timeout = connect_timeout
        # _lock guards _turn, the position of the next node to try first, and _down_until,
        # per node the time until which it is tried last.
        self._lock = threading.Lock()
        self._turn = itertools.cycle(range(len(addresses)))
        self._down_until = [0.0] * len(addresses)
        # A node that is down is said once a minute, not once per browser that tries it.
        self._down_log = LogRate(every=60.0)

    def connect(self, browser: str) -> socket.socket | None:
        """A connection to the next reachable node, for the browser named `browser` (for the
        log); None when no node can be reached."""
        count = len(self.addresses)
        with self._lock:
            first = next(self._turn)
            now = time.monotonic()
            order = sorted(((first + step) % count for step in range(count)),
                           key=lambda index: self._down_until[index] > now)  # stable: in turn
        for index in order:
            address = self.addresses[index]
            try:
                core = socket.create_connection(address, timeout=self._connect_timeout)
            except OSError as error:
                with self._lock:
                    self._down_until[index] = time.monotonic() + RETRY_DOWN_AFTER_S
                node = format_address(*address)
                if (held := self._down_log.allow(node)) is not None:
                    log.error("cannot reach the core at %s (for websocket from %s): %s%s",
                              node, browser, error, held_back(held, "failures"))
                continue
            with self._lock:
                self._down_until[index] = 0.0
            core.settimeout(None)  # the relay's reader blocks; its wake-up is shutdown()
            core.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return core
        return None
