"""Test support: a private redis-server process on a free port (never a system service)."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import redis

from tests.support.core import WAIT_S


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """redis-server on 127.0.0.1 in a directory of its own; `durable`: appendonly with an
    fsync per write, so that what it acknowledged survives a kill."""

    def __init__(self, durable: bool = False, port: int | None = None) -> None:
        self.executable = shutil.which("redis-server")
        if self.executable is None:
            raise RuntimeError("redis-server is not installed (scripts/test.sh installs it)")
        self._dir = tempfile.TemporaryDirectory(prefix="chatroom-redis-")
        self.port = port or free_port()
        self.durable = durable
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        persistence = (["--appendonly", "yes", "--appendfsync", "always"] if self.durable
                       else ["--appendonly", "no"])
        self.proc = subprocess.Popen(
            [str(self.executable), "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", *persistence, "--dir", self._dir.name, "--logfile",
             str(Path(self._dir.name) / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, socket_timeout=1, socket_connect_timeout=1)
        deadline = time.monotonic() + WAIT_S
        try:
            while True:
                try:
                    if client.ping():
                        return
                except redis.ConnectionError:
                    if time.monotonic() > deadline or self.proc.poll() is not None:
                        self.stop()
                        raise RuntimeError(f"redis-server did not start on {self.port}"
                                           ) from None
                    time.sleep(0.02)
        finally:
            client.close()

    def kill(self) -> None:
        """SIGKILL: no chance to save anything beyond what it already wrote."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(WAIT_S)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(WAIT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(WAIT_S)

    def flush(self) -> None:
        client = redis.Redis(port=self.port, socket_timeout=WAIT_S)
        try:
            client.flushall()
        finally:
            client.close()

    def close(self) -> None:
        self.stop()
        self._dir.cleanup()


@contextlib.contextmanager
def redis_server(durable: bool = False) -> Iterator[RedisServer]:
    server = RedisServer(durable=durable)
    try:
        yield server
    finally:
        server.close()
