"""Test support: a client of the plain-text dialect, scaffold-style or nc-style."""

from __future__ import annotations

import socket
import time

from tests.support.core import WAIT_S

Address = tuple[str, int]


class TextClient:
    """A plain-text client. `scaffold` ones send each command with one bare send() and no
    newline, and read with recv(1024), like the assignment's client.py; others end commands
    with a newline, like nc."""

    def __init__(self, address: Address, scaffold: bool) -> None:
        self.sock = socket.create_connection(address, timeout=WAIT_S)
        self.scaffold = scaffold
        self._buffer = b""

    def close(self) -> None:
        self.sock.close()

    def command(self, text: str | bytes) -> None:
        data = text.encode() if isinstance(text, str) else text
        self.sock.send(data if self.scaffold else data + b"\n")

    def line(self) -> str:
        deadline = time.monotonic() + WAIT_S
        while b"\n" not in self._buffer:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            chunk = self.sock.recv(1024)
            if not chunk:
                raise ConnectionError(f"closed; have {self._buffer!r}")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.decode()

    def line_with(self, fragment: str) -> str:
        """The next line that contains fragment (events may come first)."""
        while fragment not in (line := self.line()):
            pass
        return line

    def closed(self) -> bool:
        self.sock.settimeout(WAIT_S)
        return self.sock.recv(1024) == b""

    def join(self, name: str) -> str:
        """Send the username and read the whole welcome: its line, the line that says how to
        resume (returns that command) and the recent messages to everyone."""
        self.command(name)
        welcome = self.line()
        assert welcome.startswith(f"welcome {name}!"), welcome
        hint = self.line()
        assert hint.startswith("if you are disconnected"), hint
        resume = hint[hint.index("resume "):]
        heading = self.line()
        if heading.startswith("last "):
            for _ in range(int(heading.split()[1])):
                self.line()
        else:
            assert heading == "no messages to everyone yet", heading
        return resume

