"""Issue 11's attacks on the web gateway at full size, with figures (not part of the tests).

    .venv/bin/python bench/attacks.py                  # this checkout's gateway
    .venv/bin/python bench/attacks.py --root DIR       # another checkout's (e.g. the one before)
    .venv/bin/python bench/attacks.py --only cost,bomb # some attacks only

Starts a core (`--store memory`, no per-address limit, 12,000 clients) and a gateway
(`--max-websockets-per-ip 0` unless the attack is the per-address one, and
`--max-opens-per-ip 0` where ROOT has it) from ROOT, as processes,
and reports per attack what the gateway's worker process costs (RSS from /proc, threads) and
whether a page and a new websocket still open. Client addresses come from 127.0.0.0/8.
The tests (tests/gateway/test_attacks.py) run the same attacks at smaller sizes.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import signal
import socket
import subprocess
import sys
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(HERE))

from tests.gateway.rawws import (  # noqa: E402  (after the path is set)
    client_frame,
    connect,
    get_page,
    handshake,
    memory_kb,
    read_until_closed,
    server_close_code,
)

SECRET = "bench-attack-secret"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_listening(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"exited with {process.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"not listening on {port}")


def stop(process: subprocess.Popen[bytes]) -> float:
    started = time.monotonic()
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return time.monotonic() - started


@contextlib.contextmanager
def core(root: Path) -> Iterator[int]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "tcp_server", "--port", str(port), "--max-clients", "12000",
         "--max-clients-per-ip", "0", "--store", "memory", "--rate-limit", "0",
         "--log-level", "WARNING", "--gateway-secret", SECRET],
        cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        # As a variable: a checkout from before the join limit had no such flag.
        env={**os.environ, "CHAT_MAX_JOINS_PER_IP": "0",
             "CHAT_MAX_CONNECTS_PER_IP": "0"})
    try:
        wait_listening(port, process)
        yield port
    finally:
        stop(process)


class Gateway:
    def __init__(self, process: subprocess.Popen[bytes], port: int) -> None:
        self.process = process
        self.port = port
        self.origin = f"http://127.0.0.1:{port}"

    @property
    def worker(self) -> int:
        path = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        deadline = time.monotonic() + 10
        while not (children := path.read_text().split()):
            if time.monotonic() > deadline:
                raise RuntimeError("no gunicorn worker")
            time.sleep(0.05)
        return int(children[0])

    def memory(self) -> dict[str, int]:
        return memory_kb(self.worker)


@contextlib.contextmanager
def gateway(root: Path, core_port: int, *args: str) -> Iterator[Gateway]:
    port = free_port()
    static = Path("/tmp/chat-attack-static")
    static.mkdir(exist_ok=True)
    (static / "index.html").write_text("<!doctype html><title>attack</title>\n")
    if "--max-opens-per-ip" in (root / "web_gateway" / "config.py").read_text():
        # Attacks come from few addresses, in loops: not what this limit is measured by.
        args = ("--max-opens-per-ip", "0", *args)
    process = subprocess.Popen(
        [sys.executable, "-m", "web_gateway", "--port", str(port), "--core",
         f"127.0.0.1:{core_port}", "--static-dir", str(static), "--log-level", "WARNING", *args],
        cwd=root, env={**os.environ, "CHAT_GATEWAY_SECRET": SECRET},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_listening(port, process)
        gw = Gateway(process, port)
        get_page(port)  # the worker has loaded the app
        yield gw
    finally:
        stop(process)


def sources(count: int, per_address: int, subnet: int) -> Iterator[str]:
    for index in range(count):
        host = index // per_address + 1
        yield f"127.{subnet}.{host // 250}.{host % 250 + 1}"


def idle_websockets(stack: ExitStack, gw: Gateway, count: int, subnet: int) -> int:
    opened = 0
    for source in sources(count, 25, subnet):
        try:
            sock, head = handshake(gw.port, source=source, origin=gw.origin)
        except OSError:
            continue
        stack.enter_context(sock)
        opened += head.startswith(b"HTTP/1.1 101")
    return opened


def half_sent(stack: ExitStack, gw: Gateway, count: int, subnet: int) -> None:
    for source in sources(count, 25, subnet):
        with contextlib.suppress(OSError):
            sock = stack.enter_context(connect(gw.port, source))
            sock.sendall(f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{gw.port}\r\n".encode())


def page_and_websocket(gw: Gateway) -> str:
    """Time to get a page, and to open a websocket and be welcomed, on fresh connections."""
    try:
        status, page_s = get_page(gw.port, source="127.0.0.1")
        page = f"page {page_s:.3f} s" if status.endswith(b"200 OK") else f"page {status!r}"
    except OSError as error:
        page = f"page failed ({error})"
    started = time.monotonic()
    try:
        sock, head = handshake(gw.port, source="127.0.0.1", origin=gw.origin)
        with sock:
            if not head.startswith(b"HTTP/1.1 101"):
                return f"{page}, websocket refused {head[:40]!r}"
            sock.sendall(client_frame(b'{"type":"hello","name":"probe"}'))
            sock.settimeout(10)
            data = b""
            while b"welcome" not in data:
                chunk = sock.recv(65_536)
                if not chunk:
                    break
                data += chunk
            if b"welcome" not in data:
                return f"{page}, websocket got no welcome"
        return f"{page}, websocket welcomed in {time.monotonic() - started:.3f} s"
    except OSError as error:
        return f"{page}, websocket failed after {time.monotonic() - started:.1f} s ({error})"


# --- the attacks -----------------------------------------------------------------------------


def attack_slowloris(root: Path, core_port: int) -> list[str]:
    out = []
    with gateway(root, core_port, "--max-websockets-per-ip", "0", "--max-websockets",
                 "5000") as gw, ExitStack() as stack:
        opened = idle_websockets(stack, gw, 2000, subnet=1)
        half_sent(stack, gw, 2000, subnet=2)
        time.sleep(0.5)
        out.append(f"2,000 half-sent requests + {opened:,} idle websockets held: "
                   f"{page_and_websocket(gw)}")
    return out


def attack_cost(root: Path, core_port: int) -> list[str]:
    out = []
    with gateway(root, core_port, "--max-websockets-per-ip", "0", "--max-websockets",
                 "5000") as gw, ExitStack() as stack:
        base = gw.memory()
        held = 0
        for count in (50, 200, 500, 2000, 5000):
            held += idle_websockets(stack, gw, count - held, subnet=3 + count // 1000)
            time.sleep(1.0)
            now = gw.memory()
            out.append(f"{held:,} websockets: {now['Threads']} threads, RSS {now['VmRSS']:,} KB "
                       f"({(now['VmRSS'] - base['VmRSS']) / held:.1f} KB each over "
                       f"{base['VmRSS']:,} KB at 0)")
        out.append(f"5,000 open: {page_and_websocket(gw)}")
        stack.close()
        # The worker's memory upkeep runs every 5 s, once websockets have ended: RSS as they go.
        samples = []
        for _ in range(6):
            time.sleep(2)
            samples.append(f"{gw.memory()['VmRSS'] // 1024} MB")
        after = gw.memory()
        out.append(f"after all closed: every 2 s {', '.join(samples)}; then {after['Threads']} "
                   f"threads, RSS {after['VmRSS']:,} KB ({after['VmRSS'] / base['VmRSS']:.2f}x "
                   "fresh)")
    return out


def bomb_payload() -> bytes:
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    zeros = bytes(1_048_576)
    payload = b"".join(deflate.compress(zeros) for _ in range(500)) + deflate.flush(
        zlib.Z_SYNC_FLUSH)
    return payload[:-4]


def attack_bomb(root: Path, core_port: int) -> list[str]:
    payload = bomb_payload()
    out = []
    with gateway(root, core_port, "--max-websockets-per-ip", "0") as gw:
        page_and_websocket(gw)  # the first websocket's one-time costs are not the bomb's
        before = gw.memory()

        def bomb(source: str) -> tuple[bytes, socket.socket]:
            sock, head = handshake(gw.port, source=source, origin=gw.origin,
                                   extensions="permessage-deflate; client_max_window_bits")
            with contextlib.suppress(OSError):
                sock.sendall(client_frame(payload, rsv1=True))
            return head, sock

        head, sock = bomb("127.0.9.1")
        with sock:
            code = server_close_code(read_until_closed(sock, 60))
        one = gw.memory()
        out.append(f"one {len(payload) // 1024} KB frame inflating to 500 MB: compression "
                   f"{'offered' if b'permessage-deflate' in head.lower() else 'not negotiated'}"
                   f", close {code}, peak RSS +{one['VmHWM'] - before['VmHWM']:,} KB")
        pairs = [bomb(f"127.0.9.{index + 2}") for index in range(24)]
        codes = []
        for _, sock in pairs:
            with sock:
                codes.append(server_close_code(read_until_closed(sock, 120)))
        time.sleep(6)
        after = gw.memory()
        out.append(f"24 at once: closes {sorted(set(codes), key=str)}, peak RSS "
                   f"+{after['VmHWM'] - one['VmHWM']:,} KB, kept +"
                   f"{after['VmRSS'] - before['VmRSS']:,} KB")
    return out


def attack_one_address(root: Path, core_port: int) -> list[str]:
    # Opened at once: an idle websocket (no hello) is closed by the core after its hello
    # timeout, 10 s, which would free places while this runs.
    with gateway(root, core_port) as gw, ExitStack() as stack:
        pairs = []
        reset = 0  # past --max-refusals the address's attempts are reset when accepted
        for _ in range(600):
            try:
                sock, head = handshake(gw.port, source="127.0.10.1", origin=gw.origin)
            except OSError:
                reset += 1
                continue
            pairs.append((stack.enter_context(sock), head))
        time.sleep(1.0)
        refused = 0
        for sock, head in pairs:
            sock.setblocking(False)
            try:
                data = head + sock.recv(65_536)  # the head's read may hold the first frames
            except BlockingIOError:
                data = head
            refused += b"too many" in data or b"full" in data
        return [f"one address opening 600 websockets at once: {len(pairs) - refused} held, "
                f"{refused} refused, {reset} reset; another address then: "
                f"{page_and_websocket(gw)}"]


def attack_origin(root: Path, core_port: int) -> list[str]:
    with gateway(root, core_port) as gw:
        sock, head = handshake(gw.port, host="evil.example", origin="http://evil.example")
        with sock:
            status = head.split(b"\r\n", 1)[0].decode()
        return [f"Host evil.example + Origin http://evil.example: {status}"]


def attack_memory(root: Path, core_port: int) -> list[str]:
    with gateway(root, core_port, "--max-websockets-per-ip", "0") as gw:
        fresh = gw.memory()["VmRSS"]
        with ExitStack() as stack:
            for source in sources(1000, 25, subnet=11):
                with contextlib.suppress(OSError):
                    sock, _head = handshake(gw.port, source=source, origin=gw.origin)
                    stack.enter_context(sock)
                    sock.sendall(client_frame(b"x" * 60_000)[:59_000])  # a partial frame
            time.sleep(1.0)
            held = gw.memory()["VmRSS"]
        time.sleep(12)
        after = gw.memory()["VmRSS"]
        return [f"1,000 websockets each holding a partial 60 KB frame: RSS {fresh:,} -> "
                f"{held:,} KB; 12 s after they left {after:,} KB ({after / fresh:.2f}x fresh)"]


def attack_sigterm(root: Path, core_port: int) -> list[str]:
    with gateway(root, core_port, "--max-websockets-per-ip", "0", "--max-websockets", "5000",
                 "--graceful-timeout", "10") as gw, ExitStack() as stack:
        socks = []
        for source in sources(2000, 25, subnet=12):
            sock, _head = handshake(gw.port, source=source, origin=gw.origin)
            socks.append(stack.enter_context(sock))
        started = time.monotonic()
        gw.process.send_signal(signal.SIGTERM)
        codes = [server_close_code(read_until_closed(sock, 30)) for sock in socks]
        closed_s = time.monotonic() - started
        try:
            gw.process.wait(30)
        except subprocess.TimeoutExpired:
            return [f"SIGTERM with 2,000 websockets: not stopped after 30 s ({closed_s:.1f} s "
                    "to close them)"]
        return [f"SIGTERM with {len(socks):,} websockets (--graceful-timeout 10): "
                f"{codes.count(1001):,} got close 1001 within {closed_s:.2f} s, "
                f"exit after {time.monotonic() - started:.2f} s"]


ATTACKS: dict[str, Callable[[Path, int], list[str]]] = {
    "slowloris": attack_slowloris,
    "cost": attack_cost,
    "bomb": attack_bomb,
    "address": attack_one_address,
    "origin": attack_origin,
    "memory": attack_memory,
    "sigterm": attack_sigterm,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=HERE,
                        help="the checkout whose core and gateway run (default: this one)")
    parser.add_argument("--only", default=",".join(ATTACKS),
                        help=f"comma-separated, of {', '.join(ATTACKS)}")
    args = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    results: dict[str, Any] = {}
    for name in args.only.split(","):
        with core(args.root) as core_port:
            try:
                results[name] = ATTACKS[name](args.root, core_port)
            except (OSError, RuntimeError) as error:
                results[name] = [f"failed: {error!r}"]
        for line in results[name]:
            print(f"{name}: {line}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
