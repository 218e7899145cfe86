"""Which accepted connections the core takes on: a budget per address for connections that
come to nothing (connect and close, idle until the hello deadline, a refused hello), whose
churn costs the core ~0.5 ms each (bench/README.md, "Sign-ins, resumes and addresses")."""

from __future__ import annotations

import threading

from tcp_server.addresses import address_group, describe_group
from tcp_server.protocol import ErrorCode, ProtocolError
from tcp_server.ratelimit import PerMinuteBuckets


class Admission:
    """`connects_per_minute` per address group (0: no limit), after a first burst of that or
    `max_per_address`, whichever is more: everyone one address may hold can connect at once.
    Any thread may call it.

    A connection is charged when it is accepted (admit) and gives its charge back when it
    registers, or when a gateway proves it its own (a proxy request with the right secret):
    that address group is then never charged, as every browser comes through it.
    """

    def __init__(self, connects_per_minute: int, max_per_address: int = 0) -> None:
        self._connects = PerMinuteBuckets(connects_per_minute, max_per_address)
        # The address groups of gateways: a handful at most (only the secret's holders add
        # any), guarded by _lock.
        self._lock = threading.Lock()
        self._gateways: set[str] = set()

    def admit(self, ip: str) -> str | None:
        """A connection accepted from `ip`, before anything is spent on it: None to refuse
        it at once (its address has opened too many connections that came to nothing);
        otherwise the group charged for it ("" for none), for its Session.charged."""
        if self._connects.per_minute <= 0:
            return ""
        group = address_group(ip)
        with self._lock:
            if group in self._gateways:
                return ""
        return group if self._connects.take(group) is not None else None

    def refusal(self, ip: str) -> ProtocolError:
        """What a connection refused by admit() is told before it is closed."""
        return ProtocolError(
            ErrorCode.RATE_LIMITED,
            f"slow down: too many connections from {describe_group(ip)} that did not sign in "
            f"({self._connects.describe()}); try again in a few seconds",
        )

    def release(self, charged: str) -> None:
        """Give back what admit() charged: the connection registered, was proven a
        gateway's, or was refused for another reason."""
        if charged:
            self._connects.give_back(charged)

    def gateway_at(self, ip: str) -> None:
        """A gateway proved itself from `ip`: its address group is never charged again."""
        with self._lock:
            self._gateways.add(address_group(ip))
