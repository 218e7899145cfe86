"""Test support: the web gateway in-process (werkzeug) or as a process (gunicorn), and a
websocket client for it (websocket-client) with a timeout on every read."""

from __future__ import annotations

import contextlib
import json
import os
import re
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import websocket
from werkzeug.serving import BaseWSGIServer, make_server

from tests.support.core import START_WAIT_S, WAIT_S, wait_until
from tests.support.process import ROOT
from web_gateway import create_app, gateway_of
from web_gateway.config import GatewayConfig

SECRET = "test-gateway-secret"


class InProcessGateway:
    """A gateway app served by werkzeug's threaded server on a free port, in a thread."""

    def __init__(self, config: GatewayConfig) -> None:
        self.app = create_app(replace(config, host="127.0.0.1", port=0))
        self.server: BaseWSGIServer = make_server("127.0.0.1", 0, self.app, threaded=True)
        self.port = self.server.server_port
        self.url = f"ws://127.0.0.1:{self.port}/ws"
        self.origin = f"http://127.0.0.1:{self.port}"
        self.http = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.server.serve_forever, name="test-gateway")

    @property
    def relays(self) -> Any:
        return gateway_of(self.app).relays

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        relays = gateway_of(self.app).relays
        relays.stop_all()
        idle = relays.wait_stopped(WAIT_S)
        self.server.shutdown()
        self._thread.join(WAIT_S)
        self.server.server_close()
        assert idle, "websockets still open after stop_all()"
        assert not self._thread.is_alive(), "the gateway's server did not stop"


@contextlib.contextmanager
def running_gateway(config: GatewayConfig) -> Iterator[InProcessGateway]:
    gateway = InProcessGateway(config)
    gateway.start()
    try:
        yield gateway
    finally:
        gateway.stop()
        # Every relay thread was joined by its relay: none may outlive the gateway.
        wait_until(lambda: not relay_threads(), what="relay threads to end")


def relay_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("relay-")]


class WsClient:
    """A browser stand-in: one protocol-v1 object per text frame; every read has a timeout."""

    def __init__(self, url: str, origin: str | None = None, **options: Any) -> None:
        if origin is None:
            options.setdefault("suppress_origin", True)
        self.ws = websocket.create_connection(url, timeout=WAIT_S, origin=origin, **options)
        self.close_code: int | None = None
        self.close_reason: str | None = None

    def __enter__(self) -> WsClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.ws.close(timeout=1)  # a no-op once the gateway closed: then only the socket is left
        self.ws.shutdown()

    @property
    def address(self) -> tuple[str, int]:
        """The client's own TCP address: the one the gateway must report for it."""
        ip, port = self.ws.sock.getsockname()[:2]
        return ip, port

    def send(self, **obj: Any) -> None:
        self.ws.send(json.dumps(obj))

    def send_text(self, text: str) -> None:
        self.ws.send(text)

    def recv_frame(self, timeout: float = WAIT_S) -> str | None:
        """The next text frame; None once the gateway has closed (see close_code)."""
        self.ws.settimeout(timeout)
        opcode, frame = self.ws.recv_data_frame(control_frame=False)
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            data = frame.data
            self.close_code = struct.unpack("!H", data[:2])[0] if len(data) >= 2 else None
            self.close_reason = data[2:].decode("utf-8")
            return None
        assert opcode == websocket.ABNF.OPCODE_TEXT, f"expected a text frame, got {opcode}"
        text: str = frame.data.decode("utf-8") if isinstance(frame.data, bytes) else frame.data
        return text

    def recv(self, timeout: float = WAIT_S) -> dict[str, Any]:
        text = self.recv_frame(timeout)
        if text is None:
            raise ConnectionError(f"closed: {self.close_code} {self.close_reason!r}")
        obj: dict[str, Any] = json.loads(text)
        return obj

    def expect(self, kind: str, timeout: float = WAIT_S, **fields: Any) -> dict[str, Any]:
        obj = self.recv(timeout)
        assert obj.get("type") == kind, f"expected {kind} {fields}, got {obj}"
        for key, value in fields.items():
            assert obj.get(key) == value, f"expected {key}={value!r} in {obj}"
        return obj

    def expect_close(self, timeout: float = WAIT_S) -> tuple[int | None, str | None]:
        """The gateway closes the websocket next: its close code and reason."""
        text = self.recv_frame(timeout)
        assert text is None, f"expected the websocket to close, got {text!r}"
        return self.close_code, self.close_reason

    def hello(self, name: str) -> dict[str, Any]:
        self.send(type="hello", name=name)
        return self.expect("welcome", name=name)

    def request(self, kind: str, **fields: Any) -> dict[str, Any]:
        """Send a request with an id; return the reply carrying it, skipping events."""
        request_id = f"r{time.monotonic_ns()}"
        self.send(type=kind, id=request_id, **fields)
        deadline = time.monotonic() + WAIT_S
        while True:
            obj = self.recv(max(0.01, deadline - time.monotonic()))
            if obj.get("id") == request_id:
                return obj


# --- the gateway as a process ------------------------------------------------------------------

_OPEN = re.compile(r"open http://(\S+):(\d+)/")


class GatewayProcess:
    """`python -m web_gateway` (gunicorn) on a free port; its log is kept for assertions."""

    def __init__(self, *args: str, env: dict[str, str] | None = None,
                 static_dir: Path | None = None) -> None:
        argv = [sys.executable, "-m", "web_gateway", "--port", "0", *args]
        if static_dir is not None:
            argv += ["--static-dir", str(static_dir)]
        self.proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            env={**os.environ, "CHAT_GATEWAY_SECRET": SECRET, **(env or {})},
            stderr=subprocess.PIPE,
            text=True,
        )
        self.log: list[str] = []
        self.port = self._read_port()
        self.url = f"ws://127.0.0.1:{self.port}/ws"
        self.origin = f"http://127.0.0.1:{self.port}"
        # Keep draining stderr so that the process never blocks on a full pipe.
        self._drain = threading.Thread(target=self._read_log, name="test-gateway-log")
        self._drain.start()

    def _read_port(self) -> int:
        assert self.proc.stderr is not None
        deadline = time.monotonic() + START_WAIT_S
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()  # returns at EOF too: no hang on early exit
            if not line:
                break
            self.log.append(line)
            if match := _OPEN.search(line):
                return int(match.group(2))
        self.proc.kill()
        self.proc.wait(WAIT_S)
        self.proc.stderr.close()
        raise AssertionError(f"the gateway did not start: {''.join(self.log)}")

    def _read_log(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.log.append(line)

    def stop(self) -> None:
        # SIGTERM, not SIGKILL: a killed arbiter would leave its worker behind for a while.
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(3 * WAIT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(WAIT_S)
        self._drain.join(WAIT_S)
        if self.proc.stderr:
            self.proc.stderr.close()


@contextlib.contextmanager
def gateway_process(*args: str, **kwargs: Any) -> Iterator[GatewayProcess]:
    gateway = GatewayProcess(*args, **kwargs)
    try:
        yield gateway
    finally:
        gateway.stop()
