"""Test support: the core as a real `python -m tcp_server` process on a free port."""

from __future__ import annotations

import contextlib
import os
import queue
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from tests.support.core import START_WAIT_S, WAIT_S

ROOT = Path(__file__).resolve().parents[2]
_LISTENING = re.compile(r"listening on (\S+):(\d+)")


class CoreProcess:
    """A core process whose log (stderr) is read all along by a thread, so that it never
    blocks on a full pipe; `log_lines` keeps what it said."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        # A store of its own, removed with the process, unless the test gives one.
        self._data_dir = None if "--data-dir" in args else tempfile.TemporaryDirectory(
            prefix="chatroom-core-"
        )
        if self._data_dir is not None:
            args = ("--data-dir", self._data_dir.name, *args)
        proc = subprocess.Popen(
            # INFO at least: the address is read from the "listening on" line.
            [sys.executable, "-m", "tcp_server", "--port", "0", *args, "--log-level", "INFO"],
            cwd=ROOT,
            env={**os.environ, **(env or {})},
            stderr=subprocess.PIPE,
            text=True,
        )
        self._attach(proc)

    @classmethod
    def attach(cls, proc: subprocess.Popen[str]) -> CoreProcess:
        """Wrap a core started some other way (stderr piped, as text, logging at INFO)."""
        core = cls.__new__(cls)
        core._data_dir = None
        core._attach(proc)
        return core

    def _attach(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.log_lines: list[str] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._drain = threading.Thread(target=self._read_log, name="test-core-log")
        self._drain.start()
        self.address = self._read_address()

    def _read_log(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.log_lines.append(line)
            self._lines.put(line)
        self._lines.put(None)  # the process closed its stderr: it has ended

    def _read_address(self) -> tuple[str, int]:
        deadline = time.monotonic() + START_WAIT_S
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                line = self._lines.get(timeout=remaining)
            except queue.Empty:
                break
            if line is None:
                break
            if match := _LISTENING.search(line):
                return match.group(1), int(match.group(2))
        self.stop()
        raise AssertionError(f"the core did not start: {''.join(self.log_lines)[-2000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(WAIT_S)
        self._drain.join(WAIT_S)
        if self.proc.stderr:
            self.proc.stderr.close()
        if self._data_dir is not None:
            self._data_dir.cleanup()


@contextlib.contextmanager
def core_process(*args: str, env: dict[str, str] | None = None) -> Iterator[CoreProcess]:
    core = CoreProcess(*args, env=env)
    try:
        yield core
    finally:
        core.stop()
