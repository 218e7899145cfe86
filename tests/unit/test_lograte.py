from __future__ import annotations

from tcp_server.lograte import LogRate, held_back
from tcp_server.ratelimit import MAX_KEYS, BucketsByKey


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_then_one_line_per_period_with_the_count_held_back() -> None:
    clock = Clock()
    rate = LogRate(every=1.0, burst=3, clock=clock)
    assert [rate.allow("a") for _ in range(5)] == [0, 0, 0, None, None]
    clock.now = 1.0
    assert rate.allow("a") == 2  # the two held back are counted in the next line
    assert rate.allow("a") is None
    clock.now = 10.0  # refilled, but never above the burst
    assert [rate.allow("a") for _ in range(4)] == [1, 0, 0, None]


def test_each_address_has_its_own_budget() -> None:
    rate = LogRate(every=60.0, clock=Clock())
    assert rate.allow("flooder") == 0
    assert rate.allow("flooder") is None
    assert rate.allow("someone else") == 0


def test_the_least_recently_seen_addresses_are_forgotten_past_the_bound() -> None:
    rate = LogRate(every=60.0, clock=Clock())
    rate.allow("first")
    for number in range(MAX_KEYS):
        rate.allow(f"10.0.{number // 256}.{number % 256}")
    assert rate.allow("first") == 0  # forgotten, so it starts afresh: memory stays bounded
    assert len(rate._buckets._keys) == MAX_KEYS


def test_the_suffix_says_what_was_held_back() -> None:
    assert held_back(0, "x") == ""
    assert held_back(3, "connections from this address") == (
        " (3 more connections from this address not logged)"
    )


def test_buckets_by_key_refill_at_their_rate_and_rate_0_is_no_limit() -> None:
    clock = Clock()
    joins = BucketsByKey(rate_per_s=0.5, burst=2, clock=clock)
    assert [joins.take("a") for _ in range(3)] == [0, 0, None]
    clock.now = 1.0  # half a token
    assert joins.take("a") is None
    clock.now = 2.0  # one: what was refused meanwhile is counted
    assert joins.take("a") == 2
    assert [BucketsByKey(0.0, clock=clock).take("a") for _ in range(100)] == [0] * 100
