"""bench/run.py's choice of the run it reports for a repeated load: no timing is asserted."""

from __future__ import annotations

from typing import Any

from bench.run import PACED, median_run


def run(rate: float, p99: float) -> dict[str, Any]:
    return {"delivered_per_s": rate, "latency_ms": {"p50": 0.1, "p99": p99}}


def test_a_paced_load_reports_its_median_run_by_p99() -> None:
    assert "4" in PACED
    runs = [run(1_999, 9.0), run(2_000, 1.0), run(1_998, 3.0)]
    chosen = median_run("4", runs)
    assert chosen["latency_ms"]["p99"] == 3.0
    assert chosen["runs"] == 3
    assert chosen["p99_ms_all"] == [9.0, 1.0, 3.0]
    assert chosen["delivered_per_s_all"] == [1_999, 2_000, 1_998]


def test_a_load_as_fast_as_possible_reports_its_median_run_by_rate() -> None:
    assert "1" not in PACED
    runs = [run(40_000, 1.0), run(60_000, 300.0), run(50_000, 200.0), run(30_000, 5.0),
            run(45_000, 2.0)]
    assert median_run("1", runs)["delivered_per_s"] == 45_000


def test_a_single_run_is_reported_as_it_is() -> None:
    only = run(5_000, 4.0)
    assert median_run("2", [only]) == only
