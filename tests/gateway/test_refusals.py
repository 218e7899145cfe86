"""What the gateway refuses itself, with an error object and without forwarding anything."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from tcp_server.server import ChatServer
from tests.support.core import RawClient
from tests.support.gateway import SECRET, WsClient
from web_gateway.frames import MAX_FRAME_BYTES

Browser = Callable[[], WsClient]


def padded_ping(size: int, request_id: str) -> str:
    """A ping of exactly `size` bytes: unknown fields are ignored by the core."""
    frame = json.dumps({"type": "ping", "id": request_id, "pad": ""})
    frame = frame[:-2] + "x" * (size - len(frame)) + '"}'
    assert len(frame.encode()) == size
    return frame


def assert_nothing_was_forwarded(client: WsClient) -> None:
    # Had the refused frame reached the core, its own reply would come before this pong.
    client.send(type="ping", id="after")
    client.expect("pong", id="after")


@pytest.mark.parametrize(
    "frame",
    ["", "   ", "hello", "[1, 2]", '"ping"', "42", "null", '{"type":"ping"} {"type":"ping"}',
     '{"type": "ping"', "{'type': 'ping'}"],
)
def test_frame_that_is_not_one_json_object_is_refused_bad_request(
    open_browser: Browser, frame: str
) -> None:
    alice = open_browser()
    alice.send_text(frame)
    error = alice.expect("error", code="bad_request")
    assert error["message"]
    assert_nothing_was_forwarded(alice)


def test_binary_frame_is_refused_bad_request(open_browser: Browser) -> None:
    alice = open_browser()
    alice.ws.send_binary(b'{"type":"ping"}')
    alice.expect("error", code="bad_request")
    assert_nothing_was_forwarded(alice)


def test_frame_of_the_longest_line_is_relayed(open_browser: Browser) -> None:
    alice = open_browser()
    alice.send_text(padded_ping(MAX_FRAME_BYTES, "longest"))
    alice.expect("pong", id="longest")


def test_frame_one_byte_longer_is_refused_line_too_long(open_browser: Browser) -> None:
    alice = open_browser()
    alice.send_text(padded_ping(MAX_FRAME_BYTES + 1, "too-long"))
    error = alice.expect("error", code="line_too_long")
    assert "frame" in error["message"]  # the gateway's wording, not the core's
    assert_nothing_was_forwarded(alice)


def test_frame_of_a_megabyte_is_refused_and_the_websocket_stays_open(
    open_browser: Browser,
) -> None:
    alice = open_browser()
    alice.send_text(padded_ping(1_000_000, "huge"))
    alice.expect("error", code="line_too_long")
    assert_nothing_was_forwarded(alice)


def test_frame_beyond_the_hard_cap_closes_the_websocket_1009(open_browser: Browser) -> None:
    alice = open_browser()
    alice.send_text("x" * 2_000_000)
    code, _reason = alice.expect_close()
    assert code == 1009


@pytest.mark.parametrize("secret", [SECRET, "wrong"])
def test_proxy_request_from_the_browser_is_refused_forbidden(
    open_browser: Browser, core: ChatServer, secret: str
) -> None:
    alice = open_browser()
    alice.send(type="proxy", secret=secret, ip="10.6.6.6", port=6666)
    alice.expect("error", code="forbidden")
    # The websocket goes on, and the browser is still known by its own address.
    ip, port = alice.address
    alice.hello("alice")
    with RawClient(core.address) as bob:
        bob.hello("bob")
        users = {user["name"]: user for user in bob.request("list")["users"]}
    assert users["alice"] == {"name": "alice", "ip": ip, "port": port, "via": "web",
                              "status": "online"}
