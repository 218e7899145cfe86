"""Test support: the core as a real `python -m tcp_server` process on a free port."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from tests.support.core import WAIT_S

ROOT = Path(__file__).resolve().parents[2]
_LISTENING = re.compile(r"listening on (\S+):(\d+)")


class CoreProcess:
    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tcp_server", "--port", "0", *args],
            cwd=ROOT,
            env={**os.environ, **(env or {})},
            stderr=subprocess.PIPE,
            text=True,
        )
        self.address = self._read_address()

    @classmethod
    def attach(cls, proc: subprocess.Popen[str]) -> CoreProcess:
        """Wrap a core started some other way (stderr piped, as text)."""
        core = cls.__new__(cls)
        core.proc = proc
        core.address = core._read_address()
        return core

    def _read_address(self) -> tuple[str, int]:
        assert self.proc.stderr is not None
        deadline = time.monotonic() + WAIT_S
        # The core logs "listening on HOST:PORT" as soon as it is bound; readline returns at
        # EOF too, so an early exit cannot hang this loop.
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                break
            if match := _LISTENING.search(line):
                return match.group(1), int(match.group(2))
        self.proc.kill()
        raise AssertionError(f"the core did not start (exit code {self.proc.wait(WAIT_S)})")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(WAIT_S)
        if self.proc.stderr:
            self.proc.stderr.close()


@contextlib.contextmanager
def core_process(*args: str, env: dict[str, str] | None = None) -> Iterator[CoreProcess]:
    core = CoreProcess(*args, env=env)
    try:
        yield core
    finally:
        core.stop()
