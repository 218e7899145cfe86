"""A peer that vanishes without closing (lid shut, network gone) is found by the core within
30 s and its user goes away. Made real in a private network namespace whose loopback is
switched off under two registered clients: no FIN, no reset, nothing but silence."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from tests.support.process import ROOT

FOUND_WITHIN_S = 30.0

SCRIPT = textwrap.dedent("""
    import json, subprocess, sys, time
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    from tests.support.core import RawClient, running_server
    with running_server() as server:
        clients = [RawClient(server.address) for _ in range(2)]
        for number, client in enumerate(clients):
            client.hello(f"user{number}")
        subprocess.run(["ip", "link", "set", "lo", "down"], check=True)
        started = time.monotonic()
        statuses = {}
        while time.monotonic() - started < 45:
            statuses = {u.name: u.status for u in server.room.users()}
            if set(statuses.values()) == {"away"}:
                break
            time.sleep(0.2)
        found_after = time.monotonic() - started
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
        for client in clients:
            client.close()
    print(json.dumps({"found_after": found_after, "statuses": statuses}))
""")


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("ip"),
                    reason="needs root, unshare and ip for a private network namespace")
def test_vanished_peers_go_away_within_30_seconds() -> None:
    result = subprocess.run(
        ["unshare", "--net", sys.executable, "-c", SCRIPT],
        cwd=ROOT, capture_output=True, text=True, timeout=90,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["statuses"] == {"user0": "away", "user1": "away"}
    assert report["found_after"] < FOUND_WITHIN_S
    print(f"vanished peers found after {report['found_after']:.1f} s")  # noqa: T201
