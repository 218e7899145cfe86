"""The core over real sockets: every request, every error that can be provoked, the limits."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from typing import Any

import pytest

from tcp_server.protocol import Message, UserInfo
from tcp_server.registry import Envelope, LocalRoom, Member
from tcp_server.server import ChatServer
from tests.support.core import RawClient, running_server, wait_until

Address = tuple[str, int]


def registered(address: Address, name: str) -> RawClient:
    client = RawClient(address)
    client.hello(name)
    return client


# --- the requests ------------------------------------------------------------------------------


def test_hello_is_welcomed_with_the_address_the_server_sees(address: Address) -> None:
    with RawClient(address) as client:
        client.send(type="hello", name="alice", id=1)
        ip, port = client.sock.getsockname()[:2]
        client.expect("welcome", name="alice", ip=ip, port=port, id=1)


def test_list_shows_everyone_sorted_with_address_and_via(address: Address) -> None:
    with registered(address, "bob") as bob, registered(address, "Alice") as alice:
        reply = alice.request("list")
        assert reply["type"] == "users"
        assert [u["name"] for u in reply["users"]] == ["Alice", "bob"]
        ip, port = bob.sock.getsockname()[:2]
        assert reply["users"][1] == {
            "name": "bob", "ip": ip, "port": port, "via": "tcp", "status": "online"
        }


def test_direct_message_is_acknowledged_and_delivered(address: Address) -> None:
    with registered(address, "alice") as alice, registered(address, "bob") as bob:
        alice.expect("joined", name="bob")
        alice.send(type="send", to="BOB", text="hi bob", id="m1")
        sent = alice.expect("sent", to="bob", id="m1")
        message = bob.expect("message", to="bob", text="hi bob")
        assert message["from"] == "alice"
        assert message["ts"] == sent["ts"]


def test_message_to_everyone_reaches_every_other_user(address: Address) -> None:
    with (
        registered(address, "alice") as alice,
        registered(address, "bob") as bob,
        registered(address, "carol") as carol,
    ):
        bob.expect("joined", name="carol")
        alice.send(type="send", to="*", text="hello all")
        alice.expect("joined", name="bob")
        alice.expect("joined", name="carol")
        alice.expect("sent", to="*")
        for client in (bob, carol):
            client.expect("message", to="*", text="hello all")
        alice.assert_silent()


def test_text_with_newlines_and_emoji_is_delivered_intact(address: Address) -> None:
    text = "line one\nline two\r\n\ttabbed 😀 עברית \u2028 \"quoted\" \\ </script>"
    with registered(address, "alice") as alice, registered(address, "bob") as bob:
        alice.send(type="send", to="bob", text=text)
        assert bob.expect("message")["text"] == text


def test_text_of_4000_characters_is_delivered(address: Address) -> None:
    text = "é" * 3999 + "😀"
    with registered(address, "alice") as alice, registered(address, "bob") as bob:
        alice.send(type="send", to="bob", text=text)
        assert bob.expect("message")["text"] == text


def test_exit_says_bye_closes_and_the_others_see_left(address: Address) -> None:
    with registered(address, "alice") as alice, registered(address, "bob") as bob:
        bob.send(type="exit", id="x")
        bob.expect("bye", id="x")
        bob.expect_closed()
        alice.expect("joined", name="bob")
        alice.expect("left", name="bob")
        assert alice.users() == ["alice"]


def test_exit_before_hello_is_allowed(address: Address) -> None:
    with RawClient(address) as client:
        client.send(type="exit")
        client.expect("bye")
        client.expect_closed()


def test_ping_before_and_after_hello(address: Address) -> None:
    with RawClient(address) as client:
        client.send(type="ping", id=5)
        client.expect("pong", id=5)
        client.hello("alice")
        client.send(type="ping")
        assert client.expect("pong").get("id") is None


def test_requests_written_a_byte_at_a_time(address: Address) -> None:
    with RawClient(address) as client:
        for byte in b'{"type":"hello","name":"slow"}\r\n{"type":"ping"}\n':
            client.send_raw(bytes([byte]))
        client.expect("welcome", name="slow")
        client.expect("pong")


def test_many_requests_in_one_write(address: Address) -> None:
    with RawClient(address) as client:
        client.send_raw(b'{"type":"hello","name":"quick"}\n' + b'{"type":"ping"}\n' * 20)
        client.expect("welcome")
        for _ in range(20):
            client.expect("pong")


# --- the errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["with space", "emoji😀", "a" * 33, "", "tab\t", "dot.name"]
)
def test_bad_names_are_refused_and_the_connection_goes_on(address: Address, name: str) -> None:
    with RawClient(address) as client:
        client.send(type="hello", name=name, id="h")
        error = client.expect("error", code="bad_name", id="h")
        assert error["message"]
        client.hello("good_name-32" + "x" * 20)


def test_name_clash_is_case_insensitive(address: Address) -> None:
    with registered(address, "Alice"), RawClient(address) as client:
        client.send(type="hello", name="aLiCe")
        assert "taken" in client.expect("error", code="name_taken")["message"]
        client.hello("alice2")


def test_second_hello_is_already_registered(address: Address) -> None:
    with registered(address, "alice") as client:
        client.send(type="hello", name="other")
        client.expect("error", code="already_registered")
        assert client.users() == ["alice"]


@pytest.mark.parametrize("request_", [{"type": "list"}, {"type": "send", "to": "*", "text": "x"}])
def test_list_and_send_before_hello_are_not_registered(
    address: Address, request_: dict[str, str]
) -> None:
    with RawClient(address) as client:
        client.send(**request_, id=3)
        client.expect("error", code="not_registered", id=3)


def test_send_to_nobody_is_no_such_user(address: Address) -> None:
    with registered(address, "alice") as client:
        client.send(type="send", to="ghost", text="boo", id=1)
        client.expect("error", code="no_such_user", id=1)


@pytest.mark.parametrize("text", ["", "x" * 4001])
def test_bad_text_is_refused_and_nothing_is_delivered(address: Address, text: str) -> None:
    with registered(address, "alice") as alice, registered(address, "bob") as bob:
        alice.send(type="send", to="bob", text=text)
        alice.expect("joined")
        alice.expect("error", code="bad_text")
        bob.assert_silent()


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"\xff\xfe\xfd\n", "bad_request"),
        (b"hello there\n", "bad_request"),
        (b"[1]\n", "bad_request"),
        (b'{"type":"send","to":"x"}\n', "bad_request"),
        (b'{"type":"shout"}\n', "unknown_type"),
    ],
)
def test_malformed_lines_get_an_error_and_the_connection_goes_on(
    address: Address, raw: bytes, code: str
) -> None:
    with RawClient(address) as client:
        client.send(type="ping")  # the first byte, "{", chooses protocol v1
        client.expect("pong")
        client.send_raw(raw)
        client.expect("error", code=code)
        client.hello("survivor")


def test_line_of_70000_bytes_then_a_working_request(address: Address) -> None:
    with registered(address, "alice") as client:
        client.send_raw(b'{"type":"send","to":"*","text":"' + b"x" * 70_000 + b'"}\n')
        client.send(type="ping", id="after")
        client.expect("error", code="line_too_long")
        client.expect("pong", id="after")


def test_connections_beyond_the_maximum_get_server_full() -> None:
    with running_server(max_clients=2) as server:
        first, second = RawClient(server.address), RawClient(server.address)
        try:
            first.hello("one")
            second.hello("two")
            with RawClient(server.address) as third:
                third.expect("error", code="server_full")
                third.expect_closed()
            first.send(type="exit")
            first.expect("joined", name="two")
            first.expect("bye")
            wait_until(lambda: server.connection_count() == 1, what="the slot to free up")
            with RawClient(server.address) as fourth:
                fourth.hello("four")
        finally:
            first.close()
            second.close()


def test_flood_gets_rate_limited_and_the_connection_survives() -> None:
    with running_server(rate_limit=5, rate_burst=10) as server, RawClient(server.address) as client:
        client.send_raw(b'{"type":"ping"}\n' * 30)
        replies = [client.recv() for _ in range(30)]
        pongs = [r for r in replies if r["type"] == "pong"]
        limited = [r for r in replies if r.get("code") == "rate_limited"]
        assert len(pongs) >= 10  # the burst
        assert len(pongs) + len(limited) == 30
        assert len(limited) >= 15
        client.send(type="exit")  # exit is never rate limited
        client.expect("bye")


def test_costly_reads_count_as_several_requests_and_say_so() -> None:
    """A search costs the server a hundred times a send: it counts as several requests."""
    with running_server(rate_limit=0.01, rate_burst=25) as server, RawClient(server.address
                                                                           ) as client:
        client.hello("reader")  # 24 left
        assert client.request("search", q="one")["type"] == "results"  # 14
        assert client.request("search", q="two")["type"] == "results"  # 4
        refused = client.request("search", q="three")
        assert refused["code"] == "rate_limited"
        assert "this one counts as 10" in refused["message"]
        assert client.request("list")["type"] == "users"  # 3: a cheap request still goes
        everyone = {"with": "*"}
        assert client.request("history", limit=200, **everyone)["type"] == "history"  # 1
        limited = client.request("history", limit=101, **everyone)
        assert "this one counts as 2" in limited["message"]
        assert client.request("history", limit=100, **everyone)["type"] == "history"  # 0
        assert client.request("conversations")["code"] == "rate_limited"  # counts as 10
        client.send(type="exit")
        client.expect("bye")


def test_a_read_costing_more_than_a_burst_can_still_be_made() -> None:
    """A cost above --rate-burst counts as the whole burst: with a full bucket it goes."""
    with running_server(rate_limit=0.01, rate_burst=3) as server, RawClient(server.address
                                                                          ) as client:
        client.send(type="search", q="x", id=1)  # counts as 3 of 3: past the limit...
        assert client.expect("error", id=1)["code"] == "not_registered"  # ...and answered
        client.send(type="hello", name="reader", id=2)
        assert client.expect("error", id=2)["code"] == "rate_limited"  # nothing left


def test_rate_limited_error_names_the_code() -> None:
    with running_server(rate_limit=1, rate_burst=1) as server, RawClient(server.address) as client:
        client.send_raw(b'{"type":"ping"}\n{"type":"ping","id":2}\n')
        client.expect("pong")
        client.expect("error", code="rate_limited", id=2)


# --- the trusted gateway -------------------------------------------------------------------------


def test_proxy_with_the_right_secret_lists_the_browser_address_via_web() -> None:
    with running_server(gateway_secret="s3cret") as server, RawClient(server.address) as web:
        web.send(type="proxy", secret="s3cret", ip="203.0.113.7", port=51000)
        web.send(type="hello", name="browser")
        web.expect("welcome", name="browser", ip="203.0.113.7", port=51000)
        assert web.request("list")["users"] == [
            {"name": "browser", "ip": "203.0.113.7", "port": 51000, "via": "web",
             "status": "online"}
        ]


@pytest.mark.parametrize("configured", [None, "s3cret"])
def test_wrong_gateway_secret_is_forbidden_and_closed(configured: str | None) -> None:
    with running_server(gateway_secret=configured) as server, RawClient(server.address) as c:
        c.send(type="proxy", secret="guess", ip="1.2.3.4", port=1)
        c.expect("error", code="forbidden")
        c.expect_closed()


def test_proxy_after_hello_is_forbidden() -> None:
    with running_server(gateway_secret="s") as server, RawClient(server.address) as client:
        client.hello("alice")
        client.send(type="proxy", secret="s", ip="1.2.3.4", port=1)
        client.expect("error", code="forbidden")
        client.expect_closed()


# --- the assignment's own test, and scale ------------------------------------------------------


def test_five_clients_list_each_other_message_everyone_and_one_exits(address: Address) -> None:
    names = ["ann", "ben", "cat", "dan", "eve"]
    clients = {name: registered(address, name) for name in names}
    try:
        for client in clients.values():
            assert client.users() == names
        for sender in names:
            for recipient in names:
                if recipient != sender:
                    text = f"{sender}>{recipient}"
                    reply = clients[sender].request("send", to=recipient, text=text)
                    assert reply["type"] == "sent", reply
        for recipient in names:
            got = set()
            while len(got) < 4:
                obj = clients[recipient].recv()
                if obj["type"] == "message":
                    got.add(obj["text"])
            assert got == {f"{s}>{recipient}" for s in names if s != recipient}
        clients["cat"].send(type="exit")
        for name in ["ann", "ben", "dan", "eve"]:
            wait_until(lambda name=name: "cat" not in clients[name].users(), what="cat to go")
    finally:
        for client in clients.values():
            client.close()


def test_two_hundred_clients_connected_at_once(address: Address) -> None:
    # From five addresses: 40 each, under the default of 50 users per address.
    clients = [RawClient(address, source=f"127.0.0.{2 + n // 40}") for n in range(200)]
    try:
        for number, client in enumerate(clients):
            client.send(type="hello", name=f"user{number}")
        for number, client in enumerate(clients):
            client.expect("welcome", name=f"user{number}")
        assert len(clients[0].request("list")["users"]) == 200
        clients[199].send(type="send", to="*", text="to all 199")
        for client in clients[:199]:
            while (obj := client.recv())["type"] != "message":
                pass
            assert obj["text"] == "to all 199"
    finally:
        for client in clients:
            client.close()


# --- misbehaving peers -----------------------------------------------------------------------


def test_client_that_never_reads_is_dropped_and_the_others_chat_on() -> None:
    with running_server(max_outbox_bytes=64_000, rate_limit=0) as server:
        address = server.address
        with (
            registered(address, "sleeper"),
            registered(address, "alice") as alice,
            registered(address, "bob") as bob,
        ):
            text = "x" * 3900
            # The kernel buffers megabytes for the sleeper before its 64 kB outbox fills:
            # keep chatting until it is dropped, each message still reaching bob at once.
            for number in range(5000):
                alice.send(type="send", to="*", text=f"{number} {text}")
                while (obj := bob.recv())["type"] != "message":
                    assert obj == {"type": "away", "name": "sleeper"}
                assert obj["text"].startswith(f"{number} ")
                if number % 100 == 99 and statuses(bob)["sleeper"] == "away":
                    break
            else:
                raise AssertionError("the sleeper was never dropped")
            bob.send(type="send", to="alice", text="still here")
            while (obj := alice.recv())["type"] != "message" or obj["from"] != "bob":
                assert obj["type"] in ("sent", "joined", "away")
            assert obj["text"] == "still here"


def test_connection_without_hello_is_closed_at_the_deadline() -> None:
    with running_server(hello_timeout=0.3) as server, RawClient(server.address) as client:
        assert "hello" in client.expect("bye")["reason"]
        client.expect_closed()


def test_hello_deadline_does_not_apply_once_registered() -> None:
    with running_server(hello_timeout=0.3) as server, RawClient(server.address) as client:
        client.hello("alice")
        client.assert_silent(0.6)
        assert client.request("ping")["type"] == "pong"


def statuses(client: RawClient) -> dict[str, str]:
    return {u["name"]: u["status"] for u in client.request("list")["users"]}


def test_abrupt_disconnect_makes_the_user_away_for_the_others(address: Address) -> None:
    with registered(address, "alice") as alice:
        bob = registered(address, "bob")
        bob.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
        bob.close()  # RST, no exit
        alice.expect("joined", name="bob")
        alice.expect("away", name="bob")
        assert statuses(alice) == {"alice": "online", "bob": "away"}
        with RawClient(address) as impostor:
            assert impostor.request("hello", name="BOB")["code"] == "name_taken"


def test_abrupt_disconnect_without_grace_tells_the_others_left() -> None:
    with running_server(resume_grace=0) as server, registered(server.address, "alice") as alice:
        bob = registered(server.address, "bob")
        bob.close()
        alice.expect("joined", name="bob")
        alice.expect("left", name="bob")
        assert alice.users() == ["alice"]


def test_an_away_user_leaves_when_the_grace_ends() -> None:
    with running_server(resume_grace=0.5) as server, registered(server.address, "alice") as alice:
        bob = registered(server.address, "bob")
        bob.close()
        alice.expect("joined", name="bob")
        alice.expect("away", name="bob")
        alice.expect("left", name="bob")
        assert alice.users() == ["alice"]


def test_shutdown_says_bye_with_a_reason_to_every_client() -> None:
    with running_server() as server:
        clients = [registered(server.address, f"u{i}") for i in range(5)]
        try:
            server.stop("maintenance")
            for client in clients:
                while (obj := client.recv())["type"] != "bye":
                    pass
                assert obj["reason"] == "maintenance"
                client.expect_closed()
        finally:
            for client in clients:
                client.close()


def _fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_no_thread_or_socket_left_after_500_connect_disconnect_cycles(
    server: ChatServer,
) -> None:
    address = server.address
    with registered(address, "watcher") as watcher:
        threads_before, fds_before = threading.active_count(), _fd_count()
        for cycle in range(500):
            with socket.create_connection(address, timeout=5) as sock:
                if cycle % 2:
                    sock.sendall(b'{"type":"hello","name":"c%d"}\n{"type":"exit"}\n' % cycle)
                    sock.recv(4096)
        wait_until(lambda: server.connection_count() == 1, what="all cycles to end")
        wait_until(lambda: threading.active_count() == threads_before, what="threads to end")
        # The flusher closes each socket after its last bytes (within close_timeout).
        wait_until(lambda: _fd_count() == fds_before, what="every socket to be closed")
        assert watcher.users() == ["watcher"]


def test_events_are_one_json_line_each(address: Address) -> None:
    with registered(address, "alice") as alice, registered(address, "bob") as bob:
        alice.send(type="send", to="bob", text="a\nb")
        line = bob.recv_line()
        assert json.loads(line)["text"] == "a\nb"


class RacingRoom(LocalRoom):
    """A room in which, the moment alice is listed, a message reaches her and someone else
    registers: the races of a registration, made certain."""

    def join(self, member: Member, max_per_address: int = 0) -> None:
        super().join(member, max_per_address)
        if member.info.name == "alice":
            member.deliver(Envelope(Message(sender="racer", to="*", text="hi", ts=1.0, seq=1)))
            super().join(Member(UserInfo("racer", "127.0.0.9", 9, "tcp"), 99_999, _ignore))


def _ignore(envelope: Envelope) -> None:
    """The racer's deliveries: it has no connection."""


def test_welcome_comes_before_what_races_the_registration_and_list_shows_who_raced() -> None:
    with running_server(room=RacingRoom()) as server, RawClient(server.address) as alice:
        alice.send(type="hello", name="alice")
        alice.expect("welcome", name="alice")
        alice.expect("message", text="hi", seq=1, **{"from": "racer"})
        # The racer's `joined` happened while alice's hello was answered: not sent, but
        # in her list (docs/protocol.md, "Keeping a list of users from events").
        alice.send(type="list")
        users = alice.expect("users")["users"]
        assert [user["name"] for user in users] == ["alice", "racer"]
        with RawClient(server.address) as bob:  # presence after the welcome comes
            bob.hello("bob")
            alice.expect("joined", name="bob")


class JoinAfterSnapshotRoom(LocalRoom):
    """A room in which someone registers right after a `list`'s snapshot is taken, before
    the reply is out: the race of a list and a join, made certain."""

    def users(self) -> tuple[UserInfo, ...]:
        snapshot = super().users()
        if not any(user.name == "latecomer" for user in snapshot):
            self.join(Member(UserInfo("latecomer", "127.0.0.9", 9, "tcp"), 99_998, _ignore))
        return snapshot


def test_a_change_after_a_lists_snapshot_comes_after_the_list() -> None:
    # Else a client keeping its list from events (docs/protocol.md) applies the `joined`,
    # then replaces its list by the reply without the newcomer, and never shows them.
    with running_server(room=JoinAfterSnapshotRoom()) as server, \
            RawClient(server.address) as alice:
        alice.hello("alice")
        alice.send(type="list")
        assert [user["name"] for user in alice.expect("users")["users"]] == ["alice"]
        alice.expect("joined", name="latecomer")


def test_presence_made_after_the_welcome_is_queued_reaches_the_registering_client(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The welcome may be read (and acted on) before the hello's handling ends, e.g. during
    a resume's replay: a change made then is an event for the client, not dropped."""
    from tcp_server.connection import Connection

    room = LocalRoom()
    replay = Connection._replay

    def replay_while_someone_joins(self: Connection, pages: Any) -> None:
        replay(self, pages)
        if self.session.member is not None and self.session.member.info.name == "alice":
            room.join(Member(UserInfo("latecomer", "127.0.0.9", 9, "tcp"), 99_997, _ignore))

    monkeypatch.setattr(Connection, "_replay", replay_while_someone_joins)
    with running_server(room=room) as server, RawClient(server.address) as alice:
        alice.send(type="hello", name="alice")
        alice.expect("welcome", name="alice")
        alice.expect("joined", name="latecomer")


def test_a_hello_waiting_for_a_starved_reader_counts_though_its_deadline_passed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """10,000 clients reconnecting at once: a reader may get its turn only after its hello
    deadline, with the hello long in its socket. That hello is handled, not refused."""
    from tcp_server.connection import Connection

    hello_sent = threading.Event()
    original = Connection._reading
    starved: list[Connection] = []

    def starved_once(self: Connection) -> bool:
        # The reader's first look at its state, right after it set its deadline: it waits
        # past the deadline, as a starved thread would.
        if not starved:
            starved.append(self)
            assert hello_sent.wait(5)
            time.sleep(0.4)
        return bool(original.fget(self))  # type: ignore[attr-defined]

    monkeypatch.setattr(Connection, "_reading", property(starved_once))
    with running_server(hello_timeout=0.2) as server, RawClient(server.address) as client:
        client.send(type="hello", name="late")
        hello_sent.set()
        client.expect("welcome", name="late")


def test_a_store_failing_in_the_middle_of_a_replay_ends_with_a_bye_and_a_later_resume_gets_the_rest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tcp_server.memory_store import MemoryStore
    from tcp_server.store import StoreError

    original = MemoryStore.missed
    failing = [True]

    def missed_then_fail(self: MemoryStore, session: Any, after: int) -> Any:
        pages = [page for page in original(self, session, after) if page]
        if not failing[0] or not pages:
            yield from pages
            return
        failing[0] = False
        yield pages[0][:1]  # one message, then the store fails
        raise StoreError("the message store failed: disk I/O error")

    monkeypatch.setattr(MemoryStore, "missed", missed_then_fail)
    with running_server(store="memory") as server, RawClient(server.address) as bob, \
            RawClient(server.address) as alice:
        bob_session = bob.hello("bob")["session"]
        alice.hello("alice")
        bob.close()
        wait_until(lambda: any(u["status"] == "away" for u in alice.request("list")["users"]))
        seqs = [alice.request("send", to="bob", text=f"m{n}")["seq"] for n in range(3)]
        with RawClient(server.address) as again:
            again.send(type="hello", name="bob", resume=bob_session, after=0)
            again.expect("welcome", resumed=True)
            first = again.expect("message")
            assert first["seq"] == seqs[0]
            bye = again.expect("bye")
            assert "unavailable" in bye["reason"]
            again.expect_closed()
        with RawClient(server.address) as last:
            last.send(type="hello", name="bob", resume=bob_session, after=first["seq"])
            last.expect("welcome", resumed=True)
            assert [last.expect("message")["seq"] for _ in seqs[1:]] == seqs[1:]


def test_after_the_bye_of_an_exit_the_name_is_free_at_once(address: Address) -> None:
    for _ in range(30):
        with RawClient(address) as first:
            first.hello("again")
            assert first.request("exit")["type"] == "bye"
        with RawClient(address) as second:  # no wait: the bye means the session has ended
            assert second.request("hello", name="again")["type"] == "welcome"
            second.request("exit")
