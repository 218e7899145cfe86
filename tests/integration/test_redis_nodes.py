"""Several core processes sharing one Redis: one room across nodes."""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.support.core import RawClient, wait_until
from tests.support.process import CoreProcess
from tests.support.redis_server import redis_server

Address = tuple[str, int]
Connect = Callable[..., RawClient]
pytestmark = pytest.mark.slow


@contextlib.contextmanager
def nodes(url: str, count: int, *extra: str) -> Iterator[list[CoreProcess]]:
    started: list[CoreProcess] = []
    try:
        for n in range(count):
            started.append(CoreProcess("--redis", url, "--node-id", f"node{n}",
                                       "--max-clients-per-ip", "0", "--max-joins-per-ip", "0",
                                       "--max-connects-per-ip", "0",
                                       *extra))
        yield started
    finally:
        for core in started:
            core.stop()


@pytest.fixture
def connect() -> Iterator[Callable[..., RawClient]]:
    """connect(...) that the test's teardown closes, whatever happened."""
    made: list[RawClient] = []

    def make(*args: Any, **kwargs: Any) -> RawClient:
        client = RawClient(*args, **kwargs)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


def messages(client: RawClient, count: int, timeout: float = 20.0) -> list[dict[str, Any]]:
    """The next `count` message events (other events skipped)."""
    found: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while len(found) < count:
        obj = client.recv(max(0.01, deadline - time.monotonic()))
        if obj["type"] == "message":
            found.append(obj)
    return found


def drain(client: RawClient, quiet: float = 0.1) -> list[dict[str, Any]]:
    """Everything that arrives until the connection stays quiet for `quiet` seconds (or is
    closed)."""
    found = []
    while True:
        try:
            found.append(client.recv(quiet))
        except (TimeoutError, ConnectionError):
            return found


def until_any(client: RawClient, kind: str, timeout: float = 20.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        obj = client.recv(max(0.01, deadline - time.monotonic()))
        if obj["type"] == kind:
            return obj


def until(client: RawClient, kind: str, name: str, timeout: float = 20.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        obj = client.recv(max(0.01, deadline - time.monotonic()))
        if obj["type"] == kind and obj.get("name") == name:
            return obj


def test_everyone_and_direct_messages_cross_nodes_once_and_in_order(
    redis_url: str, connect: Connect,
) -> None:
    clients_count, per_client = 200, 2
    with nodes(redis_url, 3) as cores:
        clients = []
        for i in range(clients_count):
            client = connect(cores[i % 3].address, timeout=20)
            client.hello(f"u{i}")
            clients.append(client)
        # Everyone registered on every node before anyone sends.
        wait_until(lambda: len(clients[-1].users()) == clients_count, timeout=20)
        for round_ in range(per_client):
            for i, client in enumerate(clients):
                client.send(type="send", to="*", text=f"u{i} says {round_}")
        for i, client in enumerate(clients):
            client.send(type="send", to=f"u{(i + 1) % clients_count}", text=f"dm from u{i}")
        expected = (clients_count - 1) * per_client + 1
        for i, client in enumerate(clients):
            got = messages(client, expected, timeout=60)
            seqs = [m["seq"] for m in got]
            assert seqs == sorted(set(seqs)), f"u{i}: not in seq order or twice"
            texts = [m["text"] for m in got]
            for j in range(clients_count):
                if j == i:
                    continue
                from_j = [t for t in texts if t.startswith(f"u{j} says")]
                assert from_j == [f"u{j} says {r}" for r in range(per_client)], (i, j, from_j)
            assert f"dm from u{(i - 1) % clients_count}" in texts
        for client in clients:  # and nothing more: no message twice
            assert not [m for m in drain(client) if m["type"] == "message"]
        for client in clients:
            client.close()


def test_lists_agree_on_every_node(redis_url: str, connect: Connect) -> None:
    with nodes(redis_url, 2) as cores:
        a = connect(cores[0].address, source="127.0.0.2")
        b = connect(cores[1].address, source="127.0.0.3")
        a.hello("alice")
        b.hello("bob")
        until(a, "joined", "bob")
        lists = [c.request("list")["users"] for c in (a, b)]
        assert lists[0] == lists[1]
        by_name = {u["name"]: u for u in lists[0]}
        assert by_name["alice"]["ip"] == "127.0.0.2"
        assert by_name["bob"]["ip"] == "127.0.0.3"
        assert by_name["bob"]["port"] == b.sock.getsockname()[1]
        assert {u["status"] for u in lists[0]} == {"online"}
        a.close()
        until(b, "away", "alice")
        assert {u["name"]: u["status"] for u in b.request("list")["users"]}["alice"] == "away"
        b.close()


def _race(client: RawClient, name: str, start: threading.Barrier,
          replies: list[dict[str, Any]]) -> None:
    start.wait(5)
    client.send(type="hello", name=name)
    replies.append(client.recv())


def test_a_name_raced_on_two_nodes_is_given_once(redis_url: str, connect: Connect) -> None:
    with nodes(redis_url, 2) as cores:
        for round_ in range(15):
            name = f"racer{round_}"
            pair = [connect(core.address) for core in cores]
            replies: list[dict[str, Any]] = []
            start = threading.Barrier(2)

            threads = [threading.Thread(target=_race, args=(c, name, start, replies))
                       for c in pair]
            for t in threads:
                t.start()
            for t in threads:
                t.join(10)
            kinds = sorted(r["type"] for r in replies)
            assert kinds == ["error", "welcome"], replies
            assert [r["code"] for r in replies if r["type"] == "error"] == ["name_taken"]
            for client in pair:
                client.close()


def test_a_killed_node_users_go_away_then_left_and_resume_elsewhere(
    redis_url: str, connect: Connect,
) -> None:
    with nodes(redis_url, 2, "--node-timeout", "2", "--resume-grace", "6") as cores:
        a, b = cores
        alice = connect(a.address)
        welcome = alice.hello("alice")
        carol = connect(a.address)
        carol.hello("carol")
        bob = connect(b.address)
        bob.hello("bob")
        sent = [bob.request("send", to="*", text=f"before {n}")["seq"] for n in range(3)]
        got = messages(alice, 3)
        assert [m["seq"] for m in got] == sent
        a.proc.kill()  # SIGKILL: no goodbye, no heartbeat
        killed = time.monotonic()
        away: set[str] = set()
        while away != {"alice", "carol"}:  # in either order
            event = until_any(bob, "away", timeout=10)
            away.add(event["name"])
        assert time.monotonic() - killed < 2 + 2 + 1.5  # timeout + a beat interval + slack
        missed = [bob.request("send", to="*", text=f"while away {n}")["seq"] for n in range(5)]
        missed.append(bob.request("send", to="alice", text="just for you")["seq"])
        # alice's client reconnects to the other node and resumes: everything, once, in order
        alice2 = connect(b.address)
        alice2.send(type="hello", name="alice", resume=welcome["session"], after=sent[-1])
        alice2.expect("welcome", name="alice", resumed=True)
        replayed = messages(alice2, len(missed))
        assert [m["seq"] for m in replayed] == missed
        assert not [m for m in drain(alice2, 0.3) if m["type"] == "message"]
        until(bob, "back", "alice")
        # carol never came back: she is left at the end of her grace, everywhere
        until(bob, "left", "carol", timeout=15)
        names = {u["name"]: u["status"] for u in bob.request("list")["users"]}
        assert names == {"alice": "online", "bob": "online"}
        for client in (alice, carol, bob, alice2):
            client.close()


def test_a_node_restarted_with_its_id_cleans_up_its_stale_members(
    redis_url: str, connect: Connect,
) -> None:
    with nodes(redis_url, 1, "--node-timeout", "30", "--resume-grace", "30") as cores:
        (b,) = cores
        bob = connect(b.address)
        bob.hello("bob")
        first = CoreProcess("--redis", redis_url, "--node-id", "phoenix",
                            "--node-timeout", "30", "--resume-grace", "30")
        try:
            dave = connect(first.address)
            dave.hello("dave")
            until(bob, "joined", "dave")
            first.proc.kill()
        finally:
            first.stop()
        again = CoreProcess("--redis", redis_url, "--node-id", "phoenix",
                            "--node-timeout", "30", "--resume-grace", "30")
        try:
            # long before the 30 s node timeout: the new process took its old members back
            until(bob, "away", "dave", timeout=5)
        finally:
            again.stop()
        dave.close()
        bob.close()


def test_redis_restarted_under_load_keeps_every_acknowledged_message(connect: Connect) -> None:
    with redis_server(durable=True) as server, nodes(server.url, 2, "--rate-limit", "0") as cores:
        sender = connect(cores[0].address, timeout=15)
        sender.hello("sender")
        reader = connect(cores[1].address, timeout=15)
        reader.hello("reader")
        acked: list[int] = []
        refused = 0
        stop = threading.Event()

        def load() -> None:
            nonlocal refused
            n = 0
            while not stop.is_set():
                reply = sender.request("send", to="*", text=f"load {n}")
                n += 1
                if reply["type"] == "sent":
                    acked.append(reply["seq"])
                else:
                    assert reply["code"] == "unavailable", reply
                    refused += 1
                    time.sleep(0.05)

        thread = threading.Thread(target=load)
        thread.start()
        try:
            wait_until(lambda: len(acked) > 50, timeout=15)
            server.kill()
            time.sleep(1.0)
            server.start()
            count = len(acked)
            wait_until(lambda: len(acked) > count + 50, timeout=30, what="sends after restart")
        finally:
            stop.set()
            thread.join(30)
        # Every acknowledged message is in history and reached the reader once, in order.
        assert acked == sorted(acked)
        got = messages(reader, len(acked), timeout=30)
        assert [m["seq"] for m in got] == acked
        history = reader.request("history", **{"with": "*", "limit": 100})
        assert [m["seq"] for m in history["messages"]] == acked[-100:]
        # the connections were kept through the outage
        assert sender.request("list")["type"] == "users"
        sender.close()
        reader.close()


def test_a_resume_on_another_node_closes_the_old_connection(
    redis_url: str, connect: Connect,
) -> None:
    with nodes(redis_url, 2) as (a, b):
        old = connect(a.address)
        welcome = old.hello("alice")
        bob = connect(b.address)
        bob.hello("bob")
        new = connect(b.address)
        new.send(type="hello", name="alice", resume=welcome["session"], after=welcome["seq"])
        new.expect("welcome", name="alice", resumed=True)
        bye = next(m for m in drain(old, 1.0) if m["type"] == "bye")
        assert bye["reason"] == "resumed elsewhere"
        old.expect_closed()
        # As on one node: the others see back with the entry's new address, never left/joined.
        back = until(bob, "back", "alice")
        assert back["user"]["port"] == new.sock.getsockname()[1]
        assert back["user"]["status"] == "online"
        seq = bob.request("send", to="alice", text="to the new one")["seq"]
        assert [m["seq"] for m in messages(new, 1)] == [seq]
        names = {u["name"]: u for u in bob.request("list")["users"]}
        assert names["alice"]["status"] == "online"
        assert names["alice"]["port"] == new.sock.getsockname()[1]
        for client in (old, new, bob):
            client.close()


def test_a_node_stopped_cleanly_hands_its_users_to_the_others_at_once(
    redis_url: str, connect: Connect,
) -> None:
    with nodes(redis_url, 2, "--node-timeout", "30", "--resume-grace", "2") as (a, b):
        alice = connect(a.address)
        alice.hello("alice")
        bob = connect(b.address)
        bob.hello("bob")
        a.proc.terminate()  # SIGTERM: a bye to alice, and away for the others
        until(bob, "away", "alice")
        # long before the 30 s node timeout, node b runs alice's grace
        until(bob, "left", "alice", timeout=15)
        assert a.proc.wait(10) == 0
        alice.close()
        bob.close()


def test_redis_down_refuses_with_unavailable_and_keeps_connections(connect: Connect) -> None:
    with redis_server() as server, nodes(server.url, 2) as (a, b):
        alice = connect(a.address)
        alice.hello("alice")
        bob = connect(b.address)
        bob.hello("bob")
        # The replay that follows a welcome is read from Redis: a ping's pong comes after it.
        # (A Redis failure in the middle of a replay closes the connection: the client then
        # resumes.)
        for client in (alice, bob):
            assert client.request("ping")["type"] == "pong"
        server.kill()
        reply = alice.request("list")
        assert (reply["type"], reply["code"]) == ("error", "unavailable")
        newcomer = connect(b.address)
        newcomer.send(type="hello", name="carol")
        assert newcomer.expect("error")["code"] == "unavailable"
        assert alice.request("ping")["type"] == "pong"  # still connected
        server.start()  # a fresh, empty Redis (no persistence in this test)
        # That Redis lost the room: the nodes notice and close their connections, whose
        # sessions are gone (their clients then join again).
        for client in (alice, bob):
            bye = next(m for m in drain(client, 8.0) if m["type"] == "bye")
            assert "resume" in bye["reason"]
            client.expect_closed()
        again = connect(a.address)
        again.hello("alice")
        assert again.users() == ["alice"]
        again.close()
        for client in (alice, bob, newcomer):
            client.close()


def test_a_node_taken_for_dead_closes_its_connections_when_it_wakes(
    redis_url: str, connect: Connect,
) -> None:
    with nodes(redis_url, 2, "--node-timeout", "2", "--resume-grace", "30") as (a, b):
        alice = connect(a.address)
        welcome = alice.hello("alice")
        bob = connect(b.address)
        bob.hello("bob")
        a.proc.send_signal(signal.SIGSTOP)  # alive, but its heartbeat stops
        try:
            until(bob, "away", "alice", timeout=10)
        finally:
            a.proc.send_signal(signal.SIGCONT)
        # Node a learns at its next beat that its users were handed over: it closes their
        # connections (they would otherwise be online here and away everywhere else).
        bye = next(m for m in drain(alice, 5.0) if m["type"] == "bye")
        assert "resume" in bye["reason"]
        again = connect(a.address)
        again.send(type="hello", name="alice", resume=welcome["session"], after=welcome["seq"])
        again.expect("welcome", name="alice", resumed=True)
        until(bob, "back", "alice")
        for client in (alice, bob, again):
            client.close()


HOSTILE_TEXTS = [
    '"]},{"seq":1,"to":"*"}',  # JSON that would end a stored message early if not escaped
    "m[1,2,\"x\",3,\"*\",null,\"forged\"]",  # a forged publication's shape
    "redis.call('FLUSHALL') -- \r\n*1\r\n$8\r\nFLUSHALL\r\n",  # Lua and RESP in the text
    "\U0001f600 emoji, \u2028 a line separator and \\u0000 an escape",
    "é" * 4_000,  # the longest text, none of it ASCII
]


def test_hostile_texts_cross_nodes_intact_and_are_found(
    redis_url: str, connect: Connect
) -> None:
    with nodes(redis_url, 2) as (a, b):
        alice = connect(a.address)
        alice.hello("alice")
        bob = connect(b.address)
        bob.hello("bob")
        for text in HOSTILE_TEXTS:
            assert alice.request("send", to="*", text=text)["type"] == "sent"
            assert alice.request("send", to="bob", text=text)["type"] == "sent"
        got = messages(bob, 2 * len(HOSTILE_TEXTS))
        assert [m["text"] for m in got] == [t for t in HOSTILE_TEXTS for _ in (1, 2)]
        assert bob.users() == ["alice", "bob"]  # the room's state is untouched
        history = bob.request("history", **{"with": "alice", "limit": 50})["messages"]
        assert [m["text"] for m in history] == HOSTILE_TEXTS
        found = bob.request("search", q="FLUSHALL")["messages"]
        assert len(found) == 2
        assert bob.request("search", q="é" * 10)["messages"] == []  # a word is whole
        assert [m["text"] for m in bob.request("search", q="é" * 200)["messages"]] == []
        assert bob.request("search", q="é" * 201)["code"] == "bad_request"  # q: 1-200


def test_the_per_address_limit_holds_across_nodes(redis_url: str, connect: Connect) -> None:
    # (a flag given again wins: nodes() switches the limit off by default)
    with nodes(redis_url, 2, "--max-clients-per-ip", "2") as (a, b):
        first = connect(a.address, source="127.0.0.5")
        first.hello("one")
        second = connect(b.address, source="127.0.0.5")
        second.hello("two")
        third = connect(a.address, source="127.0.0.5")
        third.send(type="hello", name="three")
        assert third.expect("error")["code"] == "too_many_from_address"
        other = connect(b.address, source="127.0.0.6")
        other.hello("elsewhere")  # another address is not counted
        assert second.request("exit")["type"] == "bye"  # a place is freed on the other node
        wait_until(lambda: "two" not in other.users())
        third.hello("three")
