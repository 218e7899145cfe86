"""Test support for the terminal client: it as a subprocess, driven through a pipe or a pty.

Every process is started in a context manager that kills and reaps it; every wait has a
deadline; the threads that read the processes' output are named and joined.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import IO

# Starting a Python process with prompt_toolkit takes a moment on a busy 2-core machine.
CLI_WAIT_S = 10.0
EXIT_WAIT_S = 10.0

# CSI sequences, OSC strings, character-set selections and the short ESC commands.
_ANSI_RE = re.compile(
    rb"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[()][0-9A-Za-z]|\x1b[=>78]"
)


def strip_ansi(data: bytes) -> str:
    """Terminal output without its escape sequences and carriage returns, as text."""
    return _ANSI_RE.sub(b"", data).replace(b"\r", b"").decode("utf-8", errors="replace")


def client_command(port: int, *args: str, host: str = "127.0.0.1") -> list[str]:
    return [sys.executable, "-m", "cli_client", "--host", host, "--port", str(port), *args]


class OutputCollector:
    """Reads a stream in a thread into a growing buffer that tests wait on with deadlines."""

    def __init__(self, read: Callable[[], bytes], name: str) -> None:
        self._read = read
        self._data = bytearray()
        self._ended = False
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._run, name=name)
        self._thread.start()

    def _run(self) -> None:
        try:
            while chunk := self._read():
                with self._changed:
                    self._data += chunk
                    self._changed.notify_all()
        except OSError:  # EIO: the pty's other side has closed
            pass
        finally:
            with self._changed:
                self._ended = True
                self._changed.notify_all()

    @property
    def data(self) -> bytes:
        with self._changed:
            return bytes(self._data)

    def wait(self, predicate: Callable[[bytes], bool], timeout: float, what: str) -> bytes:
        """Wait until predicate(all output so far) holds; return the output."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not predicate(bytes(self._data)):
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._ended:
                    raise AssertionError(
                        f"timed out waiting for {what}; output so far:\n"
                        + bytes(self._data).decode("utf-8", errors="replace")[-3000:]
                    )
                self._changed.wait(remaining)
            return bytes(self._data)

    def wait_ended(self, timeout: float) -> None:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "output stream did not end"


class ClientProcess:
    """chat-client as a subprocess. In pipe mode stdin/stdout are pipes; in pty mode a terminal.

    wait_for(text) waits until `text` appears in the output after the point the previous
    wait_for() matched, so a test reads the output in order, like a user.
    """

    def __init__(self, argv: Sequence[str], *, pty_mode: bool = False) -> None:
        self.pty_mode = pty_mode
        self._cursor = 0
        env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
        self.stderr: OutputCollector | None = None
        if pty_mode:
            master, slave = os.openpty()
            fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
            # Nothing answers prompt_toolkit's cursor-position request in a bare pty.
            env.update(TERM="xterm", PROMPT_TOOLKIT_NO_CPR="1")
            self.proc = subprocess.Popen(
                argv, stdin=slave, stdout=slave, stderr=slave, env=env, start_new_session=True
            )
            os.close(slave)
            self._master: int | None = master
            self.stdout = OutputCollector(partial_read(master), "pty-reader")
        else:
            self._master = None
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                env=env,
            )
            assert self.proc.stdout is not None
            assert self.proc.stderr is not None
            self.stdout = OutputCollector(partial_read(self.proc.stdout), "client-stdout")
            self.stderr = OutputCollector(partial_read(self.proc.stderr), "client-stderr")

    def text(self) -> str:
        """All output so far (escape sequences removed in pty mode)."""
        return strip_ansi(self.stdout.data)

    def mark(self) -> int:
        """A position in the output, for wait_for(since=...)."""
        return len(self.text())

    def wait_for(
        self, text: str, timeout: float = CLI_WAIT_S, since: int | None = None
    ) -> str:
        """Wait until `text` appears in the output; return the output up to its end.

        Without `since`, it must appear after the previous ordered match, and it becomes the
        new starting point (for following a dialogue step by step). With `since` (from
        mark()), it may appear anywhere after that point and the starting point stays (for
        events, which may come before or after the prompts around them).
        """
        start = self._cursor if since is None else since

        def found(data: bytes) -> bool:
            return strip_ansi(data).find(text, start) >= 0

        output = strip_ansi(self.stdout.wait(found, timeout, repr(text)))
        end = output.find(text, start) + len(text)
        if since is None:
            self._cursor = end
        return output[start:end]

    def write(self, data: str) -> None:
        """Type `data` (pty) or write it to stdin (pipe)."""
        raw = data.encode("utf-8")
        if self._master is not None:
            os.write(self._master, raw)
        else:
            assert self.proc.stdin is not None
            self.proc.stdin.write(raw)
            self.proc.stdin.flush()

    def line(self, text: str) -> None:
        """Answer a prompt: `text` and Enter."""
        self.write(text + ("\r" if self.pty_mode else "\n"))

    def close_stdin(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()

    def wait_exit(self, timeout: float = EXIT_WAIT_S) -> int:
        return self.proc.wait(timeout)

    def stderr_text(self) -> str:
        return self.stderr.data.decode("utf-8", errors="replace") if self.stderr else ""

    def kill(self) -> None:
        """Kill (if still running), reap, and join the reader threads."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(EXIT_WAIT_S)
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):  # BrokenPipe: it had exited
                self.proc.stdin.close()
        if self._master is not None:
            # Closing the master first would lose the reader's EIO; the child is gone, so the
            # reader ends on EIO by itself.
            self.stdout.wait_ended(EXIT_WAIT_S)
            os.close(self._master)
        else:
            self.stdout.wait_ended(EXIT_WAIT_S)
            assert self.stderr is not None
            self.stderr.wait_ended(EXIT_WAIT_S)
            assert self.proc.stdout is not None
            assert self.proc.stderr is not None
            self.proc.stdout.close()
            self.proc.stderr.close()


def partial_read(source: int | IO[bytes]) -> Callable[[], bytes]:
    """A function reading whatever is available (at most 64 KiB); b"" at the end."""
    if isinstance(source, int):
        return lambda: os.read(source, 65_536)
    return lambda: os.read(source.fileno(), 65_536)


@contextlib.contextmanager
def running_client(argv: Sequence[str], *, pty_mode: bool = False) -> Iterator[ClientProcess]:
    client = ClientProcess(argv, pty_mode=pty_mode)
    try:
        yield client
    finally:
        client.kill()
