"""connection.py: the receiver thread, the event queue and request/reply matching."""

from __future__ import annotations

import json
import queue
import socket
import threading
from collections.abc import Iterator

import pytest

from cli_client.connection import (
    BadLine,
    ConnectionClosed,
    Incoming,
    ReplyTimeout,
    ServerConnection,
)
from tcp_server.protocol import (
    Bye,
    Error,
    Exit,
    Hello,
    Joined,
    ListUsers,
    Message,
    Ping,
    Pong,
    Send,
    Sent,
    Users,
    Welcome,
)
from tcp_server.server import ChatServer
from tests.support.core import WAIT_S, RawClient, running_server


@pytest.fixture
def connection(server: ChatServer) -> Iterator[ServerConnection]:
    connection = ServerConnection.open(*server.address)
    try:
        yield connection
    finally:
        connection.close()


def next_event(connection: ServerConnection) -> Incoming | None:
    return connection.events.get(timeout=WAIT_S)


def threads_named(prefix: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(prefix)]


def test_hello_reply_is_matched_to_the_request(connection: ServerConnection) -> None:
    reply = connection.request(Hello(name="alice"))
    assert isinstance(reply, Welcome)
    assert reply.name == "alice"


def test_reply_is_matched_while_events_keep_arriving(
    connection: ServerConnection, server: ChatServer
) -> None:
    connection.request(Hello(name="alice"))
    with RawClient(server.address) as bob:
        bob.hello("bob")
        for i in range(20):
            bob.send(type="send", to="alice", text=f"m{i}")
        reply = connection.request(ListUsers())
        assert isinstance(reply, Users)
        assert [u.name for u in reply.users] == ["alice", "bob"]
        # Every event reached the queue in order, none was taken for the reply.
        joined = next_event(connection)
        assert isinstance(joined, Joined)
        assert joined.name == "bob"
        assert joined.user == reply.users[1]
        texts = []
        for _ in range(20):
            event = next_event(connection)
            assert isinstance(event, Message)
            texts.append(event.text)
        assert texts == [f"m{i}" for i in range(20)]


def test_error_reply_goes_to_the_request_not_to_the_events(
    connection: ServerConnection,
) -> None:
    connection.request(Hello(name="alice"))
    reply = connection.request(Send(to="nobody", text="hi"))
    assert isinstance(reply, Error)
    assert reply.code == "no_such_user"
    with pytest.raises(queue.Empty):
        connection.events.get_nowait()


def test_sent_reply_carries_the_recipient(connection: ServerConnection) -> None:
    connection.request(Hello(name="alice"))
    reply = connection.request(Send(to="*", text="hi"))
    assert isinstance(reply, Sent)
    assert reply.to == "*"


def test_exit_gets_bye_and_then_the_event_stream_ends(connection: ServerConnection) -> None:
    reply = connection.request(Exit())
    assert isinstance(reply, Bye)
    assert next_event(connection) is None
    assert connection.closed


def test_server_stop_sends_bye_with_reason_then_ends_the_stream() -> None:
    with running_server() as server:
        connection = ServerConnection.open(*server.address)
        try:
            connection.request(Hello(name="alice"))
            server.stop("maintenance")
            assert next_event(connection) == Bye(reason="maintenance")
            assert next_event(connection) is None
        finally:
            connection.close()


def test_request_after_the_connection_closed_raises_connection_closed(
    connection: ServerConnection,
) -> None:
    connection.request(Exit())
    assert next_event(connection) is None
    with pytest.raises(ConnectionClosed):
        connection.request(Ping())


def test_close_joins_the_receiver_thread(server: ChatServer) -> None:
    connection = ServerConnection.open(*server.address)
    peer = f"receiver-{connection.peer}"
    assert threads_named(peer)
    connection.close()
    connection.close()  # idempotent
    assert not threads_named(peer)
    assert next_event(connection) is None


def test_open_raises_oserror_when_nothing_listens() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # bound but not listening: connections are refused
        with pytest.raises(ConnectionRefusedError):
            ServerConnection.open("127.0.0.1", port)


# --- against a fake server that says what a test wants -------------------------------------


class FakeServer:
    """A listening socket whose one accepted connection the test writes to by hand."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.peer: socket.socket | None = None

    def accept(self) -> socket.socket:
        self.listener.settimeout(WAIT_S)
        self.peer, _ = self.listener.accept()
        self.peer.settimeout(WAIT_S)
        return self.peer

    def close(self) -> None:
        if self.peer is not None:
            self.peer.close()
        self.listener.close()


@pytest.fixture
def fake() -> Iterator[tuple[FakeServer, ServerConnection, socket.socket]]:
    fake = FakeServer()
    try:
        connection = ServerConnection.open("127.0.0.1", fake.port)
        try:
            yield fake, connection, fake.accept()
        finally:
            connection.close()
    finally:
        fake.close()


def test_malformed_line_from_the_server_becomes_a_bad_line(
    fake: tuple[FakeServer, ServerConnection, socket.socket],
) -> None:
    _, connection, peer = fake
    peer.sendall(b"this is not json\n")
    event = next_event(connection)
    assert isinstance(event, BadLine)
    assert "not valid JSON" in event.problem


def test_unknown_event_type_is_skipped(
    fake: tuple[FakeServer, ServerConnection, socket.socket],
) -> None:
    _, connection, peer = fake
    peer.sendall(b'{"type":"from_the_future"}\n{"type":"joined","name":"bob"}\n')
    assert next_event(connection) == Joined(name="bob")


def test_event_split_across_packets_is_reassembled(
    fake: tuple[FakeServer, ServerConnection, socket.socket],
) -> None:
    _, connection, peer = fake
    line = '{"type":"message","from":"bob","to":"*","text":"h\u00e9llo","ts":1.5}\n'.encode()
    for i in range(len(line)):
        peer.sendall(line[i : i + 1])
    assert next_event(connection) == Message(sender="bob", to="*", text="h\u00e9llo", ts=1.5)


def test_request_without_reply_times_out(
    fake: tuple[FakeServer, ServerConnection, socket.socket],
) -> None:
    _, connection, _ = fake
    with pytest.raises(ReplyTimeout):
        connection.request(Ping(), timeout=0.05)


def test_late_reply_after_a_timeout_goes_to_the_events(
    fake: tuple[FakeServer, ServerConnection, socket.socket],
) -> None:
    _, connection, peer = fake
    with pytest.raises(ReplyTimeout):
        connection.request(Ping(), timeout=0.05)
    peer.sendall(b'{"type":"pong","id":1}\n')
    event = next_event(connection)
    assert event == Pong(id=1)


def test_waiting_request_is_woken_when_the_server_hangs_up(
    fake: tuple[FakeServer, ServerConnection, socket.socket],
) -> None:
    _, connection, peer = fake
    outcome: list[BaseException] = []

    def ask() -> None:
        try:
            connection.request(ListUsers(), timeout=WAIT_S)
        except (ConnectionClosed, ReplyTimeout) as error:
            outcome.append(error)

    asker = threading.Thread(target=ask, name="test-asker")
    asker.start()
    try:
        peer.recv(1024)  # the request has been sent: the asker is waiting for its reply
        peer.close()
    finally:
        asker.join(WAIT_S)
    assert not asker.is_alive()
    assert len(outcome) == 1
    assert isinstance(outcome[0], ConnectionClosed)
    assert next_event(connection) is None
    assert outcome[0].written  # the server may have acted on it


def test_request_on_a_closed_connection_says_it_was_not_written(
    fake: tuple[FakeServer, ServerConnection, socket.socket],
) -> None:
    _, connection, peer = fake
    peer.close()
    assert next_event(connection) is None
    with pytest.raises(ConnectionClosed) as caught:
        connection.request(ListUsers())
    assert not caught.value.written


def read_request(peer: socket.socket, buffer: bytearray) -> dict[str, object]:
    """The next line the client wrote, as an object (peer has a timeout)."""
    while b"\n" not in buffer:
        chunk = peer.recv(1024)
        assert chunk, "the client closed the connection"
        buffer += chunk
    line, _, rest = bytes(buffer).partition(b"\n")
    buffer[:] = rest
    obj: dict[str, object] = json.loads(line)
    return obj


def test_heartbeat_pings_a_silent_server_and_aborts_when_no_pong_comes(
    fake: tuple[FakeServer, ServerConnection, socket.socket],
) -> None:
    _, connection, peer = fake
    connection.start_heartbeat(interval_s=0.05, timeout_s=0.1)
    assert read_request(peer, bytearray())["type"] == "ping"
    # No pong: the connection is taken for lost and ends like any other.
    assert next_event(connection) is None
    assert connection.closed
    connection.close()
    assert not threads_named(f"heartbeat-{connection.peer}")


def test_heartbeat_keeps_a_connection_whose_server_answers(
    fake: tuple[FakeServer, ServerConnection, socket.socket],
) -> None:
    _, connection, peer = fake
    connection.start_heartbeat(interval_s=0.05, timeout_s=1.0)
    buffer = bytearray()
    for _ in range(3):
        ping = read_request(peer, buffer)
        assert ping["type"] == "ping"
        peer.sendall(json.dumps({"type": "pong", "id": ping["id"]}).encode() + b"\n")
    assert not connection.closed
    with pytest.raises(queue.Empty):
        connection.events.get_nowait()  # pongs are replies, not events


def test_heartbeat_does_not_ping_while_the_server_keeps_talking(
    fake: tuple[FakeServer, ServerConnection, socket.socket],
) -> None:
    _, connection, peer = fake
    connection.start_heartbeat(interval_s=0.3, timeout_s=1.0)
    for _ in range(8):  # an event every 0.1 s for 0.8 s: never 0.3 s of silence
        peer.sendall(b'{"type":"joined","name":"bob"}\n')
        assert next_event(connection) == Joined(name="bob")
        peer.settimeout(0.1)
        with pytest.raises(TimeoutError):
            peer.recv(1024)
    peer.settimeout(WAIT_S)
    # Once the server falls silent, the ping comes.
    assert read_request(peer, bytearray())["type"] == "ping"
