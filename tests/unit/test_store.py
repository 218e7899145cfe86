"""SqliteStore against a real database file in a temporary directory."""

from __future__ import annotations

import contextlib
import itertools
import logging
import shutil
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tcp_server import store as store_module
from tcp_server.protocol import Conversation, search_words
from tcp_server.store import (
    SECONDS_PER_DAY,
    NewMessage,
    RecentRate,
    Retention,
    SessionRecord,
    SqliteStore,
    StoreClosed,
    StoredMessage,
    StoreError,
    gather_delay,
    token_hash,
)
from tests.support.robustness import fd_kinds

_tokens = itertools.count(1)


@pytest.fixture(params=["sqlite", "redis"])
def store(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[SqliteStore]:
    """The tests taking this fixture hold for both stores of history and sessions (redis: the
    test session's redis-server, emptied for the test)."""
    opened: SqliteStore
    if request.param == "redis":
        from tcp_server.redis_store import RedisStore

        opened = RedisStore(request.getfixturevalue("redis_url"), "test-node")  # type: ignore[assignment]
    else:
        opened = SqliteStore(tmp_path)
    try:
        yield opened
    finally:
        opened.close()


def session(store: SqliteStore, name: str, token: str | None = None) -> SessionRecord:
    token = token if token is not None else f"token-{next(_tokens)}"
    return store.open_session(name, token, "127.0.0.1", 4000, "tcp")


def say(
    store: SqliteStore,
    sender: SessionRecord,
    text: str = "hi",
    to: SessionRecord | None = None,
    ts: float | None = None,
) -> StoredMessage:
    """Append a message to everyone, or a direct message to `to`; sent now unless `ts` says
    otherwise (an old one is deleted by the default retention, at any of the writer's prunes:
    one runs as a store opens)."""
    return store.append(NewMessage(
        ts=time.time() if ts is None else ts,
        sender=sender.name,
        sender_session=sender.id,
        to="*" if to is None else to.name,
        recipient_session=None if to is None else to.id,
        text=text,
    ))


def seqs(messages: list[StoredMessage]) -> list[int]:
    return [m.seq for m in messages]


def replayed(store: SqliteStore, record: SessionRecord, after: int) -> list[list[int]]:
    return [seqs(page) for page in store.missed(record, after)]


# --- seq and durability ----------------------------------------------------------------------


def test_seq_starts_at_one_and_strictly_increases(store: SqliteStore) -> None:
    alice = session(store, "alice")
    assert store.last_seq() == 0
    first, second, third = say(store, alice), say(store, alice, to=alice), say(store, alice)
    assert (first.seq, second.seq, third.seq) == (1, 2, 3)
    assert store.last_seq() == 3


def test_append_returns_the_stored_message(store: SqliteStore) -> None:
    alice, bob = session(store, "alice"), session(store, "bob")
    message = say(store, alice, "é 😀", to=bob, ts=12.5)
    assert message == StoredMessage(1, 12.5, "alice", alice.id, "bob", bob.id, "é 😀")


def test_messages_and_last_seq_survive_close_and_reopen(tmp_path: Path) -> None:
    first = SqliteStore(tmp_path)
    alice = session(first, "alice")
    for text in ["one", "two", "three"]:
        say(first, alice, text)
    first.close()
    second = SqliteStore(tmp_path)
    try:
        assert second.last_seq() == 3
        messages, _ = second.history(alice.id, "*", None, 10)
        assert [m.text for m in messages] == ["one", "two", "three"]
        assert say(second, alice).seq == 4
    finally:
        second.close()


def test_on_commit_gets_committed_messages_in_seq_order_before_append_returns(
    tmp_path: Path,
) -> None:
    committed: list[StoredMessage] = []
    opened = SqliteStore(tmp_path, on_commit=committed.extend)
    try:
        alice = session(opened, "alice")
        for n in range(1, 4):
            message = say(opened, alice, f"m{n}")
            assert committed[-1] == message  # delivered before its sender is answered
        assert seqs(committed) == [1, 2, 3]
    finally:
        opened.close()


@pytest.mark.parametrize(("rate", "queued", "age", "waits", "delay"), [
    (1_000.0, 1, 0.0, False, 0.0),  # below GATHER_MIN_RATE: commit at once
    (5_000.0, 1, 0.0, False, 0.0005),  # paced: wait up to GATHER_S after the oldest
    (5_000.0, 3, 0.0002, False, 0.0003),  # counted from the oldest job
    (5_000.0, 3, 0.001, False, 0.0),  # the oldest waited long enough
    (5_000.0, 32, 0.0, False, 0.0),  # a full batch
    (5_000.0, 1, 0.0, True, 0.0),  # a thread is blocked on one of the jobs
    (128_000.0, 1, 0.0, False, 0.00025),  # GATHER_JOBS arrive sooner than GATHER_S
])
def test_a_commit_waits_for_more_jobs_only_under_load(
    rate: float, queued: int, age: float, waits: bool, delay: float
) -> None:
    assert gather_delay(rate, queued, age, waits) == pytest.approx(delay)


def test_the_recent_rate_counts_events_over_time_not_per_commit() -> None:
    rate = RecentRate(0.1)
    now = 100.0
    for _ in range(2_000):  # 2,000 a second for a second, in pairs 1 us apart
        rate.add(1, now)
        rate.add(1, now + 1e-6)
        now += 0.001
    assert rate.per_second(now) == pytest.approx(2_000, rel=0.05)
    assert rate.per_second(now + 0.5) < 20  # a quiet moment lowers it at once


def test_under_load_the_sends_of_several_readers_are_committed_together(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    commits: list[list[int]] = []
    opened = SqliteStore(tmp_path, on_commit=lambda messages: commits.append(seqs(messages)))
    try:
        alice = session(opened, "alice")
        monkeypatch.setattr(store_module, "GATHER_S", 2.0)  # a window no scheduler misses
        monkeypatch.setattr(store_module, "GATHER_JOBS", 1_000)
        opened._rate = RecentRate(100.0)  # as if 1,000 jobs a second came in lately
        opened._rate.add(100_000, time.monotonic())
        monkeypatch.setattr(store_module, "GATHER_MIN_RATE", 500.0)
        answered = threading.Semaphore(0)

        def send(text: str) -> None:
            opened.submit(NewMessage(ts=time.time(), sender="alice", sender_session=alice.id,
                                     to="*", recipient_session=None, text=text),
                          lambda results: answered.release())

        first = threading.Thread(target=send, args=("first",))
        first.start()
        deadline = time.monotonic() + 5.0
        while not opened._committing.locked():  # the first reader waits, committing
            assert time.monotonic() < deadline, "the first send was not being committed"
            time.sleep(0.001)
        for n in range(4):  # other readers queue theirs and go on
            send(f"more {n}")
        for _ in range(5):
            assert answered.acquire(timeout=10.0)
        first.join(10.0)
        assert commits == [[1, 2, 3, 4, 5]]
    finally:
        opened.close()


def test_on_commit_sees_a_message_already_readable_from_the_store(tmp_path: Path) -> None:
    visible: list[list[int]] = []
    opened: SqliteStore

    def on_commit(messages: list[StoredMessage]) -> None:
        found, _ = opened.history(messages[-1].sender_session, "*", None, 10)
        visible.append(seqs(found))

    opened = SqliteStore(tmp_path, on_commit=on_commit)
    try:
        alice = session(opened, "alice")
        say(opened, alice)
        say(opened, alice)
        assert visible == [[1], [1, 2]]
    finally:
        opened.close()


def test_a_failing_on_commit_does_not_stop_the_store(tmp_path: Path) -> None:
    def on_commit(messages: list[StoredMessage]) -> None:
        raise RuntimeError("a delivery failed")

    opened = SqliteStore(tmp_path, on_commit=on_commit)
    try:
        alice = session(opened, "alice")
        assert say(opened, alice).seq == 1
        assert say(opened, alice).seq == 2
    finally:
        opened.close()


def test_concurrent_appends_get_unique_dense_seqs_delivered_in_seq_order(tmp_path: Path) -> None:
    threads_n, per_thread = 8, 40
    committed: list[int] = []
    opened = SqliteStore(tmp_path, on_commit=lambda ms: committed.extend(m.seq for m in ms))
    try:
        senders = [session(opened, f"user{i}") for i in range(threads_n)]
        results: dict[int, list[int]] = {}
        start = threading.Barrier(threads_n)

        def run(index: int) -> None:
            start.wait(5)
            results[index] = [
                say(opened, senders[index], f"{index}-{n}").seq for n in range(per_thread)
            ]

        threads = [
            threading.Thread(target=run, args=(i,), name=f"append-{i}") for i in range(threads_n)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(20)
        assert not any(thread.is_alive() for thread in threads)
        total = threads_n * per_thread
        every = sorted(seq for got in results.values() for seq in got)
        assert every == list(range(1, total + 1))
        assert committed == list(range(1, total + 1))
        for got in results.values():
            assert got == sorted(got)
        assert opened.last_seq() == total
    finally:
        opened.close()


# --- sessions --------------------------------------------------------------------------------


def test_open_session_starts_at_the_current_seq(store: SqliteStore) -> None:
    alice = session(store, "alice")
    say(store, alice)
    say(store, alice)
    bob = store.open_session("Bob", "secret", "::1", 5, "web")
    assert bob == SessionRecord(bob.id, "Bob", "::1", 5, "web", 2, 2, None)
    assert bob.id != alice.id


def test_find_session_by_token(store: SqliteStore) -> None:
    alice = session(store, "alice", token="tok-a")
    session(store, "bob", token="tok-b")
    assert store.find_session("tok-a") == alice
    assert store.find_session("tok-c") is None
    assert store.find_session("TOK-A") is None


def test_the_token_is_never_written_to_the_database_files(tmp_path: Path) -> None:
    token = "m2VzZWNyZXQtdG9rZW4tMTIzNDU2Nzg5"
    opened = SqliteStore(tmp_path)
    try:
        alice = session(opened, "alice", token=token)
        opened.set_away(alice.id, 5.0, 0)
        assert opened.find_session(token) is not None
        files = sorted(tmp_path.iterdir())
        assert files  # the database, and in WAL mode its -wal and -shm files
        written = b"".join(path.read_bytes() for path in files)
        assert token_hash(token) in written  # the check reads what the store wrote
        assert token.encode() not in written
    finally:
        opened.close()
    after_close = b"".join(path.read_bytes() for path in tmp_path.iterdir())
    assert token.encode() not in after_close


def test_end_session_kills_the_token(store: SqliteStore) -> None:
    alice = session(store, "alice", token="tok-a")
    store.end_session(alice.id)
    assert store.find_session("tok-a") is None
    assert store.open_sessions() == []


def test_open_sessions_survive_a_reopen_and_ended_ones_do_not(tmp_path: Path) -> None:
    first = SqliteStore(tmp_path)
    alice, bob, carol = (session(first, name) for name in ["alice", "bob", "carol"])
    first.end_session(bob.id)
    first.close()
    second = SqliteStore(tmp_path)
    try:
        assert second.open_sessions() == [alice, carol]
        assert second.find_session("nope") is None
    finally:
        second.close()


def test_set_away_records_since_and_delivered_seq_which_never_moves_back(
    store: SqliteStore,
) -> None:
    alice = session(store, "alice", token="tok-a")
    for _ in range(5):
        say(store, alice)
    store.set_away(alice.id, 100.0, 4)
    found = store.find_session("tok-a")
    assert found is not None
    assert (found.away_since, found.delivered_seq) == (100.0, 4)
    store.set_away(alice.id, 200.0, 2)
    found = store.find_session("tok-a")
    assert found is not None
    assert (found.away_since, found.delivered_seq) == (200.0, 4)


def test_set_away_many_records_every_session_in_one_call_and_never_moves_a_seq_back(
    store: SqliteStore,
) -> None:
    alice = session(store, "alice", token="tok-a")
    bob = session(store, "bob", token="tok-b")
    carol = session(store, "carol", token="tok-c")
    for _ in range(5):
        say(store, carol)
    store.set_away(bob.id, 50.0, 5)
    store.set_away_many([(alice.id, 100.0, 3), (bob.id, 100.0, 2), (987_654, 100.0, 1)])
    store.set_away_many([])
    found = {name: store.find_session(f"tok-{name[0]}") for name in ("alice", "bob", "carol")}
    assert {name: (r.away_since, r.delivered_seq) for name, r in found.items() if r} == {
        "alice": (100.0, 3), "bob": (100.0, 5), "carol": (None, 0)}


def test_reconnect_session_records_the_new_address_and_clears_away(store: SqliteStore) -> None:
    alice = session(store, "alice", token="tok-a")
    store.set_away(alice.id, 100.0, 0)
    store.reconnect_session(alice.id, "10.0.0.9", 777, "web")
    found = store.find_session("tok-a")
    assert found is not None
    assert (found.ip, found.port, found.via, found.away_since) == ("10.0.0.9", 777, "web", None)


# --- missed (the replay of a resume) -----------------------------------------------------------


def test_missed_holds_messages_to_everyone_from_others_and_direct_messages_to_the_session(
    store: SqliteStore,
) -> None:
    alice, bob, carol = session(store, "alice"), session(store, "bob"), session(store, "carol")
    say(store, bob)  # 1
    say(store, alice)  # 2: alice's own
    say(store, bob, to=alice)  # 3
    say(store, bob, to=carol)  # 4: not alice's
    say(store, alice, to=bob)  # 5: sent by alice, not received
    say(store, carol)  # 6
    assert replayed(store, alice, 0) == [[1, 3, 6]]
    assert replayed(store, alice, 3) == [[6]]
    assert replayed(store, alice, 6) == []


def test_missed_holds_no_message_to_everyone_from_before_the_session_began(
    store: SqliteStore,
) -> None:
    bob = session(store, "bob")
    say(store, bob)  # 1
    say(store, bob)  # 2
    alice = session(store, "alice")  # start_seq 2
    say(store, bob, to=alice)  # 3
    say(store, bob)  # 4
    assert alice.start_seq == 2
    assert replayed(store, alice, 0) == [[3, 4]]


def test_missed_comes_in_pages_in_seq_order_each_message_once(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_module, "REPLAY_PAGE", 4)
    alice, bob = session(store, "alice"), session(store, "bob")
    expected = []
    for n in range(15):
        if n % 3 == 0:
            expected.append(say(store, bob, to=alice).seq)
        elif n % 3 == 1:
            expected.append(say(store, bob).seq)
        else:
            say(store, alice)  # alice's own: never replayed to her
    pages = replayed(store, alice, 0)
    assert len(pages) == 3
    assert all(len(page) <= 4 for page in pages)
    assert [seq for page in pages for seq in page] == expected


def test_missed_pages_of_exactly_a_page_end_without_an_empty_page(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_module, "REPLAY_PAGE", 3)
    alice, bob = session(store, "alice"), session(store, "bob")
    for _ in range(6):
        say(store, bob)
    assert replayed(store, alice, 0) == [[1, 2, 3], [4, 5, 6]]


def test_missed_with_the_real_page_size_returns_every_message_once(store: SqliteStore) -> None:
    alice, bob = session(store, "alice"), session(store, "bob")
    total = store_module.REPLAY_PAGE + 20
    for n in range(total):
        say(store, bob, to=alice if n % 2 else None)
    pages = replayed(store, alice, 0)
    assert len(pages) == 2
    assert [seq for page in pages for seq in page] == list(range(1, total + 1))


# --- history ---------------------------------------------------------------------------------


def test_history_of_everyone_pages_backwards_oldest_first(store: SqliteStore) -> None:
    alice, bob = session(store, "alice"), session(store, "bob")
    for n in range(7):
        say(store, alice if n % 2 else bob, f"m{n}")
    say(store, alice, "private", to=bob)  # 8: not to everyone
    page, more = store.history(alice.id, "*", None, 3)
    assert (seqs(page), more) == ([5, 6, 7], True)
    page, more = store.history(alice.id, "*", page[0].seq, 3)
    assert (seqs(page), more) == ([2, 3, 4], True)
    page, more = store.history(alice.id, "*", page[0].seq, 3)
    assert (seqs(page), more) == ([1], False)
    page, more = store.history(alice.id, "*", None, 7)
    assert (seqs(page), more) == ([1, 2, 3, 4, 5, 6, 7], False)


def test_history_of_everyone_includes_messages_from_before_the_session(
    store: SqliteStore,
) -> None:
    bob = session(store, "bob")
    say(store, bob, "early")
    alice = session(store, "alice")
    page, more = store.history(alice.id, "*", None, 50)
    assert ([m.text for m in page], more) == (["early"], False)


def test_history_of_an_empty_conversation(store: SqliteStore) -> None:
    alice = session(store, "alice")
    assert store.history(alice.id, "*", None, 50) == ([], False)
    assert store.history(alice.id, "bob", None, 50) == ([], False)


def test_history_with_a_name_holds_both_directions_paged(store: SqliteStore) -> None:
    alice, bob, carol = session(store, "alice"), session(store, "Bob"), session(store, "carol")
    say(store, alice, "a1", to=bob)  # 1
    say(store, bob, "b1", to=alice)  # 2
    say(store, carol, "c1", to=alice)  # 3: another conversation
    say(store, bob, "b-everyone")  # 4: to everyone
    say(store, bob, "b2", to=alice)  # 5
    say(store, bob, "b-carol", to=carol)  # 6: bob and carol
    say(store, alice, "a2", to=bob)  # 7
    page, more = store.history(alice.id, "bob", None, 2)
    assert (seqs(page), more) == ([5, 7], True)
    page, more = store.history(alice.id, "BOB", page[0].seq, 2)
    assert (seqs(page), more) == ([1, 2], False)
    page, more = store.history(bob.id, "alice", None, 10)
    assert (seqs(page), more) == ([1, 2, 5, 7], False)


def test_a_later_session_with_the_same_name_does_not_see_the_earlier_direct_messages(
    store: SqliteStore,
) -> None:
    alice, bob = session(store, "alice"), session(store, "bob")
    say(store, alice, "secret", to=bob)
    say(store, bob, "secret reply", to=alice)
    say(store, bob, "public")
    store.end_session(bob.id)
    new_bob = session(store, "bob")
    assert store.history(new_bob.id, "alice", None, 50) == ([], False)
    assert store.search(new_bob.id, ["secret"], 20) == []
    assert [c.with_ for c in store.conversations(new_bob)] == ["*"]
    assert replayed(store, new_bob, 0) == []
    page, _ = store.history(new_bob.id, "*", None, 50)
    assert [m.text for m in page] == ["public"]


# --- search ----------------------------------------------------------------------------------


def found(store: SqliteStore, record: SessionRecord, q: str, limit: int = 20) -> list[str]:
    return [m.text for m in store.search(record.id, search_words(q), limit)]


def test_search_needs_every_word_case_insensitively_newest_first(store: SqliteStore) -> None:
    alice = session(store, "alice")
    say(store, alice, "Lunch on Friday?")
    say(store, alice, "lunch today")
    say(store, alice, "friday it is")
    say(store, alice, "FRIDAY LUNCH then")
    assert found(store, alice, "lunch friday") == ["FRIDAY LUNCH then", "Lunch on Friday?"]
    assert found(store, alice, "LUNCH") == ["FRIDAY LUNCH then", "lunch today", "Lunch on Friday?"]
    assert found(store, alice, "lunch", limit=1) == ["FRIDAY LUNCH then"]
    assert found(store, alice, "lunches") == []  # whole words


def test_search_shows_only_what_the_session_may_see(store: SqliteStore) -> None:
    alice, bob, carol = session(store, "alice"), session(store, "bob"), session(store, "carol")
    say(store, bob, "word to everyone")
    say(store, bob, "word to alice", to=alice)
    say(store, alice, "word to bob", to=bob)
    say(store, bob, "word to carol", to=carol)
    say(store, carol, "word from carol to bob", to=bob)
    assert found(store, alice, "word") == ["word to bob", "word to alice", "word to everyone"]
    assert found(store, carol, "word") == [
        "word from carol to bob", "word to carol", "word to everyone"
    ]


@pytest.mark.parametrize(
    ("q", "expected"),
    [
        ('"', []),
        ('"lunch', ["lunch friday"]),
        ("lunch*", ["lunch friday"]),  # not a prefix query: "lunchtime" stays out
        ("*", []),
        ("NEAR", ["near and or not text"]),
        ("NEAR(lunch friday)", []),
        ("lunch OR near", []),
        ("lunch AND", []),
        ("and or", ["near and or not text"]),
        ("-lunch", ["lunch friday"]),
        ("lunch -friday", ["lunch friday"]),
        ("(lunch", ["lunch friday"]),
        ("text:lunch", []),  # not a column filter
        ("lunch:", ["lunch friday"]),
        ("^lunch", ["lunch friday"]),
        ('" OR "" ) (', ["near and or not text"]),
        ("'; DROP TABLE messages; --", []),
        ("{text}: lunch", []),
    ],
)
def test_search_treats_query_syntax_as_plain_text(
    store: SqliteStore, q: str, expected: list[str]
) -> None:
    alice = session(store, "alice")
    say(store, alice, "lunchtime")
    say(store, alice, "lunch friday")
    say(store, alice, "near and or not text")
    assert found(store, alice, q) == expected
    assert say(store, alice, "still writable").seq == 4


@pytest.mark.parametrize(
    "words",
    [['"'], ['"lunch"'], ["*"], ["-"], ["("], [":"], ["NEAR", "("], ['a"b'], ["lunch", '"']],
)
def test_search_words_with_fts_syntax_never_raise(
    store: SqliteStore, words: list[str]
) -> None:
    alice = session(store, "alice")
    say(store, alice, "lunch a b")
    results = store.search(alice.id, words, 20)
    assert all(m.text == "lunch a b" for m in results)


def test_search_for_operator_words_finds_them_as_words(store: SqliteStore) -> None:
    alice = session(store, "alice")
    say(store, alice, "this AND that")
    say(store, alice, "near or far")
    say(store, alice, "nothing here")
    assert found(store, alice, "and") == ["this AND that"]
    assert found(store, alice, "NEAR OR") == ["near or far"]
    assert found(store, alice, "NOT") == []


def test_search_without_words_finds_nothing(store: SqliteStore) -> None:
    alice = session(store, "alice")
    say(store, alice, "!!! ???")
    assert found(store, alice, "!!!") == []
    assert store.search(alice.id, [], 20) == []


# --- read markers and conversations ------------------------------------------------------------


def test_mark_read_moves_forward_and_never_back(store: SqliteStore) -> None:
    alice, bob = session(store, "alice"), session(store, "bob")
    for _ in range(5):
        say(store, bob)
    newcomer = session(store, "newcomer")  # starts after seq 5
    for _ in range(5):
        say(store, bob)
    assert store.mark_read(alice.id, "*", 8) == 8
    assert store.mark_read(alice.id, "*", 9) == 9
    assert store.mark_read(alice.id, "*", 7) == 9
    assert store.mark_read(newcomer.id, "*", 7) == 7


def test_mark_read_below_every_message_answers_the_marker_as_it_is(store: SqliteStore) -> None:
    alice, bob = session(store, "alice"), session(store, "bob")
    for _ in range(3):
        say(store, bob)
    assert store.mark_read(alice.id, "*", 3) == 3
    assert store.mark_read(alice.id, "*", 0) == 3


def test_mark_read_does_not_move_a_new_sessions_marker_for_everyone_back(
    store: SqliteStore,
) -> None:
    bob = session(store, "bob")
    for _ in range(5):
        say(store, bob)
    alice = session(store, "alice")  # its "*" marker starts at 5
    assert store.mark_read(alice.id, "*", 2) == 5
    assert store.conversations(alice)[0] == Conversation("*", 5, 5, 0)


def test_mark_read_clamps_to_the_conversations_last_seq(store: SqliteStore) -> None:
    alice, bob, carol = session(store, "alice"), session(store, "bob"), session(store, "carol")
    say(store, bob)  # 1
    say(store, bob, to=alice)  # 2
    say(store, bob)  # 3
    say(store, carol, to=alice)  # 4
    assert store.mark_read(alice.id, "*", 1_000) == 3
    assert store.mark_read(alice.id, "bob", 1_000) == 2
    assert store.mark_read(alice.id, "Carol", 2**63 - 1) == 4


def test_mark_read_of_an_empty_conversation_is_zero(store: SqliteStore) -> None:
    alice, bob = session(store, "alice"), session(store, "bob")
    assert store.mark_read(alice.id, "*", 10) == 0
    say(store, bob, to=alice)
    assert store.mark_read(alice.id, "carol", 10) == 0
    assert store.mark_read(alice.id, "*", 10) == 0


def test_conversations_of_a_new_session_list_everyone_with_nothing_unread(
    store: SqliteStore,
) -> None:
    bob = session(store, "bob")
    assert store.conversations(bob) == [Conversation("*", 0, 0, 0)]
    for _ in range(3):
        say(store, bob)
    alice = session(store, "alice")
    assert store.conversations(alice) == [Conversation("*", 3, 3, 0)]
    say(store, bob)
    assert store.conversations(alice) == [Conversation("*", 4, 3, 1)]


def test_conversations_list_peers_most_recent_first_with_unread_counts(
    store: SqliteStore,
) -> None:
    alice, bob, carol = session(store, "alice"), session(store, "bob"), session(store, "carol")
    say(store, bob, to=alice)  # 1
    say(store, bob, to=alice)  # 2
    say(store, alice, to=bob)  # 3: alice's own: never unread
    say(store, carol)  # 4
    say(store, alice, to=carol)  # 5: a conversation alice started
    say(store, alice)  # 6
    assert store.conversations(alice) == [
        Conversation("*", 6, 0, 1),
        Conversation("carol", 5, 0, 0),
        Conversation("bob", 3, 0, 2),
    ]
    store.mark_read(alice.id, "bob", 1)
    store.mark_read(alice.id, "*", 6)
    assert store.conversations(alice) == [
        Conversation("*", 6, 6, 0),
        Conversation("carol", 5, 0, 0),
        Conversation("bob", 3, 1, 1),
    ]


def test_conversations_show_the_peers_name_as_last_written(store: SqliteStore) -> None:
    alice, bob = session(store, "alice"), session(store, "Bob")
    say(store, alice, to=bob)
    say(store, bob, to=alice)
    store.end_session(bob.id)
    new_bob = session(store, "BOB")
    say(store, alice, to=new_bob)
    assert [c.with_ for c in store.conversations(alice)] == ["BOB", "*"]


def test_read_markers_survive_a_reopen(tmp_path: Path) -> None:
    first = SqliteStore(tmp_path)
    alice, bob = session(first, "alice"), session(first, "bob")
    say(first, bob, to=alice)
    say(first, bob, to=alice)
    first.mark_read(alice.id, "bob", 1)
    first.close()
    second = SqliteStore(tmp_path)
    try:
        assert second.conversations(alice)[0] == Conversation("bob", 2, 1, 1)
    finally:
        second.close()


# --- retention -------------------------------------------------------------------------------


def test_max_messages_prunes_the_oldest(tmp_path: Path) -> None:
    opened = SqliteStore(tmp_path, retention=Retention(max_messages=3, max_days=0))
    try:
        alice = session(opened, "alice")
        for n in range(8):
            say(opened, alice, f"m{n}")
        # The writer prunes after its first commit, then once a minute: it is idle now.
        assert opened.prune() == 5
        assert opened.pruned_upto() == 5
        page, more = opened.history(alice.id, "*", None, 50)
        assert (seqs(page), more) == ([6, 7, 8], False)
        assert opened.prune() == 0
        assert opened.pruned_upto() == 5
        say(opened, alice)
        assert opened.prune() == 1
        assert opened.pruned_upto() == 6
    finally:
        opened.close()


def test_pruned_messages_leave_search_and_replay(tmp_path: Path) -> None:
    opened = SqliteStore(tmp_path, retention=Retention(max_messages=2, max_days=0))
    try:
        alice, bob = session(opened, "alice"), session(opened, "bob")
        for word in ["apple", "banana", "cherry", "damson"]:
            say(opened, bob, word)
        opened.prune()
        assert found(opened, alice, "apple") == []
        assert found(opened, alice, "cherry") == ["cherry"]
        assert replayed(opened, alice, 0) == [[3, 4]]
    finally:
        opened.close()


def test_max_days_prunes_what_is_older_by_the_injected_clock(tmp_path: Path) -> None:
    now = [10.0 * SECONDS_PER_DAY]
    opened = SqliteStore(
        tmp_path, retention=Retention(max_messages=0, max_days=2), clock=lambda: now[0]
    )
    try:
        alice = session(opened, "alice")
        day = float(SECONDS_PER_DAY)
        for ts in [5 * day, 7 * day, 8.5 * day, 9 * day]:
            say(opened, alice, ts=ts)
        assert opened.prune() == 2  # older than day 8
        assert opened.pruned_upto() == 2
        page, _ = opened.history(alice.id, "*", None, 50)
        assert seqs(page) == [3, 4]
        now[0] = 11.5 * day
        assert opened.prune() == 2
        assert opened.pruned_upto() == 4
        assert opened.history(alice.id, "*", None, 50) == ([], False)
    finally:
        opened.close()


def test_no_retention_limit_keeps_everything(tmp_path: Path) -> None:
    opened = SqliteStore(
        tmp_path, retention=Retention(max_messages=0, max_days=0), clock=lambda: 1e12
    )
    try:
        alice = session(opened, "alice")
        for _ in range(3):
            say(opened, alice, ts=0.0)
        assert opened.prune() == 0
        assert opened.pruned_upto() == 0
    finally:
        opened.close()


def test_seq_is_never_reused_after_everything_was_pruned_and_reopened(tmp_path: Path) -> None:
    retention = Retention(max_messages=0, max_days=1)
    first = SqliteStore(tmp_path, retention=retention, clock=lambda: 10.0 * SECONDS_PER_DAY)
    alice = session(first, "alice")
    for _ in range(3):
        say(first, alice, ts=0.0)
    assert first.prune() == 3
    first.close()
    second = SqliteStore(tmp_path, retention=retention, clock=lambda: 10.0 * SECONDS_PER_DAY)
    try:
        assert (second.last_seq(), second.pruned_upto()) == (3, 3)
        assert say(second, alice, ts=10.0 * SECONDS_PER_DAY).seq == 4
    finally:
        second.close()


# --- the search index, written after the commit --------------------------------------------


def _indexed_upto(path: Path) -> int:
    with contextlib.closing(sqlite3.connect(path / store_module.DB_FILE)) as db, db:
        row = db.execute("SELECT value FROM meta WHERE key = 'indexed_upto'").fetchone()
    return int(row[0]) if row else 0


def _fts_integrity_check(path: Path) -> None:
    # Raises if the index is corrupt.
    with contextlib.closing(sqlite3.connect(path / store_module.DB_FILE)) as db, db:
        db.execute("INSERT INTO messages_fts (messages_fts) VALUES ('integrity-check')")


@pytest.fixture
def index_never_due(monkeypatch: pytest.MonkeyPatch) -> None:
    """The writer thread does not index by itself (only search, prune and close do)."""
    monkeypatch.setattr(store_module, "INDEX_DELAY_S", 3_600.0)


@pytest.mark.usefixtures("index_never_due")
def test_search_finds_a_message_committed_but_not_yet_indexed(tmp_path: Path) -> None:
    opened = SqliteStore(tmp_path)
    try:
        alice = session(opened, "alice")
        say(opened, alice, "first words")
        assert _indexed_upto(tmp_path) == 0  # the commit did not index it
        assert found(opened, alice, "first") == ["first words"]
        say(opened, alice, "second words")
        assert found(opened, alice, "words") == ["second words", "first words"]
    finally:
        opened.close()


def test_the_writer_indexes_committed_messages_soon_after_their_commit(tmp_path: Path) -> None:
    opened = SqliteStore(tmp_path)
    try:
        alice = session(opened, "alice")
        for n in range(5):
            say(opened, alice, f"word{n}")
        deadline = time.monotonic() + 5.0
        while _indexed_upto(tmp_path) < 5 and time.monotonic() < deadline:
            time.sleep(store_module.INDEX_DELAY_S)
        assert _indexed_upto(tmp_path) == 5
    finally:
        opened.close()


@pytest.mark.usefixtures("index_never_due")
def test_what_a_kill_left_unindexed_is_indexed_at_the_next_start(tmp_path: Path) -> None:
    keep = Retention(max_messages=0, max_days=0)
    opened = SqliteStore(tmp_path, retention=keep)
    killed = tmp_path / "killed"
    try:
        alice = session(opened, "alice")
        for word in ["apple", "banana", "cherry"]:
            say(opened, alice, word)
        # The files as a SIGKILL leaves them: committed (in the WAL), not indexed.
        killed.mkdir()
        for path in tmp_path.iterdir():
            if path.is_file():
                shutil.copy(path, killed / path.name)
    finally:
        opened.close()
    assert _indexed_upto(killed) == 0
    reopened = SqliteStore(killed, retention=keep)
    try:
        assert _indexed_upto(killed) == 3
        assert found(reopened, alice, "banana") == ["banana"]
        assert reopened.last_seq() == 3
        _fts_integrity_check(killed)
    finally:
        reopened.close()


@pytest.mark.usefixtures("index_never_due")
def test_pruning_messages_not_yet_indexed_keeps_the_index_sound(tmp_path: Path) -> None:
    opened = SqliteStore(tmp_path, retention=Retention(max_messages=2, max_days=0))
    try:
        alice = session(opened, "alice")
        for word in ["apple", "banana", "cherry", "damson"]:
            say(opened, alice, word)
        assert opened.prune() == 2
        assert found(opened, alice, "apple") == []
        assert found(opened, alice, "damson") == ["damson"]
        _fts_integrity_check(tmp_path)
    finally:
        opened.close()


def test_last_seq_survives_a_restart_without_a_meta_write_per_commit(tmp_path: Path) -> None:
    opened = SqliteStore(tmp_path)
    alice = session(opened, "alice")
    for _ in range(4):
        say(opened, alice)
    opened.close()
    # As if killed before the index (which writes last_seq) caught up.
    with contextlib.closing(sqlite3.connect(tmp_path / store_module.DB_FILE)) as db, db:
        db.execute("DELETE FROM meta WHERE key = 'last_seq'")
    reopened = SqliteStore(tmp_path)
    try:
        assert reopened.last_seq() == 4
        assert say(reopened, alice).seq == 5
    finally:
        reopened.close()


# --- closing ---------------------------------------------------------------------------------


def test_a_closed_store_refuses_writes(tmp_path: Path) -> None:
    opened = SqliteStore(tmp_path)
    alice = session(opened, "alice")
    opened.close()
    opened.close()  # idempotent
    assert issubclass(StoreClosed, StoreError)
    with pytest.raises(StoreClosed):
        say(opened, alice)
    with pytest.raises(StoreClosed):
        session(opened, "bob")
    with pytest.raises(StoreClosed):
        opened.mark_read(alice.id, "*", 1)
    with pytest.raises(StoreClosed):
        opened.end_session(alice.id)


def in_thread(call: Callable[[], object], timeout: float = 1.0) -> list[object]:
    """Run `call` in a helper thread; [] when it has not returned within `timeout`.

    The thread is a daemon only so that a hung call cannot keep the test run from ending.
    """
    result: list[object] = []

    def run() -> None:
        try:
            result.append(call())
        except Exception as error:  # noqa: BLE001 - any error is an outcome the test checks
            result.append(error)

    thread = threading.Thread(target=run, name="store-call", daemon=True)
    thread.start()
    thread.join(timeout)
    return result


def test_a_write_failing_with_an_unexpected_error_fails_alone(tmp_path: Path) -> None:
    """SQLite's writer thread: one job's error (an integer SQLite cannot hold) fails that job
    alone. (Redis takes any seq as a score: nothing fails there.)"""
    store = SqliteStore(tmp_path)
    try:
        alice = session(store, "alice")
        (outcome,) = in_thread(lambda: store.mark_read(alice.id, "*", 2**64)) or ["hung"]
        assert isinstance(outcome, Exception)  # an error for this call, not a hang
        (message,) = in_thread(lambda: say(store, alice)) or ["hung"]
        assert isinstance(message, StoredMessage)
        assert message.seq == 1
    finally:
        store.close()


def test_close_ends_the_writer_and_checkpoint_threads(tmp_path: Path) -> None:
    before = set(threading.enumerate())
    opened = SqliteStore(tmp_path)
    started = [t for t in threading.enumerate() if t not in before]
    assert sorted(t.name for t in started) == ["store-checkpoint", "store-writer"]
    opened.close()
    assert not any(t.is_alive() for t in started)
    assert not (tmp_path / "chat.sqlite3-wal").exists() or (
        (tmp_path / "chat.sqlite3-wal").stat().st_size == 0
    )


def _wal_restarts(path: Path) -> int:
    """The WAL header's checkpoint sequence number: SQLite adds one each time the WAL file
    starts over from its beginning."""
    header = (path / "chat.sqlite3-wal").read_bytes()[:16]
    return int.from_bytes(header[12:16], "big") if len(header) == 16 else 0


def test_under_steady_load_and_reads_the_wal_starts_over_after_checkpoints(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Commits never pause here: a checkpoint alone always finds new frames when it ends, and
    # the WAL grew for as long as the load lasted (1 GB for 100,000 messages at 5,000 a second).
    # Reads never pause either: one begun before a copy keeps it short of the end, and one
    # still running at the next commit keeps the WAL from starting over.
    monkeypatch.setattr(store_module, "CHECKPOINT_EVERY_S", 0.02)
    opened = SqliteStore(tmp_path)
    senders = [session(opened, f"sender{i}") for i in range(3)]
    first = last = _wal_restarts(tmp_path)
    going = threading.Event()
    going.set()

    def send(sender: SessionRecord) -> None:
        while going.is_set():
            say(opened, sender, "a steady stream " * 20)

    def read(reader: SessionRecord) -> None:
        while going.is_set():
            opened.history(reader.id, "*", None, 50)
            for _page in opened.missed(reader, max(0, opened.last_seq() - 1_000)):
                pass

    threads = [threading.Thread(target=send, args=(s,)) for s in senders]
    threads += [threading.Thread(target=read, args=(s,)) for s in senders[:2]]
    try:
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:
            time.sleep(0.02)
            last = _wal_restarts(tmp_path)
            if last >= first + 10:
                break
    finally:
        going.clear()
        for thread in threads:
            thread.join(timeout=5.0)
        opened.close()
    assert last >= first + 10, f"the WAL started over {last - first} times in 10 s of load"


def test_close_closes_the_database_files_after_checkpoints_ran(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A statement left with a row pending (a PRAGMA's answer) kept SQLite from closing the
    # connection: its files stayed open until the store was garbage collected.
    monkeypatch.setattr(store_module, "CHECKPOINT_EVERY_S", 0.01)
    opened = SqliteStore(tmp_path)
    alice = session(opened, "alice")
    deadline = time.monotonic() + 0.3
    while time.monotonic() < deadline:  # commits with checkpoints in between
        say(opened, alice)
        time.sleep(0.005)
    opened.history(alice.id, "*", None, 10)
    time.sleep(0.2)  # the last thing the writer does: a checkpoint's end, with no commit after
    opened.close()
    assert [kind for kind in fd_kinds() if kind.startswith(str(tmp_path))] == []


def test_appends_racing_close_are_committed_or_refused_never_lost(tmp_path: Path) -> None:
    going = threading.Event()
    first = SqliteStore(tmp_path, on_commit=lambda ms: going.set() if ms[-1].seq >= 20 else None)
    alice = session(first, "alice")
    acknowledged: list[int] = []
    refused: list[BaseException] = []
    started = threading.Barrier(5)

    def keep_saying() -> None:
        started.wait(5)
        while True:
            try:
                acknowledged.append(say(first, alice).seq)
            except StoreClosed as error:
                refused.append(error)
                return

    threads = [threading.Thread(target=keep_saying, name=f"say-{i}") for i in range(4)]
    for thread in threads:
        thread.start()
    started.wait(5)
    assert going.wait(5)  # they are appending: close in the middle of it
    first.close()
    for thread in threads:
        thread.join(5)
    assert not any(thread.is_alive() for thread in threads)
    assert len(refused) == 4
    second = SqliteStore(tmp_path)
    try:
        assert sorted(acknowledged) == list(range(1, second.last_seq() + 1))
    finally:
        second.close()



def test_a_send_queued_after_the_writers_last_batch_is_refused_not_left_waiting(
    tmp_path: Path,
) -> None:
    """Jobs are queued without a lock (SqliteStore._queue): a sender may pass the closed
    check, then lose the CPU while close() runs to its end. Its job, queued after the
    writer's last batch, must still be answered (refused), or its sender waits forever."""
    opened = SqliteStore(tmp_path)
    alice = session(opened, "alice")
    passed_the_check = threading.Event()
    closed = threading.Event()

    class LateQueue(deque[Any]):
        def append(self, job: Any) -> None:
            if threading.current_thread().name == "late-sender":
                passed_the_check.set()
                assert closed.wait(5)
            super().append(job)

    opened._jobs = LateQueue(opened._jobs)
    answers: list[list[StoredMessage | StoreError]] = []
    answered = threading.Event()

    def then(results: list[StoredMessage | StoreError]) -> None:
        answers.append(results)
        answered.set()

    message = NewMessage(ts=time.time(), sender="alice", sender_session=alice.id, to="*",
                         recipient_session=None, text="late")
    sender = threading.Thread(target=opened.submit, args=(message, then), name="late-sender")
    sender.start()
    assert passed_the_check.wait(5)
    opened.close()
    closed.set()
    sender.join(5)
    assert not sender.is_alive()
    assert answered.wait(5), "the late send was never answered"
    assert len(answers) == 1
    (result,) = answers[0]
    assert isinstance(result, StoreClosed)


def test_a_drain_after_the_writers_last_batch_refuses_what_is_queued(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    """A reader paused between queueing its job and draining the queue may drain only after
    close() ended: what it finds then (another sender's job, queued as close() began) is
    refused, not committed into closed databases."""
    opened = SqliteStore(tmp_path)
    alice = session(opened, "alice")
    opened.close()
    answers: list[list[StoredMessage | StoreError]] = []
    late = NewMessage(ts=time.time(), sender="alice", sender_session=alice.id, to="*",
                      recipient_session=None, text="late")
    opened._jobs.append(store_module._Job(late, opened._committed, then=answers.append))
    opened._drain(store_module.LEADER_MAX_BATCHES)
    assert len(answers) == 1
    (result,) = answers[0]
    assert isinstance(result, StoreClosed)
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR]
