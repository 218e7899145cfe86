"""Memory comes back: after 1,000 abusive connections leave, the core's RSS returns to within
1.5x of a fresh core's (issue: hard to knock over).

Each abusive connection sends most of a maximal line (60 KB of a hello that never ends) and
holds it: the core buffers 60 KB per connection while they stay. Freed memory that the
allocator keeps (reference cycles not yet collected, per-thread malloc arenas) would keep
the process large long after the attack; this checks the process from outside, by its RSS.
"""

from __future__ import annotations

import logging
import resource
import socket
import time

import pytest

from tests.support.process import core_process

log = logging.getLogger(__name__)

ABUSERS = 1_000
PARTIAL_LINE = b'{"type":"hello","name":"' + b"x" * 60_000
SETTLE_S = 15.0


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def threads(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    raise AssertionError("no Threads")


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_rss_returns_after_a_thousand_abusive_connections_leave() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < ABUSERS + 200:
        pytest.skip(f"open files limit {hard} is below {ABUSERS + 200}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        with core_process("--max-clients", str(ABUSERS + 100),
                          "--max-clients-per-ip", "0", "--max-joins-per-ip", "0",
                          "--max-connects-per-ip", "0") as core:
            pid = core.proc.pid
            time.sleep(0.5)  # its own start-up allocations settle
            fresh = rss_kib(pid)
            fresh_threads = threads(pid)
            abusers = []
            for _ in range(ABUSERS):
                sock = socket.create_connection(core.address, timeout=10)
                sock.sendall(PARTIAL_LINE)
                abusers.append(sock)
            deadline = time.monotonic() + 30
            while threads(pid) < fresh_threads + ABUSERS and time.monotonic() < deadline:
                time.sleep(0.1)
            time.sleep(1)  # the last ones read their 60 KB
            held = rss_kib(pid)
            for sock in abusers:
                sock.close()
            deadline = time.monotonic() + SETTLE_S
            after = rss_kib(pid)
            while (after > fresh * 1.5 or threads(pid) > fresh_threads) and (
                time.monotonic() < deadline
            ):
                time.sleep(0.2)
                after = rss_kib(pid)
            log.warning("core RSS: fresh %d KiB, %d abusers held %d KiB, after they left %d KiB",
                        fresh, ABUSERS, held, after)
            assert held > fresh + ABUSERS * 50, "the abusers did not cost what they should"
            assert threads(pid) == fresh_threads
            assert after <= fresh * 1.5
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
