"""The deployment: deploy/provision.sh run here against a scratch root, and its unit files.

The Vagrant VM runs the same script as root against /; here CHAT_ROOT points it at a temporary
directory (no user is created, systemctl is not called), and the tests check what it leaves:
a venv whose chat-server and chat-web work when started exactly as the unit files start them,
a private random secret, unit files that systemd-analyze accepts, and a second run that keeps
the secret.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import signal
import stat
import subprocess
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.core import WAIT_S, RawClient
from tests.support.process import ROOT

PROVISION = ROOT / "deploy" / "provision.sh"
UNITS = ("chat-core.service", "chat-web.service")
SETUP_TIMEOUT_S = 600  # a first run downloads the project's packages


def run_provision(root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CHAT_ROOT": str(root), "CHAT_SRC": str(ROOT), "CHAT_SKIP_APT": "1"}
    env.pop("VIRTUAL_ENV", None)
    return subprocess.run(
        ["bash", str(PROVISION)], env=env, capture_output=True, text=True,
        timeout=SETUP_TIMEOUT_S, check=False,
    )


@pytest.fixture(scope="module")
def provisioned(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A scratch root provisioned once for this module's tests."""
    root = tmp_path_factory.mktemp("vm-root")
    result = run_provision(root)
    assert result.returncode == 0, result.stdout + result.stderr
    return root


def unit_value(unit: Path, key: str) -> str:
    match = re.search(rf"^{key}=(.*)$", unit.read_text(), re.MULTILINE)
    assert match, f"{key} missing from {unit}"
    return match.group(1)


def secret_env(root: Path) -> dict[str, str]:
    line = (root / "etc/chatroom/chatroom.env").read_text().strip()
    key, _, value = line.partition("=")
    return {key: value}


class Service:
    """A unit's ExecStart run as a process, on loopback and a free port instead of 0.0.0.0."""

    def __init__(self, unit: Path, root: Path, extra: list[str], ready: re.Pattern[str]) -> None:
        argv = shlex.split(unit_value(unit, "ExecStart"))
        argv[argv.index("--host") + 1] = "127.0.0.1"
        argv[argv.index("--port") + 1] = "0"
        env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
        self.proc = subprocess.Popen(
            [*argv, *extra], env={**env, **secret_env(root)}, cwd="/",
            stderr=subprocess.PIPE, text=True,
        )
        self.log: list[str] = []
        self.match = self._wait_for(ready)
        self._drain = threading.Thread(target=self._read_log, name="test-service-log")
        self._drain.start()

    def _wait_for(self, ready: re.Pattern[str]) -> re.Match[str]:
        assert self.proc.stderr is not None
        # readline returns at EOF too, so an early exit cannot hang this loop.
        while line := self.proc.stderr.readline():
            self.log.append(line)
            if match := ready.search(line):
                return match
        self.proc.wait(WAIT_S)
        raise AssertionError("the service did not start:\n" + "".join(self.log))

    def _read_log(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.log.append(line)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(3 * WAIT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait(WAIT_S)
        self._drain.join(WAIT_S)
        assert self.proc.stderr is not None
        self.proc.stderr.close()
        return code


@contextlib.contextmanager
def service(unit: Path, root: Path, ready: str, *extra: str) -> Iterator[Service]:
    running = Service(unit, root, list(extra), re.compile(ready))
    try:
        yield running
    finally:
        assert running.stop() == 0, "".join(running.log)


# --- what the script leaves ---------------------------------------------------------------------


@pytest.mark.slow
def test_provisioning_installs_units_that_start_the_installed_venv(provisioned: Path) -> None:
    units = provisioned / "etc/systemd/system"
    app = provisioned / "opt/chatroom"
    core_start = shlex.split(unit_value(units / "chat-core.service", "ExecStart"))
    web_start = shlex.split(unit_value(units / "chat-web.service", "ExecStart"))
    assert core_start == [f"{app}/.venv/bin/chat-server", "--host", "0.0.0.0", "--port", "9000"]
    assert web_start == [f"{app}/.venv/bin/chat-web", "--host", "0.0.0.0", "--port", "8000",
                         "--core", "127.0.0.1:9000"]
    for unit in UNITS:
        env_file = f"{provisioned}/etc/chatroom/chatroom.env"
        assert unit_value(units / unit, "EnvironmentFile") == env_file
        assert unit_value(units / unit, "User") == "chat"
        assert "/opt/chatroom" not in (units / unit).read_text().replace(str(app), "")
    for executable in (core_start[0], web_start[0]):
        assert os.access(executable, os.X_OK), executable


@pytest.mark.slow
def test_provisioning_writes_a_random_secret_only_its_owner_can_read(provisioned: Path) -> None:
    env_file = provisioned / "etc/chatroom/chatroom.env"
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    secret = secret_env(provisioned)["CHAT_GATEWAY_SECRET"]
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", secret)  # token_urlsafe(32): 256 random bits


@pytest.mark.slow
def test_provisioned_core_and_gateway_serve_as_their_units_start_them(provisioned: Path) -> None:
    units = provisioned / "etc/systemd/system"
    with service(units / "chat-core.service", provisioned,
                 r"listening on (\S+):(\d+)") as core:
        core_port = int(core.match.group(2))
        with RawClient(("127.0.0.1", core_port)) as client:
            client.hello("alice")
        with service(units / "chat-web.service", provisioned, r"open http://(\S+):(\d+)/",
                     "--core", f"127.0.0.1:{core_port}") as web:
            page_url = f"http://127.0.0.1:{web.match.group(2)}/"
            with urllib.request.urlopen(page_url, timeout=WAIT_S) as response:
                assert response.status == 200
                assert b"<html" in response.read().lower()


@pytest.mark.slow
def test_provisioning_again_keeps_the_secret(provisioned: Path) -> None:
    before = secret_env(provisioned)
    result = run_provision(provisioned)
    assert result.returncode == 0, result.stdout + result.stderr
    assert secret_env(provisioned) == before


@pytest.mark.slow
@pytest.mark.skipif(not shutil.which("systemd-analyze"),
                    reason="systemd-analyze is not installed (apt-get install systemd)")
def test_installed_unit_files_pass_systemd_analyze_verify(provisioned: Path) -> None:
    units = [str(provisioned / "etc/systemd/system" / unit) for unit in UNITS]
    result = subprocess.run(["systemd-analyze", "verify", *units], capture_output=True,
                            text=True, timeout=60, check=False)
    # verify only warns about unknown keys: any output at all is a finding.
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


# --- the VM --------------------------------------------------------------------------------------


def test_vagrantfile_provisions_with_the_script_and_forwards_both_ports() -> None:
    vagrantfile = (ROOT / "Vagrantfile").read_text()
    assert 'config.vm.box = "debian/bookworm64"' in vagrantfile
    for port in (9000, 8000):
        assert re.search(rf'"forwarded_port", guest: {port}, host: {port}\b', vagrantfile)
    assert 'path: "deploy/provision.sh"' in vagrantfile
    if shutil.which("ruby"):
        result = subprocess.run(["ruby", "-c", str(ROOT / "Vagrantfile")], capture_output=True,
                                text=True, timeout=60, check=False)
        assert result.returncode == 0, result.stderr


def test_unit_files_in_the_repository_bind_every_interface_of_the_vm() -> None:
    for unit in UNITS:
        text = (ROOT / "deploy/systemd" / unit).read_text()
        assert "--host 0.0.0.0" in unit_value(ROOT / "deploy/systemd" / unit, "ExecStart")
        assert "EnvironmentFile=/etc/chatroom/chatroom.env" in text
        # The secret comes from the environment file, never from the command line (ps).
        assert "secret" not in unit_value(ROOT / "deploy/systemd" / unit, "ExecStart").lower()


# --- two nodes through Redis (CHAT_NODES=2) -------------------------------------------------------


@pytest.fixture(scope="module")
def provisioned_nodes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("vm-root-nodes")
    env = {**os.environ, "CHAT_ROOT": str(root), "CHAT_SRC": str(ROOT), "CHAT_SKIP_APT": "1",
           "CHAT_NODES": "2"}
    env.pop("VIRTUAL_ENV", None)
    result = subprocess.run(["bash", str(PROVISION)], env=env, capture_output=True, text=True,
                            timeout=SETUP_TIMEOUT_S, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    return root


def test_two_node_provisioning_installs_the_node_template_and_the_gateway_drop_in(
    provisioned_nodes: Path, redis_url: str
) -> None:
    units = provisioned_nodes / "etc/systemd/system"
    template = units / "chat-core@.service"
    drop_in = units / "chat-web.service.d/nodes.conf"
    nodes_env = provisioned_nodes / "etc/chatroom/nodes.env"
    assert stat.S_IMODE(nodes_env.stat().st_mode) == 0o600
    assert nodes_env.read_text() == "CHAT_REDIS=redis://127.0.0.1:6379/0\n"
    assert "--core 127.0.0.1:9000,127.0.0.1:9001" in drop_in.read_text()
    assert f"EnvironmentFile={provisioned_nodes}/etc/chatroom/nodes.env" in template.read_text()
    # The template's command, as systemd would run chat-core@PORT, serves a room in Redis
    # (the test session's Redis instead of the machine's).
    exec_start = unit_value(template, "ExecStart").replace("%H:%i", "node-a").replace("%i", "0")
    argv = shlex.split(exec_start)
    argv[argv.index("--host") + 1] = "127.0.0.1"
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    proc = subprocess.Popen([*argv, "--redis", redis_url], cwd="/", text=True,
                            env={**env, **secret_env(provisioned_nodes)},
                            stderr=subprocess.PIPE)
    try:
        assert proc.stderr is not None
        listening = None
        while line := proc.stderr.readline():
            if match := re.search(r"listening on (\S+):(\d+)", line):
                listening = (match.group(1), int(match.group(2)))
                break
        assert listening is not None, "the node did not start"
        with RawClient(listening) as client:
            client.hello("vm-user")
            assert client.users() == ["vm-user"]
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(3 * WAIT_S) == 0
        assert proc.stderr is not None
        proc.stderr.close()


@pytest.mark.slow
def test_two_node_unit_files_pass_systemd_analyze_verify(
    provisioned_nodes: Path, tmp_path: Path
) -> None:
    units = provisioned_nodes / "etc/systemd/system"
    instance = tmp_path / "chat-core@9000.service"  # verify wants an instance of the template
    shutil.copy(units / "chat-core@.service", instance)
    result = subprocess.run(["systemd-analyze", "verify", str(instance)], capture_output=True,
                            text=True, timeout=60, check=False)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")
