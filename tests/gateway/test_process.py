"""The real thing: `python -m web_gateway` under gunicorn, in front of a `python -m tcp_server`
process, both on free ports."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.core import WAIT_S, RawClient
from tests.support.gateway import SECRET, GatewayProcess, WsClient, gateway_process
from tests.support.process import ROOT, CoreProcess, core_process


@pytest.fixture
def core_proc(tmp_path: Path) -> Iterator[CoreProcess]:
    # A store of its own: sessions outlive the process, and another test's would hold names.
    env = {"CHAT_GATEWAY_SECRET": SECRET, "CHAT_DATA_DIR": str(tmp_path / "data")}
    with core_process(env=env) as core:
        yield core


@pytest.fixture
def gateway_proc(core_proc: CoreProcess, static_dir: Path) -> Iterator[GatewayProcess]:
    host, port = core_proc.address
    with gateway_process("--core", f"{host}:{port}", static_dir=static_dir) as gateway:
        yield gateway


def test_gunicorn_gateway_relays_both_ways_and_lists_the_browser_via_web(
    gateway_proc: GatewayProcess, core_proc: CoreProcess
) -> None:
    with WsClient(gateway_proc.url, gateway_proc.origin) as alice, RawClient(
        core_proc.address
    ) as bob:
        alice.hello("alice")
        bob.hello("bob")
        alice.expect("joined", name="bob")
        users = {user["name"]: user for user in bob.request("list")["users"]}
        ip, port = alice.address
        assert users["alice"] == {"name": "alice", "ip": ip, "port": port, "via": "web",
                              "status": "online"}
        alice.send(type="send", to="bob", text="hi from the browser")
        bob.expect("message", text="hi from the browser")
        alice.expect("sent", to="bob")
        bob.send(type="send", to="alice", text="hi from the terminal")
        bob.expect("sent", to="alice")
        alice.expect("message", text="hi from the terminal")
        alice.close()
        bob.expect("away", name="alice")


def test_gunicorn_gateway_refuses_a_foreign_origin(gateway_proc: GatewayProcess) -> None:
    import websocket

    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        WsClient(gateway_proc.url, "http://evil.example")
    assert refused.value.status_code == 403


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_ends_every_websocket_with_a_reason_and_exits_0(
    gateway_proc: GatewayProcess, core_proc: CoreProcess, signum: int
) -> None:
    with WsClient(gateway_proc.url, gateway_proc.origin) as alice, RawClient(
        core_proc.address
    ) as bob:
        alice.hello("alice")
        bob.hello("bob")
        alice.expect("joined", name="bob")
        gateway_proc.proc.send_signal(signum)
        alice.expect("error", code="unavailable", message="the web gateway is shutting down")
        assert alice.expect_close() == (1001, "the web gateway is shutting down")
        bob.expect("away", name="alice")
        assert gateway_proc.proc.wait(timeout=3 * WAIT_S) == 0
    assert "Traceback" not in "".join(gateway_proc.log)


def test_missing_secret_is_a_clear_error_with_exit_code_2() -> None:
    env = {key: value for key, value in __import__("os").environ.items()
           if key != "CHAT_GATEWAY_SECRET"}
    result = subprocess.run(
        [sys.executable, "-m", "web_gateway", "--port", "0"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=3 * WAIT_S,
    )
    assert result.returncode == 2
    assert "CHAT_GATEWAY_SECRET is not set" in result.stderr
