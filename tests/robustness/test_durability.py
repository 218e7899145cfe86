"""Acknowledged means kept: the core killed (SIGKILL) or stopped (SIGTERM) while senders stream,
restarted on the same data directory; every session resumes and gets every acknowledged message
addressed to it exactly once, in seq order."""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from pathlib import Path

import pytest

from tests.support.core import WAIT_S, RawClient
from tests.support.process import CoreProcess

SENDERS = 4
RECIPIENTS = 3
STREAM_S = 0.8


class Recipient:
    """A registered session whose reader thread records every message until the core dies."""

    def __init__(self, address: tuple[str, int], name: str) -> None:
        self.name = name
        self.client = RawClient(address)
        self.token = self.client.hello(name)["session"]
        self.seqs: list[int] = []
        self._reader = threading.Thread(target=self._read, name=f"test-{name}")
        self._reader.start()

    def _read(self) -> None:
        with contextlib.suppress(ConnectionError, TimeoutError, OSError):
            while True:
                obj = self.client.recv(30)
                if obj["type"] == "message":
                    self.seqs.append(obj["seq"])

    def join(self) -> None:
        self._reader.join(WAIT_S)
        assert not self._reader.is_alive()
        self.client.close()

    def resume(self, address: tuple[str, int]) -> None:
        after = max(self.seqs, default=0)
        with RawClient(address) as client:
            client.send(type="hello", name=self.name, resume=self.token, after=after)
            client.expect("welcome", resumed=True)
            while True:
                try:
                    obj = client.recv(0.5)
                except TimeoutError:
                    break
                if obj["type"] == "message":
                    self.seqs.append(obj["seq"])
            client.request("exit")


def stream(address: tuple[str, int], name: str, to: list[str], acked: list[tuple[str, int]],
           stop: threading.Event) -> None:
    """Send until stopped or the core dies; record (recipient, seq) of each acknowledged one."""
    with contextlib.suppress(ConnectionError, TimeoutError, OSError), RawClient(address) as c:
        c.hello(name)
        number = 0
        while not stop.is_set():
            target = to[number % len(to)]
            reply = c.request("send", to=target, text=f"{name} {number}")
            if reply.get("type") == "sent":
                acked.append((target, reply["seq"]))
            number += 1


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM], ids=["kill", "term"])
def test_every_acknowledged_message_reaches_every_session_once_after_a_restart(
    tmp_path: Path, signum: int
) -> None:
    data_dir = str(tmp_path / "data")
    args = ("--data-dir", data_dir, "--rate-limit", "0", "--resume-grace", "60")
    core = CoreProcess(*args)
    try:
        recipients = [Recipient(core.address, f"r{i}") for i in range(RECIPIENTS)]
        acked: list[tuple[str, int]] = []
        stop = threading.Event()
        targets = ["*", *(r.name for r in recipients)]
        senders = [
            threading.Thread(target=stream, args=(core.address, f"s{i}", targets, acked, stop))
            for i in range(SENDERS)
        ]
        for sender in senders:
            sender.start()
        time.sleep(STREAM_S)  # let them stream; then the core goes down under them
        core.proc.send_signal(signum)
        core.proc.wait(WAIT_S)
        stop.set()
        for sender in senders:
            sender.join(WAIT_S)
        for recipient in recipients:
            recipient.join()
    finally:
        core.stop()
    assert len(acked) > 100, f"only {len(acked)} messages were acknowledged"

    restarted = CoreProcess(*args)
    try:
        for recipient in recipients:
            recipient.resume(restarted.address)
    finally:
        restarted.stop()

    for recipient in recipients:
        expected = sorted(seq for target, seq in acked if target in ("*", recipient.name))
        got = recipient.seqs
        assert got == sorted(got), f"{recipient.name}: out of order"
        assert len(got) == len(set(got)), f"{recipient.name}: a message came twice"
        missing = set(expected) - set(got)
        assert not missing, f"{recipient.name}: {len(missing)} acknowledged messages lost"
    print(f"{signal.Signals(signum).name}: {len(acked)} acknowledged; "  # noqa: T201
          + ", ".join(f"{r.name} received {len(r.seqs)}" for r in recipients))
