"""Restart at scale, small: 1,000 clients held, messages in flight, SIGTERM, restart on the same
data directory, and every client resumes at once (bench/restart.py runs the same at 10,000).

Counts are asserted; times and memory are only logged (the machines are shared and noisy).
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from bench.restart import run_restart

log = logging.getLogger(__name__)

CLIENTS = 1_000


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_restart_under_a_thousand_clients_loses_nothing_and_refuses_nobody(
    tmp_path: Path,
) -> None:
    result = run_restart(CLIENTS, senders=50, per_sender=20, timeout_s=120, workdir=tmp_path,
                         keep_lists=True)
    log.warning("restart herd figures: %s", result)

    assert result["registered"] == CLIENTS
    assert result["stop_s"] is not None, "the core did not exit after SIGTERM within 60 s"
    assert result["stop_exit_code"] == 0
    # Everyone still connected got a bye; the clients that were away had no connection.
    assert result["byes"] == CLIENTS - result["away_before_stop"]
    assert result["acknowledged"] > 0
    assert result["resumed"] == CLIENTS
    assert result["refused"] == 0, result["errors"]
    assert result["timed_out"] == 0
    assert result["lost"] == 0
    assert result["duplicates"] == 0
    # What was sent to the away clients reached them only by the replay after the restart.
    assert result["replayed"] >= result["acknowledged_to_away"] > 0
    # Others see each resume as `back`, never left or joined: every client, keeping its list
    # of users from its `list` after the welcome and the events after it (docs/protocol.md),
    # ends with everyone online. A resume that happened while a client's own hello was being
    # answered is in that client's list reply, not a `back` (so at most one per pair).
    assert result["left_events"] == 0
    assert result["joined_events"] == 0
    assert result["away_events"] == 0
    assert result["lists_wrong"] == 0
    assert 0 < result["back_events"] <= CLIENTS * (CLIENTS - 1) // 2
