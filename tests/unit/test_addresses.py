from __future__ import annotations

import pytest

from tcp_server.addresses import address_group, describe_group


@pytest.mark.parametrize(("ip", "group"), [
    ("192.0.2.1", "192.0.2.1"),
    ("127.0.0.2", "127.0.0.2"),
    ("2001:db8:1:2::1", "2001:db8:1:2::/64"),
    ("2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2::/64"),
    ("2001:DB8:1:2:0:0:0:7", "2001:db8:1:2::/64"),  # any spelling of the same network
    ("2001:db8:1:3::1", "2001:db8:1:3::/64"),
    ("::1", "::/64"),
    ("fe80::1%eth0", "fe80::/64"),  # a zone does not make another group
    ("::ffff:192.0.2.1", "192.0.2.1"),  # IPv4 seen by a socket listening on ::
    ("64:ff9b::c000:201", "192.0.2.1"),  # IPv4 through a NAT64 translator
    ("64:ff9b::198.51.100.7", "198.51.100.7"),
    ("64:ff9b:0:0:1::1", "64:ff9b::/64"),  # beside the /96: an IPv6 network like any other
    ("not an address", "not an address"),
    ("2001:db8::zz", "2001:db8::zz"),
    ("", ""),
])
def test_an_ipv6_address_counts_as_its_64_and_ipv4_as_itself(ip: str, group: str) -> None:
    assert address_group(ip) == group


def test_errors_name_an_address_or_a_network() -> None:
    assert describe_group("192.0.2.1") == "your address 192.0.2.1"
    assert describe_group("2001:db8:1:2::99") == "your network 2001:db8:1:2::/64"
