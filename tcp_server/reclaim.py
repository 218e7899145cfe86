"""Giving memory back to the system after a crowd of connections has gone.

Measured (1,000 connections that each sent 60 KB of a line and left): the core stayed at 6x
its fresh RSS. Two things kept the memory: a connection's objects are freed only by the
cycle collector (a connection, its outbox and its session refer to each other), which runs
when allocations, not frees, add up; and glibc's malloc keeps freed pages in its arenas
until asked to trim them. After a collection and a trim it was back to 1.3x.

So once at least `min_drop` connections have ended since the last reclaim, this thread waits
`settle_s` (the rest of a crowd goes too), then collects and trims, and once more
`min_interval_s` later for the crowd's tail. At most one reclaim per `min_interval_s`: a
client connecting and leaving in a loop cannot make the server spend its time collecting.
One thread for the whole server; nothing here is on a connection's path.

Bursts of traffic leave freed buffers behind too (a restart's resume storm: 10,000 clients
each sent the others' `back`, the core 1.7x its RSS before the restart once it was over), so
the thread also trims, without collecting, every `trim_every_s`: a few milliseconds.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import NoReturn

log = logging.getLogger(__name__)

MIN_DROP = 64
SETTLE_S = 0.5
MIN_INTERVAL_S = 5.0
TRIM_EVERY_S = 10.0
# glibc's per-thread cache of freed blocks (see without_thread_caches).
TCACHE_TUNABLE = "glibc.malloc.tcache_count"
# The cycle collector's thresholds in the core (see tune_collector).
COLLECTOR_THRESHOLDS = (2_000, 100, 10)


def find_malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None where the allocator is another (it then decides)."""
    try:
        trim: Callable[[int], int] = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): the allocator decides
        return None
    return trim


def run_again_with(changes: Mapping[str, str], argv: Sequence[str] | None = None) -> NoReturn:
    """Replace this process by the same program (execve: same pid, same descriptors) with
    `changes` in its environment, for what the C library or the interpreter read only when a
    process starts. `argv`: the command line to run (default: this process's own)."""
    os.execve(sys.executable, list(sys.orig_argv if argv is None else argv),
              {**os.environ, **changes})


def without_thread_caches() -> None:
    """Start again (run_again_with) with glibc's per-thread malloc cache off, unless
    GLIBC_TUNABLES already says how big it is (the operator's choice stands) or the C library
    is not glibc.

    The core has a thread per client, and glibc gives every thread that frees memory a cache
    of freed blocks that only that thread reuses: ~9 KiB per idle client at 10,000 held (34
    KiB per client with the caches, 25 without; bench/README.md), for no speed the benchmarks
    show (the GIL lets one thread allocate at a time anyway).
    """
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    if TCACHE_TUNABLE in tunables or not _glibc():
        return
    setting = f"{TCACHE_TUNABLE}=0"
    run_again_with({"GLIBC_TUNABLES": f"{tunables}:{setting}" if tunables else setting})


def tune_collector() -> None:
    """Collect the middle generation ten times less often than Python does.

    Python collects generation 1 after every 10 young collections. Under a burst the core has
    thousands of messages in flight (parsed, queued for the store, queued for sockets), alive
    across young collections, so every one of those middle collections walked them all again:
    21-56 ms of every 20,000 messages of load 1, 1-3 us a message, 4-7% of the core's CPU
    (perf). They die soon after; collected 10 times less often, most are gone by then. The young
    threshold is 3.13's (3.11's 700 ran three times as many young collections). Cycles still go
    within seconds: the reclaimer collects everything after a crowd leaves.
    """
    gc.set_threshold(*COLLECTOR_THRESHOLDS)


def _glibc() -> bool:
    try:
        version = os.confstr("CS_GNU_LIBC_VERSION")
    except (ValueError, OSError, AttributeError):  # a system that does not name its C library
        return False
    return bool(version and version.startswith("glibc"))


class Reclaimer:
    def __init__(
        self,
        min_drop: int = MIN_DROP,
        settle_s: float = SETTLE_S,
        min_interval_s: float = MIN_INTERVAL_S,
        trim_every_s: float = TRIM_EVERY_S,
    ) -> None:
        self._min_drop = min_drop
        self._settle_s = settle_s
        self._min_interval_s = min_interval_s
        self._trim_every_s = trim_every_s
        self._trim = find_malloc_trim()
        # _changed guards _peak, _count and _stopping; count() notifies it when a reclaim
        # becomes due, stop() to end the thread.
        self._changed = threading.Condition(threading.Lock())
        self._peak = 0  # the most connections since the last reclaim
        self._count = 0
        self._stopping = False
        self.reclaims = 0  # for tests and logs
        self.trims = 0
        self._thread = threading.Thread(target=self._run, name="reclaimer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._changed:
            self._stopping = True
            self._changed.notify()
        if self._thread.ident is not None:
            self._thread.join(5)

    def count(self, connections: int) -> None:
        """The number of connections after one started or ended."""
        with self._changed:
            self._count = connections
            if connections > self._peak:
                self._peak = connections
            elif self._due():
                self._changed.notify()

    def _due(self) -> bool:
        return self._peak - self._count >= self._min_drop

    def _run(self) -> None:
        last = -self._min_interval_s
        # After a reclaim, one more a minimum interval later: a crowd's tail (fewer than
        # min_drop that ended after the collection began, or connections the flusher closed
        # only then, when their sockets had lingered) would otherwise keep its memory until
        # the cycle collector happened to run (a full test run once found the core at 3.5x
        # its fresh RSS 15 s after 1,000 abusers had gone).
        follow_up = False
        with self._changed:
            while True:
                wait = self._min_interval_s if follow_up else self._trim_every_s
                due = self._changed.wait_for(lambda: self._stopping or self._due(), wait)
                if not due and not follow_up:
                    self._unlocked(self._trim_only)  # nothing due: the periodic trim
                    continue
                if due:
                    # Let the rest of a crowd go, and keep to the minimum interval; the lock
                    # is free meanwhile (wait_for releases it), so connections come and go.
                    delay = max(self._settle_s, last + self._min_interval_s - time.monotonic())
                    if self._stopping or self._changed.wait_for(lambda: self._stopping, delay):
                        return
                # A crowd's reclaim, or its follow-up (which has none of its own).
                self._peak = self._count
                last = time.monotonic()
                self._unlocked(self._reclaim)
                follow_up = due

    def _unlocked(self, action: Callable[[], None]) -> None:
        """Run `action` (by _run's thread, holding _changed) with the lock free."""
        self._changed.release()
        try:
            action()
        finally:
            self._changed.acquire()

    def _trim_only(self) -> None:
        if self._trim is not None:
            self._trim(0)
        self.trims += 1

    def _reclaim(self) -> None:
        started = time.perf_counter()
        collected = gc.collect()
        if self._trim is not None:
            self._trim(0)
        self.reclaims += 1
        log.debug("memory reclaimed: %d objects collected, %.1f ms", collected,
                  (time.perf_counter() - started) * 1000)
