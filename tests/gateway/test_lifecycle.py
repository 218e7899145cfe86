"""How relays end: the browser leaves, the core leaves or is not there, the gateway stops."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from dataclasses import replace

import websocket

from tcp_server.server import ChatServer
from tests.support.core import WAIT_S, RawClient, running_server, wait_until
from tests.support.gateway import SECRET, InProcessGateway, WsClient, relay_threads, running_gateway
from web_gateway.config import GatewayConfig

Browser = Callable[[], WsClient]


def test_browser_closing_the_websocket_makes_the_others_see_away(
    open_browser: Browser, core: ChatServer
) -> None:
    # A closed tab or a reload sends no exit: the core keeps the session for its grace.
    alice = open_browser()
    alice.hello("alice")
    with RawClient(core.address) as bob:
        bob.hello("bob")
        alice.close()
        bob.expect("away", name="alice")


def test_browser_exit_makes_the_others_see_left_at_once(
    open_browser: Browser, core: ChatServer
) -> None:
    alice = open_browser()
    alice.hello("alice")
    with RawClient(core.address) as bob:
        bob.hello("bob")
        assert alice.request("exit")["type"] == "bye"
        bob.expect("left", name="alice")


def test_browser_vanishing_without_a_close_frame_makes_the_others_see_away(
    open_browser: Browser, core: ChatServer
) -> None:
    alice = open_browser()
    alice.hello("alice")
    with RawClient(core.address) as bob:
        bob.hello("bob")
        alice.ws.sock.shutdown(socket.SHUT_RDWR)  # like a closed laptop lid's TCP reset
        bob.expect("away", name="alice")


def test_relay_threads_end_when_the_browser_leaves(
    open_browser: Browser, gateway: InProcessGateway
) -> None:
    alice = open_browser()
    alice.hello("alice")
    assert relay_threads()
    alice.close()
    wait_until(lambda: not relay_threads() and gateway.relays.count() == 0,
               what="the relay's threads to end")


def test_browser_exit_gets_bye_and_a_normal_close(open_browser: Browser) -> None:
    alice = open_browser()
    alice.hello("alice")
    alice.send(type="exit", id="x")
    alice.expect("bye", id="x")
    assert alice.expect_close() == (1000, "bye")


def test_core_shutting_down_relays_its_bye_then_an_error_and_a_close_with_reason(
    gateway_config: GatewayConfig,
) -> None:
    with running_server(gateway_secret=SECRET) as core:
        config = replace(gateway_config, core_host=core.address[0], core_port=core.address[1])
        with running_gateway(config) as gateway, WsClient(gateway.url, gateway.origin) as alice:
            alice.hello("alice")
            core.stop("maintenance")
            alice.expect("bye", reason="maintenance")
            alice.expect("error", code="unavailable",
                         message="the chat server closed the connection")
            assert alice.expect_close() == (1001, "the chat server closed the connection")


def test_core_unreachable_gives_an_error_and_a_close_with_reason(
    gateway_config: GatewayConfig,
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as placeholder:
        free_port = placeholder.getsockname()[1]  # nothing listens there once it is closed
    config = replace(gateway_config, core_port=free_port)
    with running_gateway(config) as gateway, WsClient(gateway.url, gateway.origin) as alice:
        error = alice.expect("error", code="unavailable")
        assert "unreachable" in error["message"]
        assert alice.expect_close() == (1013, "the chat server is unreachable")


def test_proxy_request_comes_first_and_core_closing_abruptly_is_reported(
    gateway_config: GatewayConfig,
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as fake_core:
        fake_core.settimeout(WAIT_S)
        config = replace(gateway_config, core_port=fake_core.getsockname()[1])
        with running_gateway(config) as gateway, WsClient(gateway.url, gateway.origin) as alice:
            connection, _ = fake_core.accept()
            with connection, connection.makefile("rb") as core_side:
                connection.settimeout(WAIT_S)
                first = json.loads(core_side.readline())
                ip, port = alice.address
                assert first == {"type": "proxy", "secret": SECRET, "ip": ip, "port": port}
                connection.shutdown(socket.SHUT_RDWR)  # no bye: the core just went away
            alice.expect("error", code="unavailable")
            code, reason = alice.expect_close()
            assert code == 1001
            assert reason


def test_stopping_the_gateway_ends_every_websocket_with_a_reason(
    gateway: InProcessGateway, core: ChatServer
) -> None:
    with (
        WsClient(gateway.url, gateway.origin) as alice,
        WsClient(gateway.url, gateway.origin) as carol,
        RawClient(core.address) as bob,
    ):
        alice.hello("alice")
        carol.hello("carol")
        bob.hello("bob")
        gateway.relays.stop_all()
        for browser in (alice, carol):
            while (obj := browser.recv())["type"] != "error":
                assert obj["type"] in ("joined", "away")  # the other browser may go first
            assert obj["code"] == "unavailable"
            assert browser.expect_close() == (1001, "the web gateway is shutting down")
        # A gateway restart is a disconnect without exit: both can take their sessions back.
        assert {bob.expect("away")["name"], bob.expect("away")["name"]} == {"alice", "carol"}
        assert gateway.relays.wait_idle(WAIT_S)


def test_websockets_up_to_the_limit_are_relayed_and_one_more_is_refused(
    gateway_config: GatewayConfig,
) -> None:
    config = replace(gateway_config, max_websockets=2)
    with (
        running_gateway(config) as gateway,
        WsClient(gateway.url, gateway.origin) as first,
        WsClient(gateway.url, gateway.origin) as second,
    ):
        first.hello("first")
        second.hello("second")
        with WsClient(gateway.url, gateway.origin) as third:
            error = third.expect("error", code="unavailable")
            assert "full" in error["message"]
            assert third.expect_close() == (1013, "too many browsers connected")
        second.close()
        wait_until(lambda: gateway.relays.count() == 1, what="the second websocket to end")
        with WsClient(gateway.url, gateway.origin) as fourth:
            fourth.hello("fourth")


def test_gateway_without_a_secret_refuses_websockets_with_a_reason(
    gateway_config: GatewayConfig,
) -> None:
    config = replace(gateway_config, gateway_secret=None)
    with running_gateway(config) as gateway, WsClient(gateway.url, gateway.origin) as alice:
        error = alice.expect("error", code="unavailable")
        assert "CHAT_GATEWAY_SECRET" in error["message"]
        code, _reason = alice.expect_close()
        assert code == 1013


def test_browser_that_does_not_read_is_dropped_and_the_others_see_away(
    gateway_config: GatewayConfig, core: ChatServer
) -> None:
    config = replace(gateway_config, max_queue_bytes=4_000)
    # A small receive buffer, and no reading: what the core sends piles up in the gateway.
    small_buffer = ((socket.SOL_SOCKET, socket.SO_RCVBUF, 4_096),)
    with (
        running_gateway(config) as gateway,
        WsClient(gateway.url, gateway.origin, sockopt=small_buffer) as alice,
        RawClient(core.address) as bob,
    ):
        alice.hello("alice")
        bob.hello("bob")
        for number in range(50):  # within the core's rate burst; 200 KB in all
            bob.send(type="send", to="alice", text=f"{number:04d}" + "x" * 3_996)
        while (obj := bob.recv())["type"] == "sent":
            pass
        assert obj == {"type": "away", "name": "alice"}


def test_core_that_does_not_read_ends_the_websocket_with_a_reason(
    gateway_config: GatewayConfig,
) -> None:
    with socket.socket() as fake_core:
        # A small receive buffer, and no reading: the browser's frames pile up in the gateway.
        fake_core.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4_096)
        fake_core.bind(("127.0.0.1", 0))
        fake_core.listen()
        fake_core.settimeout(WAIT_S)
        config = replace(gateway_config, core_port=fake_core.getsockname()[1],
                         max_queue_bytes=4_000)
        with running_gateway(config) as gateway, WsClient(gateway.url, gateway.origin) as alice:
            connection, _ = fake_core.accept()
            with connection:
                frame = json.dumps({"type": "ping", "pad": "x" * 4_000})
                for _ in range(100):
                    alice.send_text(frame)
                error = alice.expect("error", code="unavailable")
                assert "not keeping up" in error["message"]
                assert alice.expect_close() == (1013, "the chat server is not keeping up")



# --- dead peers: the gateway pings every browser -----------------------------------------------

PING_INTERVAL_S = 0.1
PONG_TIMEOUT_S = 0.3


def test_browser_that_answers_pings_stays_connected(
    gateway_config: GatewayConfig, core: ChatServer
) -> None:
    config = replace(gateway_config, ping_interval=PING_INTERVAL_S, pong_timeout=PONG_TIMEOUT_S)
    with running_gateway(config) as gateway, WsClient(gateway.url, gateway.origin) as alice:
        alice.hello("alice")
        # websocket-client answers each ping as it reads it; for several times the pong
        # timeout, only pings come.
        pings = 0
        deadline = time.monotonic() + 5 * PONG_TIMEOUT_S
        while (remaining := deadline - time.monotonic()) > 0:
            alice.ws.settimeout(remaining)
            try:
                opcode, _frame = alice.ws.recv_data_frame(control_frame=True)
            except websocket.WebSocketTimeoutException:
                break
            assert opcode == websocket.ABNF.OPCODE_PING
            pings += 1
        assert pings >= 3
        assert alice.request("ping")["type"] == "pong"
        assert gateway.relays.count() == 1


def test_browser_that_answers_no_ping_is_closed_without_exit(
    gateway_config: GatewayConfig, core: ChatServer
) -> None:
    config = replace(gateway_config, ping_interval=PING_INTERVAL_S, pong_timeout=PONG_TIMEOUT_S)
    with (
        running_gateway(config) as gateway,
        WsClient(gateway.url, gateway.origin) as alice,
        RawClient(core.address) as bob,
    ):
        alice.hello("alice")
        bob.hello("bob")
        # alice reads nothing from now on, so she answers no ping: like a vanished laptop.
        started = time.monotonic()
        wait_until(lambda: gateway.relays.count() == 0, what="the silent browser to be closed")
        assert time.monotonic() - started >= PONG_TIMEOUT_S
        # The gateway ended the core connection without sending exit on alice's behalf: she is
        # away (her session kept for a resume), not gone.
        assert bob.expect("away", name="alice")
