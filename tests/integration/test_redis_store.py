"""What only the Redis store and room do: shared by nodes, retention, a send stored once."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator

import pytest
import redis as redis_py

from tcp_server.redis_keys import Keys
from tcp_server.redis_store import REDIS_SEARCH_SCAN, RedisStore, _Send
from tcp_server.store import NewMessage, Retention, SessionRecord, StoredMessage, StoreError

_tokens = itertools.count(1)


@pytest.fixture
def two(redis_url: str) -> Iterator[tuple[RedisStore, RedisStore]]:
    """Two nodes' stores on one Redis."""
    a, b = RedisStore(redis_url, "a"), RedisStore(redis_url, "b")
    try:
        yield a, b
    finally:
        a.close()
        b.close()


def session(store: RedisStore, name: str) -> tuple[SessionRecord, str]:
    token = f"token-{next(_tokens)}"
    return store.open_session(name, token, "127.0.0.1", 4000, "tcp"), token


def say(store: RedisStore, sender: SessionRecord, text: str = "hi",
        to: SessionRecord | None = None, ts: float = 1.0) -> StoredMessage:
    return store.append(NewMessage(ts, sender.name, sender.id, "*" if to is None else to.name,
                                   None if to is None else to.id, text))


def test_sessions_and_seqs_are_shared_by_every_node(two: tuple[RedisStore, RedisStore]) -> None:
    a, b = two
    alice, token = session(a, "alice")
    bob, _ = session(b, "bob")
    assert bob.id != alice.id
    assert [say(a, alice).seq, say(b, bob).seq, say(a, alice, to=bob).seq] == [1, 2, 3]
    found = b.find_session(token)  # a session resumes on any node
    assert found is not None
    assert (found.id, found.name) == (alice.id, "alice")
    assert [m.seq for page in b.missed(found, 0) for m in page] == [2]
    b.end_session(alice.id)
    assert a.find_session(token) is None


def test_concurrent_sends_on_two_nodes_get_dense_unique_seqs(
    two: tuple[RedisStore, RedisStore]
) -> None:
    a, b = two
    alice, _ = session(a, "alice")
    seqs: list[int] = []
    lock = threading.Lock()

    def send_many(store: RedisStore) -> None:
        for _ in range(200):
            seq = say(store, alice).seq
            with lock:
                seqs.append(seq)

    threads = [threading.Thread(target=send_many, args=(s,)) for s in (a, b, a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(seqs) == list(range(1, 801))


def test_a_send_retried_after_a_lost_answer_is_stored_once(redis_url: str) -> None:
    store = RedisStore(redis_url, "a")
    try:
        alice, _ = session(store, "alice")
        message = NewMessage(1.0, "alice", alice.id, "*", None, "once")
        send = _Send("a/1/7", message, lambda result: None)
        first = store._run_sends([send])
        again = store._run_sends([send])  # what the writer does when a pipeline failed
        assert first == again == [1]
        assert store.last_seq() == 1
        assert [m.text for m in store.history(alice.id, "*", None, 10)[0]] == ["once"]
    finally:
        store.close()


def test_max_messages_prunes_the_oldest_from_history_and_replay(redis_url: str) -> None:
    store = RedisStore(redis_url, "a", retention=Retention(max_messages=5, max_days=0))
    try:
        alice, _ = session(store, "alice")
        bob, _ = session(store, "bob")
        for n in range(12):
            say(store, bob, f"m{n}", to=alice if n % 2 else None)
        assert store.prune() == 7
        assert store.pruned_upto() == 7
        history, more = store.history(alice.id, "*", None, 50)
        assert [m.seq for m in history] == [9, 11]
        assert not more
        assert [m.seq for page in store.missed(alice, 0) for m in page] == [8, 9, 10, 11, 12]
        assert [m.seq for m in store.history(alice.id, "bob", None, 50)[0]] == [8, 10, 12]
    finally:
        store.close()


def test_max_days_prunes_by_the_injected_clock(redis_url: str) -> None:
    now = [1_000_000.0]
    store = RedisStore(redis_url, "a", retention=Retention(max_messages=0, max_days=1),
                       clock=lambda: now[0])
    try:
        alice, _ = session(store, "alice")
        for ts in (10.0, 20.0, 999_999.0):
            say(store, alice, ts=ts)
        assert store.prune() == 2
        assert [m.seq for m in store.history(alice.id, "*", None, 10)[0]] == [3]
    finally:
        store.close()


def test_search_reads_a_bounded_number_of_the_newest_messages(redis_url: str) -> None:
    store = RedisStore(redis_url, "a")
    try:
        alice, _ = session(store, "alice")
        say(store, alice, "needle in the oldest message")
        client = redis_py.Redis.from_url(redis_url)
        keys = Keys()
        # Filler written straight into the room's set: the scan bound, not send speed, is
        # what is tested.
        client.zadd(keys.all, {f'[{n},1.0,"alice",{alice.id},"*",null,"hay"]': n
                               for n in range(2, REDIS_SEARCH_SCAN + 2)})
        client.close()
        assert store.search(alice.id, ["needle"], 10) == []  # beyond the newest 10,000
        assert len(store.search(alice.id, ["hay"], 100)) == 100
    finally:
        store.close()


def test_redis_down_refuses_with_store_errors_and_never_hangs() -> None:
    from tests.support.redis_server import redis_server

    with redis_server() as server:
        store = RedisStore(server.url, "a")
        try:
            alice, _ = session(store, "alice")
            server.kill()
            with pytest.raises(StoreError):
                store.last_seq()
            with pytest.raises(StoreError):
                say(store, alice)  # tried again for a few seconds, then refused
            server.start()
            assert say(store, alice).seq == 1
        finally:
            store.close()


def test_sends_go_on_after_redis_forgot_its_scripts(redis_url: str) -> None:
    store = RedisStore(redis_url, "a")
    try:
        alice, _ = session(store, "alice")
        assert say(store, alice).seq == 1
        client = redis_py.Redis.from_url(redis_url)
        client.script_flush()  # what a Redis restart does to the script cache
        client.close()
        assert [say(store, alice).seq for _ in range(3)] == [2, 3, 4]
        assert store.last_seq() == 4
    finally:
        store.close()
