"""SIGTERM with messages in flight: a real `python -m tcp_server` process is stopped mid-stream.

The promise checked: the process exits 0 within its shutdown timeout and a second, every
client gets a bye with a reason as its last line, and every message the server acknowledged
with "sent" reached its recipients (exactly once, in the order it was sent) before that bye.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections.abc import Iterator

from tests.support.core import WAIT_S
from tests.support.process import core_process
from tests.support.robustness import CollectingClient

log = logging.getLogger(__name__)

# The shutdown timeout (1.5 s) and a second, as the restart issue asks: 2.0 s failed once in
# five full runs with the tests two at a time (the other worker's test beside it).
STOP_BOUND_S = 1.5 + 1.0
RECIPIENTS = [f"rcpt{i}" for i in range(4)]
SENDERS = [f"sndr{i}" for i in range(4)]
BATCH = 20


def stream_messages(client: CollectingClient, stop: threading.Event) -> None:
    """Send numbered messages, in batches, to each recipient in turn and to everyone."""
    seq = 0
    with contextlib.suppress(OSError):  # the server closed the connection: the end of it
        while not stop.is_set() and not client.closed:
            lines = []
            for _ in range(BATCH):
                to = "*" if seq % 5 == 4 else RECIPIENTS[seq % 4]
                lines.append(
                    b'{"type":"send","to":"%s","text":"%s %d","id":%d}\n'
                    % (to.encode(), client.label.encode(), seq, seq)
                )
                seq += 1
            client.send_raw(b"".join(lines))


@contextlib.contextmanager
def registered(address: tuple[str, int], names: list[str]) -> Iterator[list[CollectingClient]]:
    opened: list[CollectingClient] = []
    try:
        for name in names:
            client = CollectingClient(address, name)
            opened.append(client)
            client.hello(name)
        yield opened
    finally:
        for client in opened:
            client.close()


def messages_from(client: CollectingClient, sender: str) -> list[int]:
    return [int(o["text"].split()[1]) for o in client.snapshot()
            if o["type"] == "message" and o["from"] == sender]


def test_sigterm_with_messages_in_flight_delivers_every_acknowledged_message() -> None:
    with core_process("--rate-limit", "0") as core, registered(
        core.address, RECIPIENTS + SENDERS  # recipients first: they are closed first
    ) as everyone:
        recipients, senders = everyone[: len(RECIPIENTS)], everyone[len(RECIPIENTS) :]
        stop = threading.Event()
        streams = [threading.Thread(target=stream_messages, args=(s, stop),
                                    name=f"test-stream-{s.label}") for s in senders]
        for thread in streams:
            thread.start()
        try:
            for client in recipients:  # the stream is well under way everywhere
                client.wait_until(
                    lambda got: sum(1 for o in got if o["type"] == "message") >= 200,
                    WAIT_S, "200 messages",
                )
            started = time.monotonic()
            core.proc.send_signal(signal.SIGTERM)
            exit_code = core.proc.wait(STOP_BOUND_S)
            log.info("SIGTERM with messages in flight: stopped in %.2f s",
                     time.monotonic() - started)
            for client in everyone:
                client.wait_closed()
        finally:
            stop.set()
            for thread in streams:
                thread.join(WAIT_S)
        assert exit_code == 0

        for client in everyone:
            last = client.last()
            assert last is not None
            assert last["type"] == "bye", f"{client.label} ended with {last} ({client.error})"
            assert last.get("reason"), last

        checked = in_flight = 0
        for sender in senders:
            replies = [o for o in sender.snapshot() if isinstance(o.get("id"), int)]
            acked = [o["id"] for o in replies if o["type"] == "sent"]
            assert [o for o in replies if o["type"] != "sent"] == []
            assert acked == list(range(len(acked)))  # acknowledged in order, none skipped
            for client in everyone:
                if client is sender:
                    continue
                expected = [seq for seq in acked
                            if seq % 5 == 4 or RECIPIENTS[seq % 4] == client.label]
                got = messages_from(client, sender.label)
                # Exactly once and in order: what was acknowledged, then perhaps messages that
                # were delivered but whose "sent" the shutdown cut off.
                assert got[: len(expected)] == expected, (sender.label, client.label)
                assert got == sorted(set(got))
                checked += len(expected)
                in_flight += len(got) - len(expected)
        log.info("SIGTERM: %d acknowledged deliveries checked, %d delivered without an ack",
                 checked, in_flight)
        assert checked > 0
