"""A scripted stand-in for the core, for the client's unit tests: the test plays the server.

FakeCore listens on a free port and hands each accepted connection to the test as a FakePeer,
which reads the client's requests and writes replies and events exactly as the test says, so a
test can cut a connection at any chosen moment. A RecordingConsole stands in for the terminal.
Every wait has a deadline; close() joins the accept thread.
"""

from __future__ import annotations

import contextlib
import json
import queue
import selectors
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

from tests.support.core import WAIT_S


class FakePeer:
    """One accepted connection, as the server sees it."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buffer = b""

    def recv(self, timeout: float = WAIT_S) -> dict[str, Any]:
        """The client's next request (a JSON object); fails if none comes within timeout."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no request within {timeout} s; have {self._buffer!r}")
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(65_536)
            except TimeoutError:
                continue
            if not chunk:
                raise ConnectionError("the client closed the connection")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        obj: dict[str, Any] = json.loads(line)
        return obj

    def expect(self, kind: str, timeout: float = WAIT_S) -> dict[str, Any]:
        obj = self.recv(timeout)
        assert obj.get("type") == kind, f"expected {kind}, got {obj}"
        return obj

    def send(self, **obj: Any) -> None:
        self.sock.sendall(json.dumps(obj).encode() + b"\n")

    def message(self, seq: int, text: str = "", sender: str = "bob", to: str = "*") -> None:
        self.send(type="message", to=to, text=text or f"m{seq}", ts=1_795_610_750.0 + seq,
                  seq=seq,
                  **{"from": sender})

    def welcome(self, request: dict[str, Any], session: str = "tok", seq: int = 0,
                resumed: bool = False, **extra: Any) -> None:
        self.send(type="welcome", name=request["name"], ip="127.0.0.1", port=40000,
                  session=session, seq=seq, resumed=resumed, id=request.get("id"), **extra)

    def expect_closed(self, timeout: float = WAIT_S) -> None:
        """The client closes the connection (reads until the end, within timeout)."""
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            self.sock.settimeout(remaining)
            try:
                if not self.sock.recv(65_536):
                    return
            except TimeoutError:
                break
            except ConnectionResetError:
                return
        raise AssertionError("the client did not close the connection")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


class FakeCore:
    """Accepts connections on 127.0.0.1 and a free port; the test takes them with accept()."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.address: tuple[str, int] = self._listener.getsockname()[:2]
        self._accepted: queue.Queue[FakePeer] = queue.Queue()
        self._peers: list[FakePeer] = []
        self._wake_reader, self._wake_writer = socket.socketpair()
        self._thread = threading.Thread(target=self._accept_loop, name="fake-core")
        self._thread.start()

    def _accept_loop(self) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(self._listener, selectors.EVENT_READ)
            selector.register(self._wake_reader, selectors.EVENT_READ)
            while True:
                ready = selector.select()
                if any(key.fileobj is self._wake_reader for key, _ in ready):
                    return
                sock, _ = self._listener.accept()
                peer = FakePeer(sock)
                self._peers.append(peer)
                self._accepted.put(peer)

    def accept(self, timeout: float = WAIT_S) -> FakePeer:
        """The next connection a client made."""
        try:
            return self._accepted.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no connection within {timeout} s") from None

    def stop_listening(self) -> None:
        """From now on connections are refused (the core is down)."""
        self._wake_writer.send(b"\0")
        self._thread.join(WAIT_S)
        self._listener.close()

    def close(self) -> None:
        if self._thread.is_alive():
            self.stop_listening()
        for peer in self._peers:
            peer.close()
        self._wake_reader.close()
        self._wake_writer.close()


@contextlib.contextmanager
def fake_core() -> Iterator[FakeCore]:
    core = FakeCore()
    try:
        yield core
    finally:
        core.close()


class RecordingConsole:
    """A Console that records what is shown; ask() is not used by these tests."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.interrupted = threading.Event()
        self._changed = threading.Condition()

    @property
    def interactive(self) -> bool:
        return False

    def ask(self, prompt: str, default: str = "") -> str:
        raise AssertionError(f"unexpected question: {prompt!r}")

    def show(self, text: str) -> None:
        with self._changed:
            self.lines.extend(text.split("\n"))
            self._changed.notify_all()

    def interrupt(self) -> None:
        self.interrupted.set()

    def wait_for(self, needle: str, timeout: float = WAIT_S) -> None:
        """Wait until a shown line contains `needle`."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not any(needle in line for line in self.lines):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"never shown: {needle!r}; shown: {self.lines}")
                self._changed.wait(remaining)

    def shown(self) -> list[str]:
        with self._changed:
            return list(self.lines)
