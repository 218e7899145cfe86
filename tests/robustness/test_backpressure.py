"""A client that reads is never dropped, even while the server cannot keep up.

Issue 11's scenario, smaller: 60 registered clients that never read, 10 senders sending 16 KB
messages to everyone at ~17/s each (under the rate limit), and one client that reads normally.
Only the non-readers may be dropped (their sockets stopped taking data); the reader gets every
message exactly once and in order (sequence numbers per sender), and is never told bye.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Iterator

from tests.support.core import WAIT_S
from tests.support.process import core_process
from tests.support.robustness import CollectingClient

log = logging.getLogger(__name__)

NON_READERS = 60
SENDERS = 10
RATE_PER_SENDER = 17  # messages a second, under the default rate limit (20/s)
DURATION_S = 4.0
# A small send queue (8 messages) makes the server fall behind sooner than at the default
# 1 MiB, where it takes ~300 non-readers (issue 11).
OUTBOX_BYTES = 131_072
FILLER = "\U0001f600" * 3_990  # 4 bytes each in UTF-8: a 16 KB line


def sender_source(i: int) -> str:
    return f"127.0.0.{100 + i}"


@contextlib.contextmanager
def non_readers(address: tuple[str, int]) -> Iterator[list[socket.socket]]:
    socks: list[socket.socket] = []
    try:
        for i in range(NON_READERS):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4_096)
            sock.bind((f"127.0.0.{2 + i}", 0))
            sock.settimeout(WAIT_S)
            sock.connect(address)
            sock.sendall(b'{"type":"hello","name":"idle%d"}\n' % i)
        yield socks
    finally:
        for sock in socks:
            sock.close()


def send_steadily(client: CollectingClient, count: int, failures: list[OSError]) -> None:
    try:
        start = time.monotonic()
        for n in range(count):
            pause = start + n / RATE_PER_SENDER - time.monotonic()
            if pause > 0:
                time.sleep(pause)  # the load's own pace, not a wait for the server
            client.send(type="send", to="*", text=f"{client.label}:{n} {FILLER}", id=n)
    except OSError as error:  # reported by the test, not lost in a thread
        failures.append(error)


def test_a_reading_client_keeps_every_message_while_non_readers_are_dropped() -> None:
    count = int(DURATION_S * RATE_PER_SENDER)
    flags = ("--max-clients-per-ip", "0", "--max-joins-per-ip", "0",
             "--max-connects-per-ip", "0",
             "--max-outbox-bytes", str(OUTBOX_BYTES))
    with core_process(*flags) as core, non_readers(core.address):
        reader = CollectingClient(core.address, "reader", source="127.0.0.90")
        senders = [CollectingClient(core.address, f"s{i}", source=sender_source(i))
                   for i in range(SENDERS)]
        try:
            reader.hello("reader")
            for sender in senders:
                sender.hello(sender.label)
            failures: list[OSError] = []
            threads = [threading.Thread(target=send_steadily, args=(s, count, failures),
                                        name=f"test-send-{s.label}") for s in senders]
            started = time.monotonic()
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(DURATION_S * 10)
            assert failures == []

            def texts(got: list[dict[str, object]]) -> int:
                return sum(1 for o in got if o["type"] == "message")

            reader.wait_until(lambda got: texts(got) >= count * SENDERS or reader.closed,
                              WAIT_S * 3, "every message")
            log.info("%d messages of 16 KB to everyone in %.1f s", count * SENDERS,
                     time.monotonic() - started)
            got = reader.snapshot()
            assert not reader.closed, f"the reading client was dropped: {got[-1]}"
            assert [o for o in got if o["type"] == "bye"] == []
            for sender in senders:
                numbers = [int(str(o["text"]).split(" ", 1)[0].split(":")[1]) for o in got
                           if o["type"] == "message" and o["from"] == sender.label]
                assert numbers == list(range(count)), sender.label
            # The non-readers were dropped: everyone was told they are away.
            reader.wait_until(
                lambda got: sum(1 for o in got if o["type"] == "away") >= NON_READERS,
                WAIT_S, "the non-readers to be dropped",
            )
            assert all(not s.closed for s in senders)
        finally:
            reader.close()
            for sender in senders:
                sender.close()
