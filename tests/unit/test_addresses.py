from __future__ import annotations

import pytest

from tcp_server.addresses import address_group, canonical_ip, describe_group


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
    ("2002:c000:201::1", "192.0.2.1"),  # 6to4: a /48 for one IPv4 address counts as it
    ("2002:c000:201:ffff::9", "192.0.2.1"),
    ("not an address", "not an address"),
    ("2001:db8::zz", "2001:db8::zz"),
    ("", ""),
])
def test_an_ipv6_address_counts_as_its_64_and_ipv4_as_itself(ip: str, group: str) -> None:
    assert address_group(ip) == group


def test_errors_name_an_address_or_a_network() -> None:
    assert describe_group("192.0.2.1") == "your address 192.0.2.1"
    assert describe_group("2001:db8:1:2::99") == "your network 2001:db8:1:2::/64"


@pytest.mark.parametrize(("reported", "canonical"), [
    ("192.0.2.1", "192.0.2.1"),
    ("2001:DB8:0:0::7", "2001:db8::7"),
    ("fe80::1%eth0", "fe80::1"),  # the zone is the reporter's interface: not kept
    ("fe80::1%\x1b[2J" + "x" * 10_000, "fe80::1"),  # nor shown to anyone, whatever it holds
])
def test_a_reported_address_is_kept_in_one_form_without_its_zone(
    reported: str, canonical: str
) -> None:
    assert canonical_ip(reported) == canonical


@pytest.mark.parametrize("reported", ["evil", "192.0.2.1%eth0", "", "%eth0", "1.2.3.4 "])
def test_a_reported_address_that_is_not_one_is_refused(reported: str) -> None:
    with pytest.raises(ValueError, match="does not appear to be an IPv4 or IPv6 address"):
        canonical_ip(reported)
