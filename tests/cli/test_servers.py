"""The --host list: parsing, and which node a (re)connection goes to."""

from __future__ import annotations

import pytest

from cli_client.__main__ import build_parser
from cli_client.servers import RoundRobin, parse_hosts


def test_hosts_are_comma_separated_or_repeated_with_default_port() -> None:
    assert parse_hosts(["a:9000,b", "[::1]:9002", "[::1]"], 9999) == [
        ("a", 9000), ("b", 9999), ("::1", 9002), ("::1", 9999)]
    assert parse_hosts(["::1"], 9000) == [("::1", 9000)]  # a bare IPv6 address


@pytest.mark.parametrize("bad", ["a:", "a:0", "a:70000", "a:x", ",", "a,,b", ":9000",
                                 "[::1", "[::1]x"])
def test_bad_hosts_are_refused_with_a_reason(bad: str) -> None:
    with pytest.raises(ValueError, match=r"\S"):
        parse_hosts([bad], 9000)


def test_the_parser_takes_several_hosts() -> None:
    args = build_parser().parse_args(["--host", "a:1,b:2", "--host", "c"])
    assert args.host == ["a:1,b:2", "c"]


def test_reconnections_start_after_the_lost_node_and_go_round() -> None:
    down = {("b", 2)}
    opened: list[tuple[str, int]] = []

    def open_(host: str, port: int) -> str:
        opened.append((host, port))
        if (host, port) in down:
            raise ConnectionRefusedError(f"{host} is down")
        return f"{host}:{port}"

    connect = RoundRobin([("a", 1), ("b", 2), ("c", 3)], open_)
    assert connect() == "a:1"
    assert connect() == "c:3"  # a was lost: b is tried next, and is down
    assert opened == [("a", 1), ("b", 2), ("c", 3)]
    assert connect() == "a:1"  # c was lost: round to a
    down.update({("a", 1), ("c", 3)})
    with pytest.raises(ConnectionRefusedError):
        connect()
