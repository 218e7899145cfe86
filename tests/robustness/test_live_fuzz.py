"""The live core under random and mutated lines from many connections at once.

Fuzzing connections send random bytes, mutated protocol-v1 requests, plain-text commands and
over-long lines, split at random points, and reconnect whenever the server closes on them.
Meanwhile well-behaved users talk. Afterwards every well-behaved user still works, none of their
messages was lost, duplicated or reordered, the fuzzers' connections are all gone and the core
logged no error (the suite's no_core_errors fixture).
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import select
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tcp_server.server import ChatServer
from tests.support.core import WAIT_S, RawClient, running_server, wait_until
from tests.support.robustness import CollectingClient, ResourceSnapshot, wait_for_threads

log = logging.getLogger(__name__)

GOOD = ["alice", "bob", "carol"]
SECRET = "s3cret"
FUZZERS = 12
LINES_PER_FUZZER = 400
ANSWER_WAIT_MS = 20
GOOD_MESSAGES = 40  # per good user: within the burst, so none is rate-limited

TEMPLATES: list[dict[str, object]] = [
    {"type": "hello", "name": "fuzzy"},
    {"type": "list", "id": 7},
    {"type": "send", "to": "alice", "text": "hi from a fuzzer"},
    {"type": "send", "to": "*", "text": "everyone: \u202eevil\u202c <b>x</b> \U0001f600"},
    {"type": "send", "to": "nobody", "text": "x" * 4_000, "id": "abc"},
    {"type": "ping", "id": -1},
    {"type": "proxy", "secret": SECRET, "ip": "203.0.113.9", "port": 4242},
    {"type": "proxy", "secret": "wrong", "ip": "::1", "port": 1},
    {"type": "exit"},
]
PLAIN_TEXT = [b"fuzzer", b"list", b"help", b"send alice hello", b"send * hi all", b"send",
              b"ping", b"exit", b"\x1b[2J\x07", "send bob \u00e9\u00e8".encode()]


def mutate(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        position = rng.randint(0, len(out))
        operation = rng.randrange(4)
        if operation == 0 and position < len(out):
            out[position] ^= 1 << rng.randrange(8)
        elif operation == 1:
            out[position:position] = rng.randbytes(rng.randint(1, 4))
        elif operation == 2:
            del out[position : position + rng.randint(1, 8)]
        else:
            del out[position:]
    return bytes(out)


def fuzz_line(rng: random.Random) -> bytes:
    roll = rng.random()
    if roll < 0.15:
        return rng.randbytes(rng.randint(0, 200))  # may hold newlines, NULs, invalid UTF-8
    if roll < 0.17:
        return b"{" + b"[" * 70_000  # over the line limit, and deeply nested
    if roll < 0.27:
        return rng.choice(PLAIN_TEXT)
    template = json.dumps(rng.choice(TEMPLATES)).encode()
    return template if roll < 0.45 else mutate(rng, template)


@dataclass
class FuzzStats:
    lines: int = 0
    connections: int = 0
    received_bytes: int = 0


class Fuzzer:
    """One fuzzing client: sends lines in random pieces, reconnects when the server hangs up."""

    def __init__(self, address: tuple[str, int], seed: int) -> None:
        self._address = address
        self._rng = random.Random(seed)
        self._sock: socket.socket | None = None
        self.stats = FuzzStats()

    def run(self, lines: int, stop: threading.Event) -> None:
        try:
            for _ in range(lines):
                if stop.is_set():
                    return
                self._send(fuzz_line(self._rng) + self._rng.choice([b"\n", b"\r\n", b"\n\n"]))
                self.stats.lines += 1
        finally:
            self._hang_up()

    def _send(self, data: bytes) -> None:
        sock = self._connection()
        cut = self._rng.randint(0, len(data))
        try:
            for piece in (data[:cut], data[cut:]):
                if piece:
                    sock.sendall(piece)
            self._drain(sock)
        except OSError:  # the server closed on us (exit, forbidden, deadline, full outbox)
            self._hang_up()

    def _drain(self, sock: socket.socket) -> None:
        """Read what the server answers (waiting a little for it); hang up at its EOF."""
        # Nearly every line earns an answer; waiting for it keeps the fuzzer in step with the
        # server, so that closes are noticed and the next line goes to a fresh connection.
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        poller.poll(ANSWER_WAIT_MS)
        # Non-blocking for this: a socket with a timeout would wait on MSG_DONTWAIT's EAGAIN.
        sock.setblocking(False)
        try:
            while True:
                try:
                    chunk = sock.recv(65_536)
                except BlockingIOError:
                    return
                if not chunk:
                    self._hang_up()
                    return
                self.stats.received_bytes += len(chunk)
        finally:
            if self._sock is sock:
                sock.settimeout(WAIT_S)

    def _connection(self) -> socket.socket:
        if self._sock is None:
            self._sock = socket.create_connection(self._address, timeout=WAIT_S)
            self.stats.connections += 1
        return self._sock

    def _hang_up(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


@contextlib.contextmanager
def good_users(server: ChatServer) -> Iterator[list[CollectingClient]]:
    opened: list[CollectingClient] = []
    try:
        for name in GOOD:
            client = CollectingClient(server.address, name)
            opened.append(client)
            client.hello(name)
        yield opened
    finally:
        for client in opened:
            client.close()


def good_target(index: int, seq: int) -> str:
    """Whom good user `index` sends message `seq` to: everyone, or another good user."""
    return "*" if seq % 4 == 3 else GOOD[(index + 1 + seq % 2) % len(GOOD)]


def good_messages(client: CollectingClient) -> dict[str, list[int]]:
    """What a good user received from the other good users: sender -> sequence numbers."""
    got: dict[str, list[int]] = {}
    for obj in client.snapshot():
        if obj["type"] == "message" and obj["from"] in GOOD:
            got.setdefault(obj["from"], []).append(int(obj["text"].split()[1]))
    return got


@pytest.mark.slow
def test_random_and_mutated_lines_from_many_connections_harm_no_well_behaved_user() -> None:
    with running_server(gateway_secret=SECRET, hello_timeout=2.0) as server, good_users(
        server
    ) as users:
        before = ResourceSnapshot.take()
        stop = threading.Event()
        fuzzers = [Fuzzer(server.address, seed) for seed in range(FUZZERS)]
        threads = [threading.Thread(target=f.run, args=(LINES_PER_FUZZER, stop),
                                    name=f"test-fuzzer-{i}") for i, f in enumerate(fuzzers)]
        for thread in threads:
            thread.start()
        try:
            # The good users talk while the fuzzers run, spread over the run: to one another
            # and to everyone.
            for seq in range(GOOD_MESSAGES):
                progress = seq * FUZZERS * LINES_PER_FUZZER // GOOD_MESSAGES
                wait_until(lambda p=progress: sum(f.stats.lines for f in fuzzers) >= p,
                           timeout=30, what="the fuzzers to make progress")
                for index, user in enumerate(users):
                    user.send(type="send", to=good_target(index, seq), text=f"{user.label} {seq}",
                              id=seq)
        finally:
            for thread in threads:
                thread.join(60)
            stop.set()
        assert not any(thread.is_alive() for thread in threads)

        for user in users:
            user.wait_until(
                lambda got: sum(1 for o in got if isinstance(o.get("id"), int)) == GOOD_MESSAGES,
                WAIT_S, "answered every message",
            )
            replies = [o for o in user.snapshot() if isinstance(o.get("id"), int)]
            assert [o["id"] for o in replies if o["type"] == "sent"] == list(range(GOOD_MESSAGES))
        for user in users:
            received = good_messages(user)
            for sender_index, sender in enumerate(GOOD):
                if sender == user.label:
                    continue
                wanted = [seq for seq in range(GOOD_MESSAGES)
                          if good_target(sender_index, seq) in ("*", user.label)]
                assert received.get(sender, []) == wanted, (sender, user.label)

        # Every fuzzing connection is gone; the good users are alone and fully served.
        wait_until(lambda: server.connection_count() == len(GOOD), timeout=10,
                   what="the fuzzers' connections to end")
        wait_for_threads(before.threads, timeout=10)
        with RawClient(server.address) as late:
            late.hello("latecomer")
            # Fuzzers that registered and vanished are away (their sessions resumable).
            online = [u["name"] for u in late.request("list")["users"]
                      if u["status"] == "online"]
            assert online == [*GOOD, "latecomer"]
            late.send(type="send", to="*", text="hello after the storm")
            late.expect("sent", to="*")
        for user in users:
            user.wait_for(lambda o: o.get("text") == "hello after the storm")
            assert user.error is None
        totals = FuzzStats(
            lines=sum(f.stats.lines for f in fuzzers),
            connections=sum(f.stats.connections for f in fuzzers),
            received_bytes=sum(f.stats.received_bytes for f in fuzzers),
        )
        log.info("live fuzz: %d lines over %d connections, %d bytes of answers; "
                 "%d good messages checked", totals.lines, totals.connections,
                 totals.received_bytes, GOOD_MESSAGES * len(GOOD))
        assert totals.lines == FUZZERS * LINES_PER_FUZZER


def test_proxy_secret_with_a_lone_surrogate_escape_is_forbidden_not_a_crash() -> None:
    """Found by the property test of the commands: encoding the secret used to raise."""
    with running_server(gateway_secret=SECRET) as server, RawClient(server.address) as client:
        client.send_raw(b'{"type":"proxy","secret":"\\ud800","ip":"198.51.100.7","port":1}\n')
        client.expect("error", code="forbidden")
        client.expect_closed()
