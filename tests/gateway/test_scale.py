"""Hundreds of open websockets through the real gateway process (gunicorn, one gevent worker)."""

from __future__ import annotations

import signal
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
