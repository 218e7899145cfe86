"""The reclaimer: a collection and a trim once enough connections ended, never more often
than its minimum interval."""

from __future__ import annotations

import gc
import time
import weakref
from collections.abc import Iterator, Mapping

import pytest

from tcp_server import reclaim
from tcp_server.reclaim import Reclaimer

WAIT_S = 5.0


def wait_for(condition: object, timeout: float = WAIT_S) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(0.01)
    return False


@pytest.fixture
def reclaimer() -> Iterator[Reclaimer]:
    reclaimer = Reclaimer(min_drop=10, settle_s=0.05, min_interval_s=0.5)
    reclaimer.start()
    yield reclaimer
    reclaimer.stop()


def test_nothing_is_reclaimed_while_connections_only_come_or_few_leave(
    reclaimer: Reclaimer,
) -> None:
    for n in range(1, 101):
        reclaimer.count(n)
    for n in range(100, 91, -1):  # 9 fewer: under min_drop
        reclaimer.count(n)
    time.sleep(0.3)
    assert reclaimer.reclaims == 0


def test_a_crowd_leaving_is_reclaimed_once_then_its_tail_once(reclaimer: Reclaimer) -> None:
    for n in range(1, 101):
        reclaimer.count(n)
    for n in range(100, -1, -1):
        reclaimer.count(n)
    assert wait_for(lambda: reclaimer.reclaims == 1)
    first = time.monotonic()
    time.sleep(0.3)
    assert reclaimer.reclaims == 1  # the whole crowd in one reclaim (it settled first)
    assert wait_for(lambda: reclaimer.reclaims == 2)  # the follow-up, a minimum interval on
    assert time.monotonic() - first >= 0.4
    time.sleep(1.2)
    assert reclaimer.reclaims == 2  # and no more while nothing else leaves


class _Cycle:
    def __init__(self) -> None:
        self.me = self


def test_a_crowd_s_tail_that_leaves_after_the_collection_is_collected_too(
    reclaimer: Reclaimer,
) -> None:
    """Connections that end after the reclaim began, too few for another (or closed by the
    flusher only later), are collected by the follow-up, not left to the cycle collector."""
    gc.collect()
    gc.disable()  # only the reclaimer collects
    try:
        for n in range(1, 101):
            reclaimer.count(n)
        for n in range(100, 4, -1):  # the crowd; 4 stay
            reclaimer.count(n)
        assert wait_for(lambda: reclaimer.reclaims == 1)
        tail = _Cycle()
        gone = weakref.ref(tail)
        del tail  # a cycle: only a collection frees it
        for n in range(4, -1, -1):  # the tail: fewer than min_drop
            reclaimer.count(n)
        assert gone() is not None
        assert wait_for(lambda: gone() is None, 2.0), "the tail was never collected"
    finally:
        gc.enable()


def test_connect_and_leave_in_a_loop_is_reclaimed_at_most_once_per_interval(
    reclaimer: Reclaimer,
) -> None:
    started = time.monotonic()
    while time.monotonic() - started < 1.2:
        for n in (20, 0):  # 20 come and go, again and again
            reclaimer.count(n)
        time.sleep(0.01)
    # 1.2 s with a 0.5 s minimum interval: at most 3 (at 0, 0.5 and 1.0 s after the first)
    assert 1 <= reclaimer.reclaims <= 3


def test_stop_ends_the_thread_even_while_a_reclaim_is_due() -> None:
    reclaimer = Reclaimer(min_drop=1, settle_s=10, min_interval_s=10)
    reclaimer.start()
    reclaimer.count(5)
    reclaimer.count(0)
    time.sleep(0.2)  # the thread is waiting out its settle time
    started = time.monotonic()
    reclaimer.stop()
    assert time.monotonic() - started < WAIT_S


def test_it_trims_now_and_then_when_nothing_else_is_due() -> None:
    reclaimer = Reclaimer(min_drop=10, settle_s=0.05, min_interval_s=0.5, trim_every_s=0.1)
    reclaimer.start()
    try:
        assert wait_for(lambda: reclaimer.trims >= 3, 2.0)
        assert reclaimer.reclaims == 0  # a trim is not a collection
    finally:
        reclaimer.stop()


@pytest.mark.parametrize(("before", "after"), [
    (None, "glibc.malloc.tcache_count=0"),
    ("glibc.malloc.arena_max=2", "glibc.malloc.arena_max=2:glibc.malloc.tcache_count=0"),
    ("glibc.malloc.tcache_count=7", None),  # the operator's choice stands: no exec
    ("glibc.malloc.arena_max=2:glibc.malloc.tcache_count=3", None),
])
def test_thread_caches_are_turned_off_by_starting_again_unless_already_set(
    monkeypatch: pytest.MonkeyPatch, before: str | None, after: str | None
) -> None:
    started: list[Mapping[str, str]] = []
    monkeypatch.setattr(reclaim, "run_again_with", started.append)
    monkeypatch.setattr(reclaim, "_glibc", lambda: True)
    if before is None:
        monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    else:
        monkeypatch.setenv("GLIBC_TUNABLES", before)
    reclaim.without_thread_caches()
    assert started == ([] if after is None else [{"GLIBC_TUNABLES": after}])


def test_no_exec_where_the_c_library_is_not_glibc(monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[Mapping[str, str]] = []
    monkeypatch.setattr(reclaim, "run_again_with", started.append)
    monkeypatch.setattr(reclaim, "_glibc", lambda: False)
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    reclaim.without_thread_caches()
    assert started == []


def test_the_core_collects_the_middle_generation_ten_times_less_often() -> None:
    before = gc.get_threshold()
    try:
        reclaim.tune_collector()
        young, middle, old = gc.get_threshold()
        assert (young, middle, old) == (2_000, 100, 10)
    finally:
        gc.set_threshold(*before)


def test_the_program_tunes_the_collector_and_a_caller_s_process_is_left_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """main() with argv None is the program (`python -m tcp_server`); with an argv it is a
    caller's (tests, embedding) and leaves the process's settings as they are."""
    from tcp_server import __main__ as program

    tuned: list[str] = []
    monkeypatch.setattr(program, "without_thread_caches", lambda: tuned.append("tcache"))
    monkeypatch.setattr(program, "tune_collector", lambda: tuned.append("gc"))
    monkeypatch.setattr(program, "config_from_args", _stop_here)
    monkeypatch.setattr(program.sys, "argv", ["chat-server", "--port", "0"])
    with pytest.raises(_Stopped):
        program.main()
    assert tuned == ["tcache", "gc"]
    tuned.clear()
    with pytest.raises(_Stopped):
        program.main(["--port", "0"])
    assert tuned == []


class _Stopped(Exception):
    pass


def _stop_here(*args: object) -> object:
    raise _Stopped
