"""Delivery under load: 200 clients send direct and everyone-messages at once.

Each message carries its sender's sequence number in its text. The check: every acknowledged
message reaches every recipient that stayed connected exactly once, and each recipient sees each
sender's messages in the order they were sent. Short-lived clients come and go meanwhile.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Iterator

import pytest

from tcp_server.server import ChatServer
from tests.support.core import WAIT_S, running_server
from tests.support.robustness import CollectingClient

log = logging.getLogger(__name__)

CLIENTS = 200
PER_SENDER = 15  # within the default burst of 60 requests: no message is rate-limited
CHURNERS = 10
CHURNER_MESSAGES = 3


def name(i: int) -> str:
    return f"u{i:03d}"


def recipient(sender: int, seq: int) -> str:
    """Every third message goes to everyone; the others to a different user each time."""
    if seq % 3 == 2:
        return "*"
    return name((sender + 1 + 37 * seq) % CLIENTS)


def request_lines(sender: str, targets: list[str]) -> bytes:
    return b"".join(
        json.dumps({"type": "send", "to": to, "text": f"{sender} {seq}", "id": seq}).encode()
        + b"\n"
        for seq, to in enumerate(targets)
    )


@contextlib.contextmanager
def registered_clients(server: ChatServer, count: int) -> Iterator[list[CollectingClient]]:
    opened: list[CollectingClient] = []
    try:
        for i in range(count):
            # 40 users per address: under the default limit of 50 per address
            client = CollectingClient(server.address, name(i), source=f"127.0.0.{2 + i // 40}")
            opened.append(client)
            client.hello(name(i))
        yield opened
    finally:
        for client in opened:
            client.close()


def churn(server: ChatServer, index: int, failures: list[Exception]) -> None:
    """A client that joins during the load, says a few things to everyone and leaves."""
    label = f"churn{index}"
    try:
        with CollectingClient(server.address, label) as client:
            client.hello(label)
            client.send_raw(request_lines(label, ["*"] * CHURNER_MESSAGES))
            client.wait_until(
                lambda got: sum(1 for o in got if o["type"] == "sent") == CHURNER_MESSAGES,
                WAIT_S, "acknowledged",
            )
            client.send(type="exit")
            client.wait_closed()
    except (OSError, AssertionError) as error:  # reported by the test thread
        failures.append(error)


def messages_by_sender(client: CollectingClient) -> dict[str, list[int]]:
    by_sender: dict[str, list[int]] = {}
    for obj in client.snapshot():
        if obj["type"] == "message":
            sender, seq = obj["text"].split()
            assert obj["from"] == sender
            by_sender.setdefault(sender, []).append(int(seq))
    return by_sender


@pytest.mark.slow
def test_every_acknowledged_message_reaches_every_recipient_once_and_in_order() -> None:
    plans = {name(i): [recipient(i, seq) for seq in range(PER_SENDER)] for i in range(CLIENTS)}
    expected_count = {name(i): 0 for i in range(CLIENTS)}
    for sender, targets in plans.items():
        for to in targets:
            if to == "*":
                for other in expected_count:
                    expected_count[other] += other != sender
            else:
                expected_count[to] += 1
    for other in expected_count:
        expected_count[other] += CHURNERS * CHURNER_MESSAGES

    with running_server() as server, registered_clients(server, CLIENTS) as clients:
        failures: list[Exception] = []
        churners = [threading.Thread(target=churn, args=(server, i, failures),
                                     name=f"test-churn-{i}") for i in range(CHURNERS)]
        for thread in churners[: CHURNERS // 2]:
            thread.start()
        for client in clients:  # everyone at once: each writes all its requests in one go
            client.send_raw(request_lines(client.label, plans[client.label]))
        for thread in churners[CHURNERS // 2 :]:
            thread.start()
        for thread in churners:
            thread.join(30)
        assert not failures, failures[:3]

        for client in clients:
            client.wait_until(
                lambda got: sum(1 for o in got if o["type"] == "sent") == PER_SENDER,
                30, "acknowledged every message",
            )
        for client in clients:
            want = expected_count[client.label]
            client.wait_until(
                lambda got, n=want: sum(1 for o in got if o["type"] == "message") >= n,
                30, f"received {want} messages",
            )

        checked = 0
        for client in clients:
            replies = [o for o in client.snapshot() if isinstance(o.get("id"), int)]
            assert [o["id"] for o in replies if o["type"] == "sent"] == list(range(PER_SENDER))
            assert [o for o in replies if o["type"] != "sent"] == []
            received = messages_by_sender(client)
            for sender, targets in plans.items():
                wanted = [seq for seq, to in enumerate(targets)
                          if (to == "*" and sender != client.label) or to == client.label]
                assert received.get(sender, []) == wanted, (sender, client.label)
                checked += len(wanted)
            for index in range(CHURNERS):
                assert received[f"churn{index}"] == list(range(CHURNER_MESSAGES))
                checked += CHURNER_MESSAGES
            assert sum(len(seqs) for seqs in received.values()) == expected_count[client.label]
        log.info("delivery: %d clients, %d churners, %d deliveries checked", CLIENTS, CHURNERS,
                 checked)
        assert checked == sum(expected_count.values())
