"""The real terminal client (`chat-client`) as a subprocess, driven through a pipe.

In pipe mode the client reads its menu answers from stdin line by line and prints plain lines;
a reader thread collects them so that every wait here has a deadline.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from tests.support.core import WAIT_S


def _command() -> list[str]:
    """The installed `chat-client` script next to this Python, else the module it runs."""
    script = Path(sys.executable).with_name("chat-client")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "cli_client"]


class ChatClientProcess:
    """`chat-client --name NAME` connected to a core; its output lines are kept for waits."""

    def __init__(self, address: tuple[str, int], name: str, *more_hosts: tuple[str, int]) -> None:
        """`more_hosts`: further nodes of the room, for `--host a:1,b:2,...`."""
        self.name = name
        host, port = address
        if more_hosts:
            host = ",".join(f"{h}:{p}" for h, p in (address, *more_hosts))
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONIOENCODING": "utf-8"}
        self.process = subprocess.Popen(
            [*_command(), "--host", host, "--port", str(port), "--name", name],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            text=True,
            encoding="utf-8",
            bufsize=1,
        )
        self._lines: list[str] = []
        self._eof = False
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, name=f"chat-client-out-{name}")
        self._reader.start()

    def __enter__(self) -> ChatClientProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._changed:
                self._lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._eof = True
            self._changed.notify_all()

    @property
    def output(self) -> str:
        """Everything the client printed so far."""
        with self._changed:
            return "\n".join(self._lines)

    def answer(self, *lines: str) -> None:
        """Type these answers to the client's prompts, one line each."""
        assert self.process.stdin is not None
        self.process.stdin.write("".join(line + "\n" for line in lines))
        self.process.stdin.flush()

    def wait_for(self, needle: str, timeout: float = WAIT_S) -> str:
        """The first output line containing `needle`, waiting for it up to `timeout`."""
        deadline = time.monotonic() + timeout

        def found() -> str | None:
            return next((line for line in self._lines if needle in line), None)

        with self._changed:
            while (line := found()) is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._eof:
                    output = "\n".join(self._lines[-40:])
                    raise AssertionError(f"chat-client {self.name} never printed {needle!r}:\n"
                                         f"{output}")
                self._changed.wait(remaining)
            return line

    def send(self, to: str, text: str) -> None:
        """Menu 2: send `text` to `to` ("*" for everyone) and wait for the confirmation."""
        self.answer("2", to, text)
        self.wait_for("Message sent to everyone." if to == "*" else f"Message sent to {to}.")

    def list_users(self) -> list[str]:
        """Menu 1: the lines of the user table the client prints (header and rows)."""
        with self._changed:
            start = len(self._lines)
        self.answer("1")
        deadline = time.monotonic() + WAIT_S
        with self._changed:
            while True:
                for index in range(start, len(self._lines)):
                    if self._lines[index].endswith(("user online:", "users online:")):
                        count = int(self._lines[index].split()[0])
                        rows = self._lines[index + 1 : index + 2 + count]
                        if len(rows) == count + 1:
                            return rows
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._eof:
                    raise AssertionError(f"no user list from chat-client {self.name}:\n"
                                         + "\n".join(self._lines[start:]))
                self._changed.wait(remaining)

    def close(self, timeout: float = WAIT_S) -> int:
        """End the client (end of input means Exit), wait for it, and return its exit code."""
        try:
            if self.process.stdin is not None and not self.process.stdin.closed:
                with contextlib.suppress(BrokenPipeError):  # it has already gone
                    self.process.stdin.close()
            try:
                code = self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                code = self.process.wait(timeout)
        finally:
            self._reader.join(timeout)
            if self.process.stdout is not None:
                self.process.stdout.close()
        return code
