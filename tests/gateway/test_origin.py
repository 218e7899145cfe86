"""Cross-site websocket hijacking: only the gateway's own origin (and allow-listed ones) may
open a websocket; every other handshake is refused before it reaches the core."""

from __future__ import annotations

import logging
from dataclasses import replace

import pytest
import websocket

from tcp_server.server import ChatServer
from tests.support.gateway import InProcessGateway, WsClient, running_gateway
from web_gateway.config import GatewayConfig


def assert_refused_403(url: str, origin: str | None) -> None:
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        WsClient(url, origin)
    assert refused.value.status_code == 403


@pytest.mark.parametrize(
    "origin",
    ["http://evil.example", "http://127.0.0.1:1", "https://127.0.0.1:{port}",
     "http://127.0.0.1:{port}.evil.example", "null", "file://", "not an origin"],
)
def test_handshake_from_a_foreign_origin_is_refused_403(
    gateway: InProcessGateway, core: ChatServer, origin: str
) -> None:
    assert_refused_403(gateway.url, origin.format(port=gateway.port))
    assert core.connection_count() == 0  # nothing reached the core


def test_handshake_without_an_origin_is_refused_403(gateway: InProcessGateway) -> None:
    assert_refused_403(gateway.url, None)


def test_handshake_from_the_gateways_own_origin_is_accepted(gateway: InProcessGateway) -> None:
    with WsClient(gateway.url, f"HTTP://127.0.0.1:{gateway.port}") as alice:
        alice.send(type="ping", id=1)
        alice.expect("pong", id=1)


def test_handshake_from_an_allow_listed_origin_is_accepted(
    gateway_config: GatewayConfig,
) -> None:
    config = replace(gateway_config, allow_origins=("https://chat.example.com",))
    with (
        running_gateway(config) as gateway,
        WsClient(gateway.url, "https://chat.example.com:443") as alice,
    ):
        alice.send(type="ping", id=1)
        alice.expect("pong", id=1)


def test_a_refused_origin_is_logged_by_the_display_rule(
    gateway: InProcessGateway, caplog: pytest.LogCaptureFixture
) -> None:
    """The Origin header is the browser's (or an attacker's) text: escaped in the log."""
    with caplog.at_level(logging.WARNING, logger="web_gateway.views"):
        assert_refused_403(gateway.url, "http://evil.example\x1b[2J\x07")
    [line] = [r.getMessage() for r in caplog.records if "origin" in r.getMessage()]
    assert "origin 'http://evil.example\\x1b[2J\\x07' is not allowed" in line
