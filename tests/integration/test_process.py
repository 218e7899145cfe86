"""The core as a process: signals, exit codes, flags from the environment."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from tests.support.core import RawClient
from tests.support.process import ROOT, core_process


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_says_bye_to_every_client_and_exits_0_within_2_seconds(signum: int) -> None:
    with core_process() as core:
        clients = [RawClient(core.address) for _ in range(3)]
        try:
            for number, client in enumerate(clients):
                client.hello(f"user{number}")
            core.proc.send_signal(signum)
            started = time.monotonic()
            assert core.proc.wait(timeout=5) == 0
            assert time.monotonic() - started < 2.0
            for client in clients:
                while (obj := client.recv())["type"] != "bye":
                    pass
                assert obj["reason"]
                client.expect_closed()
        finally:
            for client in clients:
                client.close()


def test_flags_can_come_from_the_environment() -> None:
    with core_process(env={"CHAT_MAX_CLIENTS": "1"}) as core, RawClient(core.address) as first:
        first.hello("one")
        with RawClient(core.address) as second:
            second.expect("error", code="server_full")


def test_port_in_use_is_a_clear_error_with_exit_code_2() -> None:
    with core_process() as core:
        result = subprocess.run(
            [sys.executable, "-m", "tcp_server", "--port", str(core.address[1])],
            cwd=ROOT, capture_output=True, text=True, timeout=10,
        )
    assert result.returncode == 2
    assert "cannot listen" in result.stderr
    assert "Traceback" not in result.stderr
