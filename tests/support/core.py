"""Test support: a real core on a free port, and a raw protocol-v1 client with timeouts."""

from __future__ import annotations

import collections
import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

from tcp_server.config import ServerConfig
from tcp_server.registry import Room
from tcp_server.server import ChatServer

WAIT_S = 5.0  # the longest any test waits for one expected thing
# A process's start (imports, the core's re-exec, its store, gunicorn's worker): the tests run
# two at a time, and on a loaded 2-core machine a start took over 5 s. Start-up speed is a
# benchmark's business (bench/), not a test's.
START_WAIT_S = 30.0


@contextlib.contextmanager
def running_server(
    config: ServerConfig | None = None, room: Room | None = None, **overrides: Any
) -> Iterator[ChatServer]:
    """A ChatServer on 127.0.0.1 and a free port, serving in a thread; stopped and joined after.
    `room`: another Room than the server's own (a test's, to make a race certain)."""
    config = replace(config or ServerConfig(), **{"host": "127.0.0.1", "port": 0, **overrides})
    server = ChatServer(config, room=room)
    thread = threading.Thread(target=server.serve_forever, name="test-server")
    thread.start()
    try:
        yield server
    finally:
        server.stop()
        thread.join(WAIT_S)
        assert not thread.is_alive(), "server did not stop"


def wait_until(condition: Callable[[], bool], timeout: float = WAIT_S, what: str = "") -> None:
    """Wait for a condition that another thread or process makes true; fail after timeout."""
    deadline = time.monotonic() + timeout
    delay = 0.001
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or condition!r}")
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


class RawClient:
    """A protocol-v1 client over a plain socket; every read has a timeout."""

    def __init__(
        self, address: tuple[str, int], timeout: float = WAIT_S, source: str | None = None
    ) -> None:
        """`source`: the local address to connect from (127.0.0.2, 127.0.0.3, ...: distinct
        client addresses on loopback)."""
        self.sock = socket.create_connection(
            address, timeout=timeout, source_address=(source, 0) if source else None
        )
        self._buffer = b""
        self._skipped: collections.deque[dict[str, Any]] = collections.deque()
        self.name: str | None = None

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send(self, **obj: Any) -> None:
        self.send_raw(json.dumps(obj).encode() + b"\n")

    def recv_line(self, timeout: float = WAIT_S) -> bytes:
        """The next line (without newline); b"" when the server closed the connection."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no line within {timeout} s; have {self._buffer[:200]!r}")
            self.sock.settimeout(remaining)
            chunk = self.sock.recv(65_536)
            if not chunk:
                return b""
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line

    def recv(self, timeout: float = WAIT_S) -> dict[str, Any]:
        """The next object, starting with those that request() skipped over."""
        if self._skipped:
            return self._skipped.popleft()
        return self._recv_new(timeout)

    def _recv_new(self, timeout: float) -> dict[str, Any]:
        line = self.recv_line(timeout)
        if not line:
            raise ConnectionError("server closed the connection")
        obj: dict[str, Any] = json.loads(line)
        return obj

    def expect(self, kind: str, timeout: float = WAIT_S, **fields: Any) -> dict[str, Any]:
        """The next object; it must be of type `kind` and carry `fields`."""
        obj = self.recv(timeout)
        assert obj.get("type") == kind, f"expected {kind} {fields}, got {obj}"
        for key, value in fields.items():
            assert obj.get(key) == value, f"expected {key}={value!r} in {obj}"
        return obj

    def expect_closed(self, timeout: float = WAIT_S) -> None:
        assert self.recv_line(timeout) == b"", "expected the server to close the connection"

    def hello(self, name: str) -> dict[str, Any]:
        self.send(type="hello", name=name)
        welcome = self.expect("welcome", name=name)
        self.name = name
        return welcome

    def request(self, kind: str, **fields: Any) -> dict[str, Any]:
        """Send a request with an id and return the reply carrying that id.

        What arrives before that reply is kept for recv(), so no event is lost to the test.
        """
        request_id = f"r{time.monotonic_ns()}"
        self.send(type=kind, id=request_id, **fields)
        deadline = time.monotonic() + WAIT_S
        while True:
            obj = self._recv_new(max(0.01, deadline - time.monotonic()))
            if obj.get("id") == request_id:
                return obj
            self._skipped.append(obj)

    def users(self) -> list[str]:
        reply = self.request("list")
        assert reply["type"] == "users", reply
        return [user["name"] for user in reply["users"]]

    def assert_silent(self, seconds: float = 0.2) -> None:
        """Nothing arrives for a short while (used only where silence is the behaviour)."""
        assert not self._skipped, f"expected nothing, have {self._skipped[0]}"
        with contextlib.suppress(TimeoutError):
            line = self.recv_line(seconds)
            raise AssertionError(f"expected nothing, got {line!r}")
