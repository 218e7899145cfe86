"""backoff.Backoff: capped exponential delays with equal jitter, reset after a success."""

from __future__ import annotations

import random

import pytest

from cli_client.backoff import BASE_DELAY_S, MAX_DELAY_S, Backoff


def delays(backoff: Backoff, count: int) -> list[float]:
    return [backoff.next_delay() for _ in range(count)]


def test_defaults_are_half_a_second_doubling_up_to_fifteen() -> None:
    backoff = Backoff()
    assert (BASE_DELAY_S, MAX_DELAY_S) == (0.5, 15.0)
    assert [backoff.ceiling(n) for n in range(7)] == [0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 15.0]


@pytest.mark.parametrize("seed", range(20))
def test_each_delay_lies_between_half_and_all_of_its_ceiling(seed: int) -> None:
    backoff = Backoff(rng=random.Random(seed))
    for attempt, delay in enumerate(delays(backoff, 12)):
        ceiling = backoff.ceiling(attempt)
        assert ceiling / 2 <= delay <= ceiling


def test_delays_never_pass_the_cap_however_many_attempts() -> None:
    backoff = Backoff(rng=random.Random(1))
    assert max(delays(backoff, 10_000)) <= MAX_DELAY_S
    assert backoff.ceiling(10**9) == MAX_DELAY_S


def test_the_jitter_spreads_clients_that_start_together() -> None:
    # Ten clients that lost the same core at the same moment do not come back in lockstep.
    rngs = [random.Random(seed) for seed in range(10)]
    fifth_delays = {round(delays(Backoff(rng=rng), 5)[-1], 6) for rng in rngs}
    assert len(fifth_delays) == 10


def test_the_extremes_of_the_random_source_give_the_bounds() -> None:
    class Fixed(random.Random):
        def __init__(self, fraction: float) -> None:
            super().__init__()
            self.fraction = fraction

        def uniform(self, a: float, b: float) -> float:
            return a + (b - a) * self.fraction

    assert delays(Backoff(rng=Fixed(0.0)), 4) == [0.25, 0.5, 1.0, 2.0]
    assert delays(Backoff(rng=Fixed(1.0)), 4) == [0.5, 1.0, 2.0, 4.0]


def test_reset_starts_again_from_the_base_delay() -> None:
    backoff = Backoff(rng=random.Random(3))
    delays(backoff, 8)
    assert backoff.attempts == 8
    backoff.reset()
    assert backoff.attempts == 0
    assert BASE_DELAY_S / 2 <= backoff.next_delay() <= BASE_DELAY_S


@pytest.mark.parametrize(("base", "cap"), [(0.0, 1.0), (-1.0, 1.0), (2.0, 1.0)])
def test_a_base_that_is_not_positive_or_above_the_cap_is_refused(
    base: float, cap: float
) -> None:
    with pytest.raises(ValueError, match="0 < base_delay_s <= max_delay_s"):
        Backoff(base, cap)
