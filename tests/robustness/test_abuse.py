"""Abuse of the live core: floods, too many connections, slowloris, readers that never read, churn.

Each test runs a real core on a free port with small limits, so that a limit is reached quickly,
and checks both sides: the abuser gets what the protocol promises (an error, a bye, a close) and
the well-behaved clients around it see nothing but their own traffic.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import socket
import struct
import threading
import time
import tracemalloc
from collections.abc import Iterator
from typing import Any

import pytest

from tcp_server.server import ChatServer
from tests.support.core import WAIT_S, RawClient, running_server, wait_until
from tests.support.robustness import (
    CollectingClient,
    ResourceSnapshot,
    count_fds,
    fd_kinds,
    wait_for_threads,
)

log = logging.getLogger(__name__)


@contextlib.contextmanager
def clients(server: ChatServer, *names: str) -> Iterator[list[CollectingClient]]:
    """Registered collecting clients, closed (and their readers joined) afterwards."""
    opened: list[CollectingClient] = []
    try:
        for name in names:
            client = CollectingClient(server.address, name)
            opened.append(client)
            client.hello(name)
        yield opened
    finally:
        for client in opened:
            client.close()


def of_type(kind: str, received: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [obj for obj in received if obj.get("type") == kind]


def ping_round_trip_s(client: CollectingClient, request_id: str) -> float:
    started = time.monotonic()
    client.send(type="ping", id=request_id)
    client.wait_for(lambda o: o.get("id") == request_id, what=f"pong {request_id}")
    return time.monotonic() - started


# --- rate limit ----------------------------------------------------------------------------------


def test_flood_from_one_connection_is_rate_limited_while_others_keep_talking() -> None:
    flood = 3_000
    with running_server(rate_limit=20.0, rate_burst=60) as server, clients(
        server, "flooder", "alice", "bob"
    ) as (flooder, alice, bob):
        quiet_rtts = [ping_round_trip_s(alice, f"quiet-{i}") for i in range(5)]
        started = time.monotonic()
        lines = b"".join(
            b'{"type":"send","to":"*","text":"flood %d","id":%d}\n' % (i, i) for i in range(flood)
        )
        sender = threading.Thread(target=flooder.send_raw, args=(lines,), name="test-flooder")
        sender.start()
        try:
            flood_rtts = [ping_round_trip_s(alice, f"flood-{i}") for i in range(20)]
            alice.send(type="send", to="bob", text="still here", id="still")
            alice.wait_for(lambda o: o.get("id") == "still" and o["type"] == "sent")
            bob.wait_for(lambda o: o.get("text") == "still here", what="alice's message")
        finally:
            sender.join(WAIT_S)
        flooder.wait_until(
            lambda got: sum(1 for o in got if isinstance(o.get("id"), int)) == flood,
            timeout=30, what="answered every flood request",
        )
        elapsed = time.monotonic() - started
        answers = [o for o in flooder.snapshot() if isinstance(o.get("id"), int)]
        accepted = [o for o in answers if o["type"] == "sent"]
        limited = [o for o in answers if o.get("code") == "rate_limited"]
        assert len(accepted) + len(limited) == flood
        # A token bucket lets through its burst (less the hello's token) plus the rate over
        # the time the flood lasted.
        assert 60 - 1 <= len(accepted) <= 60 + 20 * elapsed
        assert limited
        # Everyone else received exactly the accepted messages, once each, in order: the
        # flood is not amplified. Each was delivered before its "sent" was queued.
        expected = [f"flood {o['id']}" for o in sorted(accepted, key=lambda o: o["id"])]

        def from_flooder(got: list[dict[str, Any]]) -> list[str]:
            return [o["text"] for o in got if o.get("type") == "message" and o["from"] == "flooder"]

        for peer in (alice, bob):
            peer.wait_until(lambda got: len(from_flooder(got)) >= len(expected), timeout=WAIT_S,
                            what="every accepted flood message")
            assert from_flooder(peer.snapshot()) == expected
        log.info("flood: %d accepted, %d rate_limited in %.2f s; alice's ping %.1f ms quiet, "
                 "%.1f ms worst during the flood", len(accepted), len(limited), elapsed,
                 1000 * max(quiet_rtts), 1000 * max(flood_rtts))
        # No timed assertion (a shared machine is noisy): that every ping of alice's was
        # answered during the flood, each within the usual wait, is the check; the figures
        # are logged above, and bench/ measures latency properly.


# --- max clients ---------------------------------------------------------------------------------


def test_connection_beyond_max_clients_gets_server_full_and_is_closed() -> None:
    with running_server(max_clients=5) as server, clients(
        server, *(f"user{i}" for i in range(5))
    ) as present, RawClient(server.address) as extra:
        extra.expect("error", code="server_full")
        extra.expect_closed()
        present[0].send(type="send", to="*", text="the five are fine", id="ok")
        present[0].wait_for(lambda o: o.get("id") == "ok" and o["type"] == "sent")


def test_connection_that_speaks_first_beyond_max_clients_still_reads_server_full() -> None:
    """The refusal is readable even when the client sent its hello before reading anything."""
    with running_server(max_clients=2) as server, clients(server, "a", "b"), RawClient(
        server.address
    ) as extra:
        extra.send(type="hello", name="c")
        extra.expect("error", code="server_full")
        extra.expect_closed()


def test_a_place_freed_below_max_clients_can_be_taken_again() -> None:
    with running_server(max_clients=2) as server, clients(server, "a") as (a,):
        with RawClient(server.address) as b:
            b.hello("b")
            b.send(type="exit")
            b.expect("bye")
            b.expect_closed()
        wait_until(lambda: server.connection_count() == 1, what="b's connection to end")
        with RawClient(server.address) as c:
            c.hello("c")
        assert a.wait_for(lambda o: o.get("type") == "joined" and o["name"] == "c")


# --- hello deadline ------------------------------------------------------------------------------


def trickle(sock: socket.socket, data: bytes, interval_s: float, stop: threading.Event) -> None:
    """Send `data` one byte per interval until it is sent, the peer is gone or `stop` is set."""
    for i in range(len(data)):
        if stop.wait(interval_s):
            return
        try:
            sock.send(data[i : i + 1])
        except OSError:  # the server closed the connection: the point of the test
            return


def test_slowloris_that_trickles_a_byte_a_second_is_dropped_at_the_hello_deadline() -> None:
    with running_server(hello_timeout=1.5) as server, clients(server, "alice") as (alice,):
        started = time.monotonic()  # before connecting: the server's deadline starts at accept
        slow = CollectingClient(server.address, "slowloris")
        stop = threading.Event()
        trickler = threading.Thread(
            target=trickle, args=(slow.sock, b'{"type":"hello","name":"slow"}\n', 1.0, stop),
            name="test-trickler",
        )
        trickler.start()
        try:
            slow.wait_closed(timeout=1.5 + WAIT_S)
            lifetime = time.monotonic() - started
        finally:
            stop.set()
            trickler.join(WAIT_S)
            slow.close()
        assert slow.received[-1]["type"] == "bye"
        assert "hello" in slow.received[-1]["reason"]
        assert lifetime >= 1.5
        alice.send(type="list", id="who")
        who = alice.wait_for(lambda o: o.get("id") == "who")
        assert [user["name"] for user in who["users"]] == ["alice"]


def test_connection_that_keeps_sending_without_hello_is_dropped_at_the_hello_deadline() -> None:
    """A steady stream keeps the socket readable: the deadline must hold all the same."""
    with running_server(hello_timeout=1.0) as server:
        flooder = CollectingClient(server.address, "nohello")
        stop = threading.Event()

        def flood() -> None:
            junk = b'{"type":"ping"}\n' * 256
            with contextlib.suppress(OSError):
                while not stop.is_set() and not flooder.closed:
                    flooder.send_raw(junk)

        sender = threading.Thread(target=flood, name="test-nohello-flood")
        sender.start()
        try:
            flooder.wait_closed(timeout=1.0 + WAIT_S)
        finally:
            stop.set()
            flooder.close()
            sender.join(WAIT_S)
        last = flooder.received[-1]
        assert last["type"] == "bye"
        assert "hello" in last["reason"]


# --- a client that never reads -------------------------------------------------------------------


def test_client_that_never_reads_is_dropped_when_its_outbox_is_full_and_nobody_else_notices(
) -> None:
    text = "x" * 3_990  # with its number, just under the 4,000-character limit
    with running_server(max_outbox_bytes=65_536, rate_limit=0) as server, clients(
        server, "talker", "alice", "bob"
    ) as (talker, alice, bob):
        stuck = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4_096)  # a small window
        stuck.settimeout(WAIT_S)
        try:
            stuck.connect(server.address)
            stuck.sendall(b'{"type":"hello","name":"stuck"}\n')
            for peer in (talker, alice, bob):
                peer.wait_for(lambda o: o.get("type") == "joined", what="stuck's arrival")
            # Send in rounds until the server gives up on "stuck": its kernel buffers take a few
            # MB before the outbox starts to fill. A round (32 KB) fits in the readers' outboxes,
            # and they read it all before the next. 5,000 messages (20 MB) bound the test.
            sent = 0
            while sent < 5_000 and not any(
                o.get("type") == "away" for o in alice.snapshot()
            ):
                talker.send_raw(b"".join(
                    b'{"type":"send","to":"*","text":"%d %s","id":%d}\n'
                    % (sent + i, text.encode(), sent + i) for i in range(8)
                ))
                sent += 8
                for peer in (alice, bob):
                    peer.wait_until(
                        lambda got, n=sent: sum(1 for o in got if o["type"] == "message") >= n,
                        timeout=WAIT_S, what=f"{sent} messages",
                    )
            # Dropped: its session is away (what it missed is kept for a resume).
            alice.wait_for(lambda o: o.get("type") == "away" and o["name"] == "stuck",
                           what="stuck to be dropped")
        finally:
            stuck.close()
        # Each message reached the readers before its "sent" was queued: wait for the last.
        talker.wait_until(lambda got: sum(1 for o in got if o["type"] == "sent") >= sent,
                          timeout=WAIT_S, what="every acknowledgement")
        acks = [o for o in talker.snapshot() if o.get("type") == "sent"]
        assert len(acks) == sent
        for peer in (alice, bob):
            peer.wait_until(
                lambda got: sum(1 for o in got if o.get("type") == "message") >= sent,
                timeout=WAIT_S, what="every message",
            )
            numbers = [int(o["text"].split()[0]) for o in peer.snapshot()
                       if o.get("type") == "message"]
            assert numbers == list(range(sent))
        errors = [o for c in (talker, alice, bob) for o in c.snapshot() if o["type"] == "error"]
        assert errors == []
        wait_until(lambda: server.connection_count() == 3, what="stuck's connection to end")
        log.info("never-reading client dropped after %d messages of 4,000 characters", sent)


# --- churn ---------------------------------------------------------------------------------------


def one_cycle(address: tuple[str, int], i: int) -> None:
    """Connect and leave in one of three ways: at once, politely, or by a reset."""
    with socket.create_connection(address, timeout=WAIT_S) as sock:
        kind = i % 3
        if kind == 1:
            sock.sendall(b'{"type":"hello","name":"churn%d"}\n{"type":"exit"}\n' % i)
            received = b""
            while (chunk := sock.recv(4_096)) != b"":
                received += chunk
            assert b'"bye"' in received, received
        elif kind == 2:
            sock.sendall(b'{"type":"hello","name":"churn%d"}\n' % i)
            # Linger 0: close() sends a reset instead of a FIN, like a crashed client.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def core_allocated_bytes(snapshot: tracemalloc.Snapshot) -> int:
    """Bytes still allocated by lines of the core's own code."""
    core = snapshot.filter_traces([tracemalloc.Filter(True, "*/tcp_server/*")])
    return sum(stat.size for stat in core.statistics("filename"))


@pytest.mark.slow
def test_5000_connect_disconnect_cycles_leave_threads_fds_and_memory_where_they_started(
    caplog: pytest.LogCaptureFixture,
) -> None:
    cycles, workers = 5_000, 4
    # Four INFO lines per cycle would be kept by pytest's log capture and blur the memory
    # figures; errors still reach the no_core_errors check.
    caplog.set_level(logging.WARNING, logger="tcp_server")
    # No grace: each cycle's session ends with its connection, so what is left is a leak
    # (away sessions, which are kept on purpose, are bounded by the grace period). No join
    # limit: the churn is of one address, and leaks are the subject here.
    with running_server(rate_limit=0, resume_grace=0, max_joins_per_ip=0,
                        max_connects_per_ip=0) as server, clients(
        server, "watcher"
    ) as (watcher,):
        fds_with_watcher = count_fds()
        for i in range(200):  # warm-up: first-use allocations are not leaks
            one_cycle(server.address, i)
        wait_until(lambda: server.connection_count() == 1, timeout=10, what="warm-up to end")
        # The flusher closes each socket after its last bytes, shortly after its reader ends.
        wait_until(lambda: count_fds() == fds_with_watcher, timeout=10,
                   what="the warm-up's sockets to close")
        watcher.wait_until(
            lambda got: sum(1 for o in got if o.get("type") == "left") >= 133,
            timeout=WAIT_S, what="the warm-up's leaves",
        )
        watcher.forget()
        before = ResourceSnapshot.take()
        kinds_before = fd_kinds()
        tracemalloc.start()
        failures: list[Exception] = []

        def work(offset: int) -> None:
            try:
                for i in range(offset, cycles, workers):
                    one_cycle(server.address, i)
            except (OSError, AssertionError) as error:  # reported by the test thread below
                failures.append(error)

        threads = [threading.Thread(target=work, args=(w,), name=f"test-churn-{w}")
                   for w in range(workers)]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        try:
            for thread in threads:
                thread.join(120)
            assert not failures, failures[:3]
            assert not any(thread.is_alive() for thread in threads)
            elapsed = time.monotonic() - started
            wait_until(lambda: server.connection_count() == 1, timeout=10, what="churn to end")
            wait_for_threads(before.threads, timeout=10)
            wait_until(lambda: count_fds() <= before.fds, timeout=5, what="descriptors to close")
            # The watcher saw every registered churner come and go (two of three cycles
            # register). What it kept of that is the test's memory, not the core's: let it go
            # before measuring (tracemalloc can book a block the watcher's reader thread
            # allocated to the core's lines).
            registered = sum(1 for i in range(cycles) if i % 3)
            watcher.wait_until(
                lambda got: sum(1 for o in got if o.get("type") == "left") >= registered,
                timeout=WAIT_S, what="every churner's leave",
            )
            seen = watcher.forget()
            assert sum(1 for o in seen if o.get("type") == "joined") == registered
            assert sum(1 for o in seen if o.get("type") == "left") == registered
            del seen
            # Traced since the churn began: whatever the core allocated then and still holds.
            # A connection and its session refer to each other (session.deliver is the
            # connection's method): the cycle collector frees them, so run it first.
            gc.collect()
            kept_bytes = core_allocated_bytes(tracemalloc.take_snapshot())
        finally:
            tracemalloc.stop()
        after = ResourceSnapshot.take()
        # The watcher saw every registered churner come and go, and is still served.
        watcher.send(type="list", id="who")
        who = watcher.wait_for(lambda o: o.get("id") == "who")
        assert [u["name"] for u in who["users"]] == ["watcher"]
        log.info("%d cycles in %.1f s; threads %d -> %d, fds %d -> %d, rss %.1f -> %.1f MB, "
                 "core allocations kept %d bytes", cycles, elapsed, before.threads,
                 after.threads, before.fds, after.fds, before.rss_bytes / 2**20,
                 after.rss_bytes / 2**20, kept_bytes)
        assert after.threads == before.threads
        # Which descriptors differ: it named earlier tests' database files that a store's
        # close() had left open (closed by the garbage collector during the churn).
        kinds_after = fd_kinds()
        assert after.fds == before.fds, (
            f"kept: {kinds_after - kinds_before}; gone: {kinds_before - kinds_after}")
        # A connection's state is a few KB: a leak of it per cycle would be megabytes here.
        assert kept_bytes < 64 * 1024
        # Generous: RSS also moves with the allocator's per-thread arenas.
        assert after.rss_bytes - before.rss_bytes < 32 * 2**20
