"""Hundreds of open websockets through the real gateway process (gunicorn, one gevent worker)."""

from __future__ import annotations

import signal
import socket
from collections.abc import Iterator
from contextlib import ExitStack

import pytest

from tcp_server.server import ChatServer
from tests.support.core import WAIT_S, RawClient, running_server
from tests.support.gateway import SECRET, GatewayProcess, WsClient, gateway_process

BROWSERS = 200


@pytest.fixture
def core() -> Iterator[ChatServer]:
    # Every test browser comes from 127.0.0.1: the core's per-address limit must allow them.
    with running_server(gateway_secret=SECRET, max_clients_per_ip=BROWSERS + 1) as server:
        yield server


@pytest.fixture
def gateway_proc(core: ChatServer) -> Iterator[GatewayProcess]:
    host, port = core.address
    with gateway_process("--core", f"{host}:{port}",
                         "--max-websockets-per-ip", str(BROWSERS + 1)) as gateway:
        yield gateway


@pytest.mark.slow
def test_two_hundred_browsers_get_a_broadcast_and_a_clean_shutdown(
    gateway_proc: GatewayProcess, core: ChatServer
) -> None:
    with ExitStack() as stack:
        browsers = [stack.enter_context(WsClient(gateway_proc.url, gateway_proc.origin))
                    for _ in range(BROWSERS)]
        for number, browser in enumerate(browsers):
            browser.send(type="hello", name=f"web{number}", id="hello")
        for browser in browsers:
            while browser.recv()["type"] != "welcome":  # joined events of those before
                pass
        with RawClient(core.address) as bob:
            bob.hello("bob")
            users = bob.request("list")["users"]
            assert sum(user["via"] == "web" for user in users) == BROWSERS
            bob.send(type="send", to="*", text="hello, browsers")
            bob.expect("sent", to="*")
            for browser in browsers:
                while (obj := browser.recv())["type"] != "message":
                    assert obj["type"] == "joined"
                assert obj["text"] == "hello, browsers"
            gateway_proc.proc.send_signal(signal.SIGTERM)
            for browser in browsers:
                while (obj := browser.recv())["type"] != "error":
                    pass
                assert obj["code"] == "unavailable"
                assert browser.expect_close()[0] == 1001
            assert gateway_proc.proc.wait(timeout=3 * WAIT_S) == 0
            away = {bob.expect("away")["name"] for _ in range(BROWSERS)}
            assert away == {f"web{number}" for number in range(BROWSERS)}


MESSAGES = 200
WINDOW = 5  # messages on their way to the reader at most: 20 KB, well within its budget


@pytest.mark.slow
def test_under_gevent_a_reader_behind_a_full_socket_keeps_all_and_a_deaf_one_is_dropped(
) -> None:
    """Through the gunicorn gateway: a reader with a 4 KB receive buffer gets every message in
    order, while a browser that reads nothing has its socket fill, a writer greenlet wait for
    room, and is dropped once its budget is full: the core shows it away. (The hand-over to
    a writer and back under gevent: test_units' gevent test.)"""
    small_buffer = ((socket.SOL_SOCKET, socket.SO_RCVBUF, 4_096),)
    with (
        running_server(gateway_secret=SECRET, rate_limit=0) as core,
        gateway_process("--core", "{}:{}".format(*core.address),
                        "--max-queue-bytes", "16384") as gateway,
        WsClient(gateway.url, gateway.origin, sockopt=small_buffer) as reader,
        WsClient(gateway.url, gateway.origin, sockopt=small_buffer) as deaf,
        RawClient(core.address) as bob,
    ):
        reader.hello("reader")
        deaf.hello("deaf")
        bob.hello("bob")
        received: list[int] = []
        sent = 0
        while len(received) < MESSAGES:
            while sent < MESSAGES and sent - len(received) < WINDOW:
                text = f"{sent:04d}" + "x" * 3_996
                bob.send(type="send", to="reader", text=text)
                bob.send(type="send", to="deaf", text=text)
                sent += 1
            obj = reader.recv()
            if obj["type"] == "message":
                received.append(int(obj["text"][:4]))
        assert received == list(range(MESSAGES))
        while (obj := bob.recv())["type"] != "away":
            assert obj["type"] in ("sent", "joined", "error"), obj  # error: deaf gone already
        assert obj == {"type": "away", "name": "deaf"}
        assert reader.request("list")["type"] == "users"  # still relayed
