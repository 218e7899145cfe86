"""Error amplification: a bad frame of a few bytes earns an error object of ~80. Each
websocket may earn --max-errors of them (the gateway's refusals and the core's errors for its
requests) within --error-window; past that it is closed with 1008, so a flood earns a few
errors and a close, and then nothing."""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from tcp_server.server import ChatServer
from tests.gateway.rawws import client_frame, handshake, server_close_code
from tests.support.core import WAIT_S, wait_until
from tests.support.gateway import InProcessGateway, WsClient, gateway_process, running_gateway
from web_gateway.budget import ErrorBudget
from web_gateway.config import GatewayConfig
from web_gateway.frames import browser_errors

log = logging.getLogger(__name__)

BUDGET = 3


# --- the budget and what counts ------------------------------------------------------------


def test_a_budget_takes_its_size_at_once_and_refuses_one_more() -> None:
    budget = ErrorBudget(BUDGET, 1_000.0)  # refills one per 333 s: nothing during the test
    assert [budget.spend() for _ in range(BUDGET + 1)] == [1] * BUDGET + [0]


def test_a_budget_counts_several_errors_at_once() -> None:
    assert ErrorBudget(BUDGET, 1_000.0).spend(BUDGET) == BUDGET
    assert ErrorBudget(BUDGET, 1_000.0).spend(BUDGET + 5) == BUDGET


def test_a_budget_comes_back_over_its_window() -> None:
    now = [0.0]
    budget = ErrorBudget(2, 10.0, clock=lambda: now[0])
    assert budget.spend(2) == 2
    now[0] = 4.9  # one comes back each 5 s
    assert budget.spend(2) == 0
    now[0] = 5.5
    assert budget.spend(2) == 1


def test_a_zero_budget_is_no_limit() -> None:
    budget = ErrorBudget(0, 10.0)
    assert budget.spend(100_000) == 100_000


@pytest.mark.parametrize(("lines", "count"), [
    (b'{"type":"pong"}\n', 0),
    (b'{"type":"error","code":"unknown_type","message":"no"}\n', 1),
    (b'{"type":"error","code":"bad_request","message":"x","id":"1"}\n'
     b'{"type":"message","from":"a","to":"*","text":"{\\"type\\":\\"error\\",\\"code\\":\\"x"}\n'
     b'{"type":"error","code":"rate_limited","message":"slow down"}\n', 2),
    # The core's own failure is not the browser's doing.
    (b'{"type":"error","code":"unavailable","message":"the store failed"}\n', 0),
])
def test_the_cores_errors_caused_by_the_browser_are_counted(lines: bytes, count: int) -> None:
    assert browser_errors(lines) == count


# --- against a gateway ---------------------------------------------------------------------


@pytest.fixture
def budget_gateway(gateway_config: GatewayConfig) -> Iterator[InProcessGateway]:
    config = replace(gateway_config, max_errors=BUDGET, error_window=1_000.0)
    with running_gateway(config) as gateway:
        yield gateway


def test_refused_frames_up_to_the_budget_leave_the_websocket_open(
    budget_gateway: InProcessGateway,
) -> None:
    with WsClient(budget_gateway.url, budget_gateway.origin) as alice:
        for _ in range(BUDGET):
            alice.send_text("")
            alice.expect("error", code="bad_request")
        alice.send(type="ping", id="still")
        alice.expect("pong", id="still")


def test_one_refused_frame_over_the_budget_closes_the_websocket_1008(
    budget_gateway: InProcessGateway, core: ChatServer
) -> None:
    with WsClient(budget_gateway.url, budget_gateway.origin) as alice:
        alice.hello("alice")
        for _ in range(BUDGET + 1):
            alice.send_text("")
        for _ in range(BUDGET):
            alice.expect("error", code="bad_request")
        error = alice.expect("error", code="unavailable")
        assert "too many refused requests" in error["message"]
        assert alice.expect_close() == (1008, "too many refused requests")
    # Its core connection ended with it (the user is away, the session resumable).
    wait_until(lambda: core.connection_count() == 0, what="the core connection to end")


def test_the_cores_errors_count_against_the_budget_too(
    budget_gateway: InProcessGateway,
) -> None:
    with WsClient(budget_gateway.url, budget_gateway.origin) as alice:
        alice.hello("alice")
        for _ in range(BUDGET + 1):
            alice.send(type="dance")  # relayed: the core answers unknown_type
        for _ in range(BUDGET):  # the fourth is not passed on: the budget is spent
            alice.expect("error", code="unknown_type")
        alice.expect("error", code="unavailable")
        assert alice.expect_close()[0] == 1008


# --- the attack against the real gateway process -----------------------------------------------

FLOODS = {
    "empty text frames (refused by the gateway)": client_frame(b""),
    "unknown requests (refused by the core)": client_frame(b'{"type":"x"}'),
}


def flood(port: int, origin: str, frame: bytes, count: int, name: str = "mallory",
          ) -> tuple[int, int, bytes]:
    """Send `count` copies of `frame` on a fresh websocket (after its hello) while reading
    everything the gateway answers until it closes: bytes sent, bytes received, the data."""
    sock, head = handshake(port, origin=origin, source="127.0.0.2")
    assert head.startswith(b"HTTP/1.1 101"), head
    with sock:
        sock.sendall(client_frame(f'{{"type":"hello","name":"{name}"}}'.encode()))
        welcome = b""
        while b"welcome" not in welcome:
            chunk = sock.recv(65_536)
            assert chunk, "closed before the welcome"
            welcome += chunk
        burst = frame * count
        sent = [0]

        def send() -> None:
            with contextlib.suppress(OSError):  # the gateway closes while we still send
                for start in range(0, len(burst), 6_000):
                    sent[0] += sock.send(burst[start:start + 6_000])

        sender = threading.Thread(target=send, name="test-flood-send")
        sender.start()
        data = b""
        sock.settimeout(WAIT_S)
        try:
            while chunk := sock.recv(65_536):
                data += chunk
        except (ConnectionResetError, TimeoutError):
            pass
        finally:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sender.join(WAIT_S)
    return sent[0], len(data), data


@pytest.mark.slow
@pytest.mark.parametrize("kind", FLOODS)
def test_a_flood_of_bad_frames_earns_a_few_errors_and_a_close(
    core: ChatServer, static_dir: Path, kind: str
) -> None:
    host, port = core.address
    with gateway_process("--core", f"{host}:{port}", static_dir=static_dir) as gateway:
        sent, received, data = flood(gateway.port, gateway.origin, FLOODS[kind], 10_000)
    log.warning("a flood of %s: %d bytes sent, %d received (%.3fx)", kind, sent, received,
                received / sent)
    assert server_close_code(data) == 1008
    # Ten errors of ~100 bytes and the ending (an error object and the close frame).
    assert received < 2_000
    assert received < sent
