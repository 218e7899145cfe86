"""While a connection registers, deliveries from others are held until its welcome is queued
(tcp_server/connection.py). Held messages count against the send-queue budget; held presence
does not: it is one shared batch for every member, and a client that has not been sent its
welcome yet cannot be "not reading" (10,000 clients resuming at once announce more than the
budget of `back` to the first of them while they register)."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from tcp_server.commands import Commands
from tcp_server.config import ServerConfig
from tcp_server.connection import Connection, Lifecycle, ShutdownGate
from tcp_server.flusher import Flusher
from tcp_server.memory_store import MemoryStore
from tcp_server.protocol import Back, Message, UserInfo
from tcp_server.registry import Envelope, LocalRoom

BUDGET = 2_000


@pytest.fixture
def parts() -> Iterator[tuple[Connection, socket.socket]]:
    ours, theirs = socket.socketpair()
    theirs.settimeout(5)
    store = MemoryStore()
    commands = Commands(LocalRoom(), store)
    flusher = Flusher()
    flusher.start()
    connection = Connection(ours, ("127.0.0.1", 4000), ServerConfig(max_outbox_bytes=BUDGET),
                            commands, flusher, ShutdownGate())
    try:
        yield connection, theirs
    finally:
        connection.close("test over")
        flusher.stop(0.0, 1.0)
        ours.close()
        theirs.close()
        store.close()


def presence(count: int) -> Envelope:
    return Envelope.batch([
        Envelope(Back(f"user{n}", UserInfo(f"user{n}", "127.0.0.1", 5000 + n, "tcp")))
        for n in range(count)
    ])


def registering(connection: Connection) -> None:
    connection._held, connection._held_bytes = [], 0  # what _handle does for a hello


def test_presence_held_while_registering_never_drops_and_arrives_whole(
    parts: tuple[Connection, socket.socket],
) -> None:
    connection, theirs = parts
    registering(connection)
    batch = presence(100)  # ~10 KB: five times the budget
    assert len(batch.encoded(connection._encoder)) > 4 * BUDGET
    connection.deliver(batch)
    assert connection.state is Lifecycle.HELLO
    connection._release_held()
    received = b""
    while received.count(b"\n") < 100:
        received += theirs.recv(65_536)
    assert received == batch.encoded(connection._encoder)


def test_messages_held_while_registering_beyond_the_budget_drop_the_client(
    parts: tuple[Connection, socket.socket],
) -> None:
    connection, _ = parts
    registering(connection)
    connection.deliver(presence(100))
    held = 0
    for seq in range(1, 100):
        message = Envelope(Message("bob", "*", "x" * 100, 1.0, seq))
        held += len(message.encoded(connection._encoder))
        connection.deliver(message)
        if held <= BUDGET:  # the messages alone decide
            assert connection.state is Lifecycle.HELLO
        else:
            assert connection.state is Lifecycle.CLOSING
            return
    pytest.fail("never dropped")
