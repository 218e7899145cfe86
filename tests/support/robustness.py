"""Test support for the robustness suite: resource snapshots and clients that read on their own.

`CollectingClient` reads its socket in a named thread the whole time (as a real client must), so
a test can send from one thread while events keep arriving, and wait with a deadline for what it
expects. `ResourceSnapshot` records what a leak would grow: threads, file descriptors, memory.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tests.support.core import WAIT_S, wait_until


@dataclass(frozen=True, slots=True)
class ResourceSnapshot:
    """What this process holds at one moment (the core under test runs in-process)."""

    threads: int
    fds: int
    rss_bytes: int

    @classmethod
    def take(cls) -> ResourceSnapshot:
        return cls(threads=threading.active_count(), fds=count_fds(), rss_bytes=rss_bytes())


def count_fds() -> int:
    """Open file descriptors of this process."""
    return len(os.listdir("/proc/self/fd"))


def fd_kinds() -> Counter[str]:
    """This process's open file descriptors by what they are ("socket", "pipe", a file's
    path), for a message that says which ones a count missed or kept."""
    kinds: Counter[str] = Counter()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # closed meanwhile (the listing's own one, too)
            target = os.readlink(f"/proc/self/fd/{fd}")
            kinds[target.split(":", 1)[0] if target.endswith("]") else target] += 1
    return kinds


def rss_bytes() -> int:
    """Resident set size of this process, from /proc/self/statm."""
    with open("/proc/self/statm", encoding="ascii") as statm:
        resident_pages = int(statm.read().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE")


def thread_names() -> list[str]:
    return sorted(thread.name for thread in threading.enumerate())


class CollectingClient:
    """A protocol-v1 client whose reader thread collects every object the server sends.

    All objects land in `received` (in arrival order); `closed` becomes true when the server
    ends the connection. Waits take a deadline. close() ends the socket and joins the reader.
    """

    def __init__(
        self, address: tuple[str, int], label: str, rcvbuf: int | None = None,
        source: str | None = None,
    ) -> None:
        self.label = label
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:  # before connect, so the TCP window is negotiated small
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        if source is not None:  # a distinct client address on loopback (127.0.0.2, ...)
            self.sock.bind((source, 0))
        self.sock.settimeout(WAIT_S)
        self.sock.connect(address)
        self.sock.settimeout(None)  # the reader blocks in recv(); close() wakes it
        self.received: list[dict[str, Any]] = []
        self.closed = False
        self.error: str | None = None  # a reset or an undecodable line, for the assertion text
        self._changed = threading.Condition()  # guards received, closed and error
        self._send_lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, name=f"test-reader-{label}")
        self._reader.start()

    def __enter__(self) -> CollectingClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- sending ----------------------------------------------------------------------------

    def send_raw(self, data: bytes) -> None:
        with self._send_lock:
            self.sock.sendall(data)

    def send(self, **obj: Any) -> None:
        self.send_raw(json.dumps(obj).encode() + b"\n")

    def hello(self, name: str) -> dict[str, Any]:
        self.send(type="hello", name=name, id="hello")
        return self.wait_for(lambda o: o.get("id") == "hello", what=f"{name}'s welcome")

    # --- waiting ------------------------------------------------------------------------------

    def wait_for(
        self,
        match: Callable[[dict[str, Any]], bool],
        timeout: float = WAIT_S,
        what: str = "an object",
    ) -> dict[str, Any]:
        """The first received object that matches (even one that arrived earlier)."""
        found: list[dict[str, Any]] = []

        def present() -> bool:
            found[:] = [obj for obj in self.received if match(obj)][:1]
            return bool(found) or self.closed

        with self._changed:
            if not self._changed.wait_for(present, timeout):
                raise AssertionError(f"{self.label}: no {what} within {timeout} s")
            if not found:
                raise AssertionError(
                    f"{self.label}: closed ({self.error}) before {what}; last "
                    f"{self.received[-3:]}"
                )
            return found[0]

    def wait_until(
        self, condition: Callable[[list[dict[str, Any]]], bool], timeout: float, what: str
    ) -> None:
        """Wait until condition(received) holds; the condition must be cheap."""
        with self._changed:
            if not self._changed.wait_for(lambda: condition(self.received), timeout):
                raise AssertionError(f"{self.label}: not {what} within {timeout} s")

    def wait_closed(self, timeout: float = WAIT_S) -> None:
        with self._changed:
            if not self._changed.wait_for(lambda: self.closed, timeout):
                raise AssertionError(f"{self.label}: still connected after {timeout} s")

    def forget(self) -> list[dict[str, Any]]:
        """Drop (and return) what was received so far: a long test frees the memory."""
        with self._changed:
            received, self.received = self.received, []
        return received

    def snapshot(self) -> list[dict[str, Any]]:
        with self._changed:
            return list(self.received)

    def last(self) -> dict[str, Any] | None:
        with self._changed:
            return self.received[-1] if self.received else None

    # --- ending -------------------------------------------------------------------------------

    def close(self) -> None:
        """Close the socket (the reader wakes from recv) and join the reader thread."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self._reader.join(WAIT_S)
        self.sock.close()
        assert not self._reader.is_alive(), f"{self._reader.name} did not stop"

    def _read(self) -> None:
        buffer = b""
        try:
            while chunk := self.sock.recv(65_536):
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                objects = [json.loads(line) for line in lines]
                if objects:
                    with self._changed:
                        self.received.extend(objects)
                        self._changed.notify_all()
        except (OSError, ValueError) as error:  # a reset, or a line that is not JSON
            self.error = repr(error)
        finally:
            with self._changed:
                self.closed = True
                self._changed.notify_all()


def wait_for_threads(baseline: int, timeout: float) -> None:
    """Wait until this process is back to `baseline` threads (or fewer)."""
    try:
        wait_until(lambda: threading.active_count() <= baseline, timeout, "threads to finish")
    except AssertionError:
        raise AssertionError(
            f"{threading.active_count()} threads, expected {baseline}: {thread_names()}"
        ) from None
