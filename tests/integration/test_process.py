"""The core as a process: signals, exit codes, flags from the environment."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from tests.support.core import RawClient, wait_until
from tests.support.process import ROOT, CoreProcess, core_process


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


def test_out_of_file_descriptors_refuses_newcomers_and_keeps_serving() -> None:
    launcher = (
        "import resource, sys; resource.setrlimit(resource.RLIMIT_NOFILE, (48, 48)); "
        "from tcp_server.__main__ import main; sys.exit(main(sys.argv[1:]))"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", launcher, "--port", "0"],
        cwd=ROOT, stderr=subprocess.PIPE, text=True,
    )
    core = CoreProcess.attach(proc)
    clients: list[RawClient] = []
    try:
        refused = None
        for number in range(60):
            client = RawClient(core.address)
            clients.append(client)
            client.send(type="hello", name=f"u{number}")
            reply = client.recv()
            if reply["type"] == "error":
                refused = reply
                break
            assert reply["type"] == "welcome"
        assert refused is not None, "never ran out of descriptors"
        assert refused["code"] == "server_full"
        survivors = clients[:-1]
        assert survivors[0].request("exit")["type"] == "bye"
        survivors[0].expect_closed()
        late = RawClient(core.address)
        clients.append(late)

        def joined_late() -> bool:
            """The core frees the descriptor a moment after the client sees the end."""
            nonlocal late
            late.send(type="hello", name="late")
            if late.recv()["type"] == "welcome":
                return True
            late.close()
            late = RawClient(core.address)
            clients.append(late)
            return False

        wait_until(joined_late, what="a descriptor to be free again")
        users = survivors[1].users()
        assert "late" in users
        assert "u0" not in users
        assert len(users) == len(survivors)
    finally:
        for client in clients:
            client.close()
        core.stop()


def _environment_of(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/environ", "rb") as environ:
        entries = environ.read().split(b"\0")
    return dict(entry.decode().split("=", 1) for entry in entries if b"=" in entry)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc and /proc: Linux")
def test_the_core_runs_without_glibcs_per_thread_malloc_caches_unless_told_otherwise() -> None:
    # A thread per client: glibc's per-thread caches cost ~9 KiB per idle client (reclaim.py).
    with core_process() as core:
        assert "glibc.malloc.tcache_count=0" in _environment_of(core.proc.pid)["GLIBC_TUNABLES"]
        with RawClient(core.address) as client:  # the same process, serving
            client.hello("alice")
    with core_process(env={"GLIBC_TUNABLES": "glibc.malloc.tcache_count=3"}) as core:
        assert _environment_of(core.proc.pid)["GLIBC_TUNABLES"] == "glibc.malloc.tcache_count=3"
