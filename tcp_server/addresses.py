"""Which addresses count as one for per-address limits, budgets and log rates.

An IPv4 address is one client's (or one NAT's). An IPv6 host, though, is usually given a
whole /64 network (often a /56 or a /48) and may use any address in it: counted one address
at a time, a single host could take every place, and every address it tried would get its own
log lines. So an IPv6 address counts as its /64, as UnrealIRCd's default clone mask does. An
IPv4 address written as IPv6 (`::ffff:192.0.2.1`, what a socket listening on `::` reports
for IPv4 clients) is the IPv4 address it stands for, and so is one translated into NAT64's
well-known prefix 64:ff9b::/96 (an IPv6-only server behind a translator sees every IPv4 client
there: as one /64 they would all share one place). A 6to4 address (2002::/16) is the IPv4
address it holds, too: a 6to4 site has a whole /48 for that one IPv4 address, 65,536 networks
of /64 that would otherwise count apart. A link-local address's zone is
not part of it: link-local clients on different interfaces count as one group, as they are one
network.
"""

from __future__ import annotations

import functools
import ipaddress
from typing import Final

IPV6_PREFIX: Final = 64
NAT64: Final = ipaddress.IPv6Network("64:ff9b::/96")


@functools.lru_cache(maxsize=4_096)
def address_group(ip: str) -> str:
    """The key under which `ip` is counted: the IPv4 address itself, or the IPv6 address's /64
    network (`2001:db8:1:2::/64`). A string that is not an IP address is its own group."""
    if ":" not in ip:
        return ip
    try:
        address = ipaddress.IPv6Address(ip.split("%", 1)[0])  # without a zone (fe80::1%eth0)
    except ValueError:
        return ip
    if address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    if address in NAT64:
        return str(ipaddress.IPv4Address(int(address) & 0xFFFF_FFFF))
    if address.sixtofour is not None:
        return str(address.sixtofour)
    return str(ipaddress.IPv6Network((address, IPV6_PREFIX), strict=False))


def canonical_ip(text: str) -> str:
    """An address reported by someone else (the gateway's `proxy`, a proxy's X-Forwarded-For)
    in its one written form, without a zone: `fe80::1%eth0` is `fe80::1`. A zone names an
    interface of the host that saw the address, meaningless to everyone else, and any text
    may follow the `%` (control characters, kilobytes of it) that would otherwise be shown in
    every users list. Raises ValueError for anything but an IP address."""
    address = ipaddress.ip_address(text)
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id is not None:
        address = ipaddress.IPv6Address(int(address))
    return str(address)


def describe_group(ip: str) -> str:
    """How an error names the group of `ip`: "your address 192.0.2.1" or "your network
    2001:db8:1:2::/64"."""
    group = address_group(ip)
    return f"your network {group}" if "/" in group else f"your address {group}"
