"""Smoke tests of the benchmark's load generator, so that it cannot rot: its accounting of
deliveries, losses and latencies against a small in-process core, and its stream decoders.
Functional assertions only: no timing is asserted."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from bench import loadgen
from tests.support.process import CoreProcess, core_process

# The generator forks its sender and receiver: the core runs in its own process, since forking
# a process whose other threads (an in-process core's) may hold locks can deadlock the child.
TIMEOUT_S = 20.0


@pytest.fixture
def core() -> Iterator[CoreProcess]:
    with core_process("--rate-limit", "0") as server:
        yield server


def _clients(server: CoreProcess, count: int, fanout: bool = False) -> list[loadgen.Client]:
    setup = loadgen.connect_all(
        loadgen.JsonLines(), [server.address], count, "t", fanout,
        parallel=4, timeout_s=10.0, stop_on_failures=1,
    )
    assert setup.registered == count, setup.failures
    return setup.clients


def test_direct_messages_are_all_counted_as_delivered_with_a_latency_each(
    core: CoreProcess,
) -> None:
    clients = _clients(core, 4)
    try:
        result = loadgen.run_messages(
            loadgen.JsonLines(), clients, 20, 0.0, False, 2.0, TIMEOUT_S
        )
    finally:
        for client in clients:
            client.sock.close()
    assert result["expected_deliveries"] == 20
    assert result["delivered"] == 20
    assert result["lost"] == 0
    assert result["duplicates"] == 0
    latency = result["latency_ms"]
    assert 0 < latency["p50"] <= latency["p99"] <= latency["max"]


def test_messages_to_everyone_count_one_delivery_per_other_client(core: CoreProcess) -> None:
    clients = _clients(core, 4, fanout=True)
    try:
        result = loadgen.run_messages(
            loadgen.JsonLines(), clients, 5, 0.0, True, 2.0, TIMEOUT_S
        )
    finally:
        for client in clients:
            client.sock.close()
    assert result["expected_deliveries"] == 15
    assert result["delivered"] == 15
    assert result["lost"] == 0


def test_messages_to_a_client_that_left_are_counted_as_lost(core: CoreProcess) -> None:
    clients = _clients(core, 4)
    # Client 1 leaves: messages to it get no_such_user (the plan rotates recipients).
    clients[1].sock.shutdown(socket.SHUT_RDWR)
    plan = loadgen.plan_messages(4, 12, fanout=False)
    to_gone = sum(1 for _, recipient in plan if recipient == 1)
    from_gone = sum(1 for sender, _ in plan if sender == 1)
    try:
        result = loadgen.run_messages(
            loadgen.JsonLines(), clients, 12, 0.0, False, 0.5, TIMEOUT_S
        )
    finally:
        for client in clients:
            client.sock.close()
    # Nothing to it arrives, and nothing from it can be sent: both count as lost.
    assert to_gone > 0
    assert from_gone > 0
    assert result["lost"] == to_gone + from_gone
    assert result["delivered"] == 12 - to_gone - from_gone
    assert result["send_errors"] >= 1


def test_paced_sending_offers_the_requested_rate(core: CoreProcess) -> None:
    clients = _clients(core, 4)
    try:
        result = loadgen.run_messages(
            loadgen.JsonLines(), clients, 20, 400.0, False, 2.0, TIMEOUT_S
        )
    finally:
        for client in clients:
            client.sock.close()
    assert result["offered_rate"] == 400.0
    assert result["delivered"] == 20


@pytest.mark.parametrize("split", [1, 2, 3, 5, 130])
def test_websocket_decoder_reassembles_frames_split_anywhere(split: int) -> None:
    upgrade = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n"
    big = b"x" * 300  # a 16-bit length
    stream = upgrade + b"\x81\x05hello" + b"\x89\x02hi" + b"\x81\x7e\x01\x2c" + big
    decoder = loadgen.WebSocketDecoder()
    units = b"".join(decoder.feed(stream[i : i + split]) for i in range(0, len(stream), split))
    assert units.split(b"\n")[:-1] == [b"UPGRADED", b"hello", big]
    assert decoder.pings == [b"hi"]


def test_irc_dialect_finds_privmsg_texts_and_answers_ping() -> None:
    irc = loadgen.Irc()
    units = (
        b":a!~a@h PRIVMSG b :12 345\r\nPING :server.example\r\n"
        b":a!~a@h PRIVMSG #bench :13 346\r\n"
    )
    assert irc.pattern.findall(units) == [(b"12", b"345"), (b"13", b"346")]
    assert irc.answer(loadgen.LineDecoder(), units) == b"PONG :server.example\r\n"


def test_v1_message_template_is_the_codecs_send_request() -> None:
    line = loadgen.JsonLines().message("bob", b"7 99")
    assert line == b'{"type":"send","to":"bob","text":"7 99"}\n'


def test_with_two_nodes_every_direct_message_crosses_nodes() -> None:
    plan = loadgen.plan_messages(10, 200, fanout=False, nodes=2)
    assert all(sender % 2 != recipient % 2 for sender, recipient in plan)
    received = [recipient for _, recipient in plan]
    assert {received.count(c) for c in range(10)} == {20}  # every client receives as much


def test_clients_split_over_two_redis_nodes_deliver_every_message(redis_url: str) -> None:
    with (
        core_process("--rate-limit", "0", "--redis", redis_url, "--node-id", "a") as a,
        core_process("--rate-limit", "0", "--redis", redis_url, "--node-id", "b") as b,
    ):
        setup = loadgen.connect_all(
            loadgen.JsonLines(), [a.address, b.address], 6, "t", False,
            parallel=4, timeout_s=10.0, stop_on_failures=1,
        )
        assert setup.registered == 6, setup.failures
        try:
            result = loadgen.run_messages(
                loadgen.JsonLines(), setup.clients, 60, 0.0, False, 1.0, TIMEOUT_S, nodes=2
            )
        finally:
            for client in setup.clients:
                client.sock.close()
        assert (result["delivered"], result["lost"]) == (60, 0)
