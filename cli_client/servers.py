"""Several chat servers (core nodes of one room) to connect to: the --host list.

The first connection goes to the first address that answers. Every later call is a
reconnection after a lost connection, so it starts with the address after the one that was
lost (its node may be down) and goes round the list once; the session is then resumed there.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")


def parse_hosts(values: Sequence[str], default_port: int) -> list[tuple[str, int]]:
    """`--host` values, each one address or several separated by commas: HOST, HOST:PORT or
    [IPv6]:PORT. Raises ValueError with a message for the user."""
    found: list[tuple[str, int]] = []
    for value in values:
        for item in value.split(","):
            item = item.strip()
            if not item:
                raise ValueError(f"empty address in {value!r}")
            host, port = item, default_port
            if item.startswith("["):
                end = item.find("]")
                if end < 0:
                    raise ValueError(f"unclosed [ in {item!r}")
                host, rest = item[1:end], item[end + 1:]
                if rest:
                    if not rest.startswith(":"):
                        raise ValueError(f"expected :PORT after ] in {item!r}")
                    port = _port(rest[1:], item)
            elif item.count(":") == 1:
                host, text = item.split(":")
                port = _port(text, item)
            if not host:
                raise ValueError(f"no host in {item!r}")
            found.append((host, port))
    return found


def _port(text: str, item: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65_536:
        raise ValueError(f"bad port in {item!r}")
    return int(text)


class RoundRobin(Generic[T]):
    """`connect()` for the client: opens a connection to one of the addresses (see above)."""

    def __init__(self, addresses: Sequence[tuple[str, int]],
                 open_: Callable[[str, int], T]) -> None:
        if not addresses:
            raise ValueError("no address")
        self._addresses = list(addresses)
        self._open = open_
        self._lock = threading.Lock()
        self._next = 0  # guarded by _lock: where the next call starts
        self.current = self._addresses[0]

    def __call__(self) -> T:
        with self._lock:
            start = self._next
        error: OSError | None = None
        for step in range(len(self._addresses)):
            index = (start + step) % len(self._addresses)
            host, port = self._addresses[index]
            try:
                connection = self._open(host, port)
            except OSError as failure:
                error = failure
                continue
            with self._lock:
                # Used until lost: the next call is a reconnection, which starts after it.
                self._next = (index + 1) % len(self._addresses)
                self.current = (host, port)
            return connection
        assert error is not None
        raise error
