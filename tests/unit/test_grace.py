from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections.abc import Iterator

import pytest

from tcp_server.grace import Deadlines

_names = itertools.count(1)


class Expired:
    """Records expired items; the test waits for them with a deadline, never a sleep."""

    def __init__(self) -> None:
        self.items: queue.Queue[str] = queue.Queue()

    def __call__(self, item: str) -> None:
        self.items.put(item)

    def next(self, timeout: float = 5.0) -> str:
        return self.items.get(timeout=timeout)

    def none_yet(self) -> bool:
        # Only asked when no other deadline can be due: nothing else is in flight.
        return self.items.empty()


@pytest.fixture
def expired() -> Expired:
    return Expired()


@pytest.fixture
def deadlines(expired: Expired) -> Iterator[Deadlines[str]]:
    made: Deadlines[str] = Deadlines(expired, name=f"grace-test-{next(_names)}")
    try:
        yield made
    finally:
        made.stop()


def threads_named(name: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == name]


def test_items_expire_in_deadline_order(deadlines: Deadlines[str], expired: Expired) -> None:
    now = time.monotonic()
    deadlines.schedule("c", now + 0.09)
    deadlines.schedule("a", now + 0.03)
    deadlines.schedule("b", now + 0.06)
    deadlines.start()
    assert [expired.next(), expired.next(), expired.next()] == ["a", "b", "c"]
    assert time.monotonic() - now >= 0.09
    assert len(deadlines) == 0


def test_items_with_the_same_deadline_expire_in_the_order_scheduled(
    deadlines: Deadlines[str], expired: Expired
) -> None:
    at = time.monotonic() + 0.02
    for item in ["first", "second", "third"]:
        deadlines.schedule(item, at)
    deadlines.start()
    assert [expired.next(), expired.next(), expired.next()] == ["first", "second", "third"]


def test_a_later_scheduled_earlier_deadline_fires_first(
    deadlines: Deadlines[str], expired: Expired
) -> None:
    deadlines.start()
    now = time.monotonic()
    deadlines.schedule("late", now + 60)
    deadlines.schedule("soon", now + 0.02)  # must wake the thread waiting for "late"
    assert expired.next() == "soon"  # within 5 s, not after 60
    assert len(deadlines) == 1
    assert expired.none_yet()


def test_a_deadline_already_past_expires_at_once(
    deadlines: Deadlines[str], expired: Expired
) -> None:
    deadlines.start()
    deadlines.schedule("past", time.monotonic() - 1)
    assert expired.next() == "past"


def test_stop_ends_the_thread_and_drops_deadlines_not_yet_due(expired: Expired) -> None:
    name = f"grace-test-{next(_names)}"
    deadlines: Deadlines[str] = Deadlines(expired, name=name)
    deadlines.schedule("later", time.monotonic() + 60)
    deadlines.start()
    (thread,) = threads_named(name)
    start = time.monotonic()
    deadlines.stop(timeout=5)
    assert not thread.is_alive()
    assert time.monotonic() - start < 5  # woken, not timed out
    assert expired.none_yet()


def test_stop_of_an_idle_thread_ends_it(expired: Expired) -> None:
    name = f"grace-test-{next(_names)}"
    deadlines: Deadlines[str] = Deadlines(expired, name=name)
    deadlines.start()
    (thread,) = threads_named(name)
    deadlines.stop(timeout=5)
    assert not thread.is_alive()


def test_stop_before_start_returns() -> None:
    deadlines: Deadlines[str] = Deadlines(lambda item: None, name=f"grace-test-{next(_names)}")
    deadlines.stop(timeout=5)
    deadlines.stop(timeout=5)


def test_a_failing_expire_is_logged_and_the_others_still_expire(
    caplog: pytest.LogCaptureFixture,
) -> None:
    done: queue.Queue[str] = queue.Queue()

    def expire(item: str) -> None:
        if item == "bad":
            raise RuntimeError("ending the session failed")
        done.put(item)

    deadlines: Deadlines[str] = Deadlines(expire, name=f"grace-test-{next(_names)}")
    now = time.monotonic()
    deadlines.schedule("bad", now)
    deadlines.schedule("good", now + 0.01)
    with caplog.at_level(logging.ERROR, logger="tcp_server.grace"):
        deadlines.start()
        try:
            assert done.get(timeout=5) == "good"
        finally:
            deadlines.stop()
    assert any(record.exc_info for record in caplog.records)
