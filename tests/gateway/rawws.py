"""Raw websocket and HTTP clients for the attack tests: plain sockets from a chosen loopback
address, frames built by hand (masked, as a browser sends them), every read with a timeout;
and the gateway worker's memory from /proc."""

from __future__ import annotations

import base64
import os
import socket
import struct
import time
from pathlib import Path

from tests.support.core import WAIT_S, wait_until


def connect(port: int, source: str = "127.0.0.1") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT_S,
                                    source_address=(source, 0))
    return sock


def handshake(port: int, *, source: str = "127.0.0.1", origin: str | None = None,
              host: str | None = None, extensions: str | None = None,
              forwarded_for: str | None = None) -> tuple[socket.socket, bytes]:
    """Open /ws: the socket and the response head (status line and headers)."""
    sock = connect(port, source)
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        "GET /ws HTTP/1.1",
        f"Host: {host or f'127.0.0.1:{port}'}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
    ]
    if origin is not None:
        lines.append(f"Origin: {origin}")
    if extensions is not None:
        lines.append(f"Sec-WebSocket-Extensions: {extensions}")
    if forwarded_for is not None:
        lines.append(f"X-Forwarded-For: {forwarded_for}")
    head = b""
    try:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(4096)
            if not chunk:
                break
            head += chunk
    except OSError:  # reset (a throttled address), or timed out: not left open
        sock.close()
        raise
    return sock, head


def client_frame(payload: bytes, opcode: int = 0x1, *, rsv1: bool = False) -> bytes:
    """A masked frame as a browser sends it."""
    first = 0x80 | (0x40 if rsv1 else 0) | opcode
    size = len(payload)
    if size < 126:
        head = struct.pack("!BB", first, 0x80 | size)
    elif size < 65_536:
        head = struct.pack("!BBH", first, 0x80 | 126, size)
    else:
        head = struct.pack("!BBQ", first, 0x80 | 127, size)
    mask = os.urandom(4)
    return head + mask + _mask(payload, mask)


def _mask(payload: bytes, mask: bytes) -> bytes:
    if not payload:
        return b""
    repeated = (mask * (len(payload) // 4 + 1))[: len(payload)]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(
        len(payload), "big")


def read_until_closed(sock: socket.socket, timeout: float = WAIT_S) -> bytes:
    """Everything the gateway sends until it closes the connection."""
    sock.settimeout(timeout)
    data = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65_536)
        except (ConnectionResetError, TimeoutError):
            break
        if not chunk:
            break
        data += chunk
    return data


def server_close_code(data: bytes) -> int | None:
    """The code of the first close frame (opcode 8) among the server's frames in `data`."""
    index = 0
    while index + 2 <= len(data):
        opcode, size = data[index] & 0x0F, data[index + 1] & 0x7F
        index += 2
        if size == 126:
            size = struct.unpack("!H", data[index:index + 2])[0]
            index += 2
        elif size == 127:
            size = struct.unpack("!Q", data[index:index + 8])[0]
            index += 8
        payload = data[index:index + size]
        index += size
        if opcode == 0x8:
            return int(struct.unpack("!H", payload[:2])[0]) if len(payload) >= 2 else None
    return None


def get_page(port: int, path: str = "/", source: str = "127.0.0.1") -> tuple[bytes, float]:
    """GET a page on a new connection: its status line and how long it took."""
    started = time.monotonic()
    with connect(port, source) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                     "Connection: close\r\n\r\n".encode())
        data = read_until_closed(sock)
    return data.split(b"\r\n", 1)[0], time.monotonic() - started


def worker_pid(arbiter_pid: int) -> int:
    """gunicorn's one worker: the arbiter's child (it starts after the arbiter is ready)."""
    path = Path(f"/proc/{arbiter_pid}/task/{arbiter_pid}/children")
    wait_until(lambda: bool(path.read_text().split()), what="the gunicorn worker to start")
    children = path.read_text().split()
    assert len(children) == 1, f"expected one gunicorn worker, found {children}"
    return int(children[0])


def memory_kb(pid: int) -> dict[str, int]:
    """VmRSS (now) and VmHWM (the peak so far) of a process, in KiB; and its threads."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "Threads"):
            fields[key] = int(value.split()[0])
    return fields
