"""The web gateway under random and mutated websocket frames from many browsers at once.

Fuzzing websockets send random text and binary frames, mutated protocol requests, frames over
the line limit and frames with raw newlines, and reconnect whenever the gateway closes on them.
Meanwhile two well-behaved browsers chat. Afterwards they still work, none of their messages
was lost, every fuzzer's relay has ended, and neither the core nor the gateway logged an error.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import websocket

from tests.robustness.test_live_fuzz import TEMPLATES, mutate
from tests.support.core import WAIT_S, running_server, wait_until
from tests.support.gateway import SECRET, InProcessGateway, WsClient, relay_threads, running_gateway
from web_gateway.config import GatewayConfig

log = logging.getLogger(__name__)

FUZZERS = 6
FRAMES_PER_FUZZER = 300
GOOD_MESSAGES = 30


class _Errors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(f"{record.name}: {record.getMessage()}")


@pytest.fixture
def gateway_errors() -> Iterator[list[str]]:
    handler = _Errors()
    gateway_log = logging.getLogger("web_gateway")
    gateway_log.addHandler(handler)
    try:
        yield handler.messages
    finally:
        gateway_log.removeHandler(handler)


def fuzz_frame(rng: random.Random) -> str | bytes:
    roll = rng.random()
    if roll < 0.1:
        return rng.randbytes(rng.randint(0, 100))  # a binary frame
    if roll < 0.2:
        return rng.randbytes(rng.randint(0, 100)).decode("utf-8", "replace")
    if roll < 0.25:
        return '{"type":"ping","pad":"' + "x" * 70_000 + '"}'  # over the line limit
    if roll < 0.3:
        return '{"type":\n"ping"}\n{"type":"list"}'  # raw newlines, two objects
    if roll < 0.35:  # escaped lone surrogates: valid JSON that no UTF-8 can carry
        return json.dumps({"type": rng.choice(["send", "hello", "proxy"]), "to": "alice",
                           "name": "\ud800", "text": "\udfff", "secret": "\ud800", "id": "\ud83d"})
    template = json.dumps(rng.choice(TEMPLATES)).encode()
    return (template if roll < 0.5 else mutate(rng, template)).decode("utf-8", "replace")


class WsFuzzer:
    def __init__(self, gateway: InProcessGateway, seed: int) -> None:
        self._gateway = gateway
        self._rng = random.Random(seed)
        self._client: WsClient | None = None
        self.frames = 0
        self.connections = 0

    def run(self) -> None:
        try:
            for _ in range(FRAMES_PER_FUZZER):
                self._send(fuzz_frame(self._rng))
                self.frames += 1
        finally:
            self._hang_up()

    def _send(self, frame: str | bytes) -> None:
        if self._client is None:
            self._client = WsClient(self._gateway.url, origin=self._gateway.origin)
            self.connections += 1
        try:
            if isinstance(frame, bytes):
                self._client.ws.send_binary(frame)
            else:
                self._client.send_text(frame)
            # Read the answer (nearly every frame earns one) so that closes are noticed.
            if self._client.recv_frame(timeout=0.2) is None:
                self._hang_up()
        except (OSError, websocket.WebSocketException):  # closed on us, or no answer in time
            if self._client is not None and not self._client.ws.connected:
                self._hang_up()

    def _hang_up(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            # OSError, WebSocketException: already closed by the gateway.
            with contextlib.suppress(OSError, websocket.WebSocketException):
                client.close()


@pytest.mark.slow
def test_random_frames_from_many_websockets_harm_no_well_behaved_browser(
    tmp_path: Path, gateway_errors: list[str]
) -> None:
    static = tmp_path / "static"
    static.mkdir()
    (static / "index.html").write_text("<!doctype html><title>fuzz</title>\n")
    # No grace: a fuzzer that joined and hung up without exit is gone at once, not away.
    with running_server(gateway_secret=SECRET, resume_grace=0) as core:
        # The fuzzers reconnect from one address whenever they are closed: not the subject
        # here (tests/gateway/test_attacks.py limits that), so opens are not limited.
        config = GatewayConfig(core_host=core.address[0], core_port=core.address[1],
                               gateway_secret=SECRET, static_dir=static, max_opens_per_ip=0)
        with running_gateway(config) as gateway, WsClient(
            gateway.url, origin=gateway.origin
        ) as alice, WsClient(gateway.url, origin=gateway.origin) as bob:
            alice.hello("alice")
            bob.hello("bob")
            fuzzers = [WsFuzzer(gateway, seed) for seed in range(FUZZERS)]
            threads = [threading.Thread(target=f.run, name=f"test-ws-fuzzer-{i}")
                       for i, f in enumerate(fuzzers)]
            for thread in threads:
                thread.start()
            try:
                for seq in range(GOOD_MESSAGES):
                    reply = alice.request("send", to="bob" if seq % 2 else "*", text=f"a {seq}")
                    assert reply["type"] == "sent", reply
            finally:
                for thread in threads:
                    thread.join(60)
            assert not any(thread.is_alive() for thread in threads)

            got: list[int] = []
            while len(got) < GOOD_MESSAGES:
                event = bob.recv()
                if event["type"] == "message" and event["from"] == "alice":
                    got.append(int(event["text"].split()[1]))
            assert got == list(range(GOOD_MESSAGES))
            # Everyone but the two browsers is gone, on both sides of the gateway.
            wait_until(lambda: gateway.relays.count() == 2, timeout=10,
                       what="the fuzzers' websockets to end")
            wait_until(lambda: core.connection_count() == 2, timeout=10,
                       what="the fuzzers' core connections to end")
            users = bob.request("list")
            assert [u["name"] for u in users["users"]] == ["alice", "bob"]
        wait_until(lambda: not relay_threads(), timeout=WAIT_S, what="relay threads to end")
    log.info("gateway fuzz: %d frames over %d websockets; %d good messages checked",
             sum(f.frames for f in fuzzers), sum(f.connections for f in fuzzers), GOOD_MESSAGES)
    assert gateway_errors == []
