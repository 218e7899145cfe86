"""A load generator for chat servers: the chatroom core (protocol v1), its web gateway
(websocket) and IRC servers (ngIRCd), driven through the same loads.

How it works, and why it is fast enough not to be the bottleneck:

- The parent process connects and registers every client with non-blocking sockets and one
  selector, then forks a *receiver* and a *sender* process that share the sockets: the sender
  only writes, the receiver only reads (plus the rare keep-alive answer). Neither waits for the
  other, so a slow server shows as queueing, not as a slow generator.
- Every message text is "SEQ SEND_NS": its sequence number and the sender's CLOCK_MONOTONIC
  time in nanoseconds (the same clock in every process). The receiver finds them with one
  regular expression over everything a recv() returned and counts deliveries per sequence
  number: lost = expected - delivered, and latency = receive time - send time.
- Requests of protocol v1 are built by tcp_server.protocol.encode_request (the one codec), once
  per recipient as a template whose text is filled in per message.

Run by bench/run.py; usable alone: `python bench/loadgen.py --help`. It prints one JSON object
(the result) as its last line on stdout.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import errno
import json
import multiprocessing
import os
import re
import resource
import selectors
import socket
import sys
import time
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection as Pipe
from typing import Any

from tcp_server.protocol import EVERYONE, Hello, Send, encode_request

RECV_BYTES = 262_144
TEXT_MARK = "@@TEXT@@"  # placeholder in a request template, replaced by "SEQ SEND_NS"
IRC_CHANNEL = "#bench"


# --- stream decoders: bytes from recv() -> whole protocol units, one per line -----------------


class LineDecoder:
    """Keeps the unfinished tail of a line stream; returns everything up to the last newline."""

    closed = False

    def __init__(self) -> None:
        self._rest = b""
        self.pings: list[bytes] = []  # never filled: line protocols answer PING in-band

    def feed(self, data: bytes) -> bytes:
        if self._rest:
            data = self._rest + data
        cut = data.rfind(b"\n") + 1
        self._rest = data[cut:]
        return data[:cut]


class WebSocketDecoder:
    """Client side of RFC 6455 after an HTTP upgrade: server frames -> payloads, one per line.

    The first unit it returns is b"UPGRADED" once the server answered 101.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._upgraded = False
        self.closed = False
        self.pings: list[bytes] = []  # payloads of ping frames still to answer

    def feed(self, data: bytes) -> bytes:
        buf = self._buf
        buf += data
        out: list[bytes] = []
        if not self._upgraded:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return b""
            head = bytes(buf[:end])
            del buf[: end + 4]
            if not head.startswith(b"HTTP/1.1 101"):
                raise ConnectionError(f"websocket upgrade refused: {head[:200]!r}")
            self._upgraded = True
            out.append(b"UPGRADED")
        pos, size = 0, len(buf)
        while size - pos >= 2:
            first, second = buf[pos], buf[pos + 1]
            length, header = second & 0x7F, 2
            if length == 126:
                if size - pos < 4:
                    break
                length, header = int.from_bytes(buf[pos + 2 : pos + 4], "big"), 4
            elif length == 127:
                if size - pos < 10:
                    break
                length, header = int.from_bytes(buf[pos + 2 : pos + 10], "big"), 10
            if second & 0x80:
                raise ConnectionError("the server masked a frame")
            if size - pos < header + length:
                break
            payload = bytes(buf[pos + header : pos + header + length])
            opcode = first & 0x0F
            if opcode in (0, 1, 2):
                out.append(payload)
            elif opcode == 9:
                self.pings.append(payload)
            elif opcode == 8:
                self.closed = True
            pos += header + length
        del buf[:pos]
        return b"\n".join(out) + b"\n" if out else b""


def websocket_frame(payload: bytes, opcode: int = 1) -> bytes:
    """A client frame. The mask key is zero, so masking leaves the payload as it is (cheap)."""
    size = len(payload)
    if size < 126:
        head = bytes((0x80 | opcode, 0x80 | size))
    elif size < 65_536:
        head = bytes((0x80 | opcode, 0x80 | 126)) + size.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0x80 | 127)) + size.to_bytes(8, "big")
    return head + b"\0\0\0\0" + payload


# --- dialects: what to send, what marks success, where the message texts are -----------------


@dataclass(frozen=True)
class Stage:
    """Bytes to send, then a marker to wait for in what comes back (and markers of failure)."""

    send: bytes
    done: bytes
    fail: tuple[bytes, ...] = ()


class Dialect:
    name = ""
    # Finds (seq, send_ns) of every delivered message in decoded units.
    pattern: re.Pattern[bytes] = re.compile(rb'"text":"(\d+) (\d+)"')

    def __init__(self) -> None:
        self._templates: dict[str | None, tuple[bytes, bytes]] = {}

    def decoder(self) -> LineDecoder | WebSocketDecoder:
        return LineDecoder()

    def stages(self, nick: str, fanout: bool) -> list[Stage]:
        raise NotImplementedError

    def template(self, to: str | None) -> tuple[bytes, bytes]:
        """Bytes before and after the text of a message to `to` (None: everyone)."""
        raise NotImplementedError

    def message(self, to: str | None, text: bytes) -> bytes:
        parts = self._templates.get(to)
        if parts is None:
            parts = self._templates[to] = self.template(to)
        return parts[0] + text + parts[1]

    def answer(self, decoder: LineDecoder | WebSocketDecoder, units: bytes) -> bytes:
        """What to send back to keep the connection alive (PONG), usually nothing."""
        return b""


class JsonLines(Dialect):
    """Protocol v1 of the chatroom core over TCP."""

    name = "v1"

    def stages(self, nick: str, fanout: bool) -> list[Stage]:
        return [
            Stage(encode_request(Hello(name=nick)), b'"type":"welcome"', (b'"type":"error"',))
        ]

    def template(self, to: str | None) -> tuple[bytes, bytes]:
        line = encode_request(Send(to=EVERYONE if to is None else to, text=TEXT_MARK))
        before, after = line.split(TEXT_MARK.encode())
        return before, after


class WebSocket(JsonLines):
    """Protocol v1 through the web gateway: one JSON object per websocket text frame."""

    name = "ws"

    def __init__(self, host: str, port: int, path: str) -> None:
        super().__init__()
        self._host = f"{host}:{port}"
        self._path = path

    def decoder(self) -> WebSocketDecoder:
        return WebSocketDecoder()

    def stages(self, nick: str, fanout: bool) -> list[Stage]:
        key = base64.b64encode(os.urandom(16)).decode()
        upgrade = (
            f"GET {self._path} HTTP/1.1\r\nHost: {self._host}\r\n"
            f"Origin: http://{self._host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
        hello = websocket_frame(encode_request(Hello(name=nick)).rstrip(b"\n"))
        return [
            Stage(upgrade, b"UPGRADED"),
            Stage(hello, b'"type":"welcome"', (b'"type":"error"',)),
        ]

    def message(self, to: str | None, text: bytes) -> bytes:
        return websocket_frame(super().message(to, text).rstrip(b"\n"))

    def answer(self, decoder: LineDecoder | WebSocketDecoder, units: bytes) -> bytes:
        if not decoder.pings:
            return b""
        pongs = b"".join(websocket_frame(payload, opcode=10) for payload in decoder.pings)
        decoder.pings.clear()
        return pongs


class Irc(Dialect):
    """RFC 2812 client commands: NICK/USER, JOIN, PRIVMSG to a nick or a channel, PONG."""

    name = "irc"
    pattern = re.compile(rb" PRIVMSG [^ ]+ :(\d+) (\d+)\r?\n")
    _ping = re.compile(rb"^PING (.*?)\r?$", re.MULTILINE)

    def stages(self, nick: str, fanout: bool) -> list[Stage]:
        # Markers name the nick: "There are 433 users" in a greeting is no refusal.
        failures = (b"ERROR :", b" 433 * ", b" 432 * ")
        register = f"NICK {nick}\r\nUSER {nick} 0 * :bench\r\n".encode()
        stages = [Stage(register, f" 001 {nick} ".encode(), failures)]
        if fanout:
            joined = f" 366 {nick} {IRC_CHANNEL} ".encode()
            stages.append(Stage(f"JOIN {IRC_CHANNEL}\r\n".encode(), joined, (b"ERROR :",)))
        return stages

    def template(self, to: str | None) -> tuple[bytes, bytes]:
        return f"PRIVMSG {IRC_CHANNEL if to is None else to} :".encode(), b"\r\n"

    def answer(self, decoder: LineDecoder | WebSocketDecoder, units: bytes) -> bytes:
        if b"PING " not in units:
            return b""
        return b"".join(b"PONG " + m.group(1) + b"\r\n" for m in self._ping.finditer(units))


# --- the clients ------------------------------------------------------------------------------


@dataclass(eq=False)
class Client:
    index: int
    nick: str
    sock: socket.socket
    decoder: LineDecoder | WebSocketDecoder
    stages: list[Stage]
    stage: int = 0
    connected: bool = False

    @property
    def registered(self) -> bool:
        return self.stage >= len(self.stages)


@dataclass
class SetupResult:
    clients: list[Client]
    registered: int = 0
    failed: int = 0
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0
    started: float = 0.0  # time.monotonic() when the first connection was made


def _send_small(sock: socket.socket, data: bytes) -> None:
    """Send a short setup request on a non-blocking socket (it always fits a fresh buffer)."""
    sent = sock.send(data)
    if sent != len(data):
        raise ConnectionError(f"short send during setup: {sent} of {len(data)} bytes")


def connect_all(
    dialect: Dialect,
    addresses: list[tuple[str, int]],
    count: int,
    prefix: str,
    fanout: bool,
    parallel: int,
    timeout_s: float,
    stop_on_failures: int,
    connecting: int = 8,
) -> SetupResult:
    """Connect and register `count` clients, at most `parallel` at a time and at most
    `connecting` of them in the TCP handshake (ngIRCd listens with a backlog of 10: more SYNs
    at once would measure retransmissions); drain what arrives. Client i connects to
    addresses[i % len(addresses)] (several core nodes: the clients split evenly)."""
    result = SetupResult(clients=[])
    selector = selectors.DefaultSelector()
    started = result.started = time.monotonic()
    deadline = started + timeout_s
    next_index = in_flight = handshakes = 0
    while result.registered + result.failed < count:
        if result.failed >= stop_on_failures:
            break
        while in_flight < parallel and handshakes < connecting and next_index < count:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            code = sock.connect_ex(addresses[next_index % len(addresses)])
            nick = f"{prefix}{next_index:05d}"
            client = Client(next_index, nick, sock, dialect.decoder(), dialect.stages(nick, fanout))
            next_index += 1
            in_flight += 1
            handshakes += 1
            if code not in (0, errno.EINPROGRESS):
                _fail(result, client, f"connect: {os.strerror(code)}", None)
                in_flight -= 1
                handshakes -= 1
                continue
            result.clients.append(client)
            selector.register(sock, selectors.EVENT_WRITE, client)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            result.failures.append(f"setup timed out after {timeout_s} s")
            break
        for key, _events in selector.select(min(remaining, 1.0)):
            client = key.data
            connected_before = client.connected
            try:
                done_before = client.registered
                _advance(client, selector, dialect)
                if client.connected and not connected_before:
                    handshakes -= 1
                if client.registered and not done_before:
                    result.registered += 1
                    in_flight -= 1
            except (OSError, ConnectionError) as error:
                if not connected_before:
                    handshakes -= 1
                _fail(result, client, str(error), selector)
                in_flight -= 1
    result.seconds = time.monotonic() - started
    result.clients = [c for c in result.clients if c.registered]
    selector.close()
    return result


def _fail(result: SetupResult, client: Client, why: str, selector: Any) -> None:
    result.failed += 1
    if len(result.failures) < 5:
        result.failures.append(f"{client.nick}: {why}")
    if selector is not None:
        with contextlib.suppress(KeyError, ValueError):
            selector.unregister(client.sock)
    client.sock.close()
    client.stage = -1  # neither registered nor in progress


def _advance(client: Client, selector: selectors.BaseSelector, dialect: Dialect) -> None:
    sock = client.sock
    if not client.connected:
        error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if error:
            raise ConnectionError(f"connect: {os.strerror(error)}")
        client.connected = True
        selector.modify(sock, selectors.EVENT_READ, client)
        _send_small(sock, client.stages[0].send)
        return
    try:
        data = sock.recv(RECV_BYTES)
    except BlockingIOError:
        return
    if not data:
        raise ConnectionError("closed by the server during setup")
    units = client.decoder.feed(data)
    answer = dialect.answer(client.decoder, units)
    if answer:
        _send_small(sock, answer)
    if client.registered or not units:
        return
    stage = client.stages[client.stage]
    for marker in stage.fail:
        if marker in units:
            raise ConnectionError(f"refused: {units[:300]!r}")
    if stage.done in units:
        client.stage += 1
        if not client.registered:
            _send_small(sock, client.stages[client.stage].send)


def drain_until_quiet(
    clients: Sequence[Client], dialect: Dialect, quiet_s: float, max_s: float
) -> tuple[int, float]:
    """Read and discard until nothing arrived for quiet_s (joined events of a big setup).
    Returns the bytes read and when (time.monotonic()) the last of them arrived."""
    selector = selectors.DefaultSelector()
    for client in clients:
        selector.register(client.sock, selectors.EVENT_READ, client)
    drained = 0
    last_arrival = time.monotonic()
    deadline = time.monotonic() + max_s
    while time.monotonic() < deadline:
        ready = selector.select(quiet_s)
        if not ready:
            break
        for key, _ in ready:
            client = key.data
            with contextlib.suppress(BlockingIOError):
                data = client.sock.recv(RECV_BYTES)
                drained += len(data)
                last_arrival = time.monotonic()
                units = client.decoder.feed(data)
                answer = dialect.answer(client.decoder, units)
                if answer:
                    client.sock.send(answer)
                if not data:
                    selector.unregister(client.sock)
    selector.close()
    return drained, last_arrival


# --- the two processes of a message load ------------------------------------------------------


def plan_messages(
    clients: int, messages: int, fanout: bool, nodes: int = 1
) -> list[tuple[int, int]]:
    """(sender, recipient) per message; recipient -1 means everyone. Senders take turns, and
    each sender's recipients rotate so that every client receives about as much. With
    `nodes` > 1 (client i on node i % nodes), every direct message goes to another node."""
    if fanout:
        return [(i % clients, -1) for i in range(messages)]
    offsets = [o for o in range(1, clients) if nodes == 1 or o % nodes]
    plan = []
    for i in range(messages):
        sender = i % clients
        offset = offsets[(i // clients) % len(offsets)]
        plan.append((sender, (sender + offset) % clients))
    return plan


def run_sender(
    dialect: Dialect,
    clients: list[Client],
    plan: list[tuple[int, int]],
    rate: float,
    ready_fd: int,
    done_fd: int,
    results: Pipe,
) -> None:
    """Send the plan: at `rate` messages/s (offered load), or as fast as the server takes them."""
    os.read(ready_fd, 1)  # the receiver is listening
    selector = selectors.DefaultSelector()
    pending: dict[int, bytearray] = {}
    socks = [c.sock for c in clients]
    nicks = [c.nick for c in clients]
    message = dialect.message
    clock = time.monotonic_ns
    interval_ns = 1e9 / rate if rate else 0.0
    total = len(plan)
    errors = 0
    dead: set[int] = set()
    start = clock()
    i = 0
    while i < total or pending:
        due = total if not rate else min(total, int((clock() - start) / interval_ns) + 1)
        while i < due:
            sender, to = plan[i]
            if sender in pending and not rate:
                break  # as fast as possible means as fast as the server reads: wait for it
            if sender in dead:
                i += 1
                continue
            data = message(None if to < 0 else nicks[to], b"%d %d" % (i, clock()))
            i += 1
            queued = pending.get(sender)
            if queued is not None:
                queued += data
                continue
            try:
                sent = socks[sender].send(data)
            except BlockingIOError:
                sent = 0
            except OSError:
                errors += 1
                dead.add(sender)
                continue
            if sent < len(data):
                pending[sender] = bytearray(data[sent:])
                selector.register(socks[sender], selectors.EVENT_WRITE, sender)
        if i >= total and not pending:
            break
        if rate and i < total:
            timeout: float | None = max(0.0, (start + i * interval_ns - clock()) / 1e9)
        elif not rate and i < total and plan[i][0] not in pending:
            timeout = 0.0
        else:
            timeout = 1.0
        for key, _ in selector.select(timeout):
            sender = key.data
            queued = pending[sender]
            try:
                sent = socks[sender].send(queued)
            except BlockingIOError:
                continue
            except OSError:
                errors += 1
                dead.add(sender)
                sent = len(queued)
            del queued[:sent]
            if not queued:
                del pending[sender]
                selector.unregister(socks[sender])
    end = clock()
    os.write(done_fd, b"d")
    results.send({"send_start_ns": start, "send_end_ns": end, "send_errors": errors})
    results.close()


def run_receiver(
    dialect: Dialect,
    clients: list[Client],
    messages: int,
    per_message: int,
    ready_fd: int,
    done_fd: int,
    grace_s: float,
    results: Pipe,
) -> None:
    """Read every socket, count deliveries per message and record each one's latency."""
    selector = selectors.DefaultSelector()
    closed = 0
    for client in clients:
        if client.sock.fileno() < 0:
            closed += 1
            continue
        selector.register(client.sock, selectors.EVENT_READ, client)
    selector.register(done_fd, selectors.EVENT_READ, None)
    counts = [0] * messages
    latencies = array("q")
    record = latencies.append
    findall = dialect.pattern.findall
    answer = dialect.answer
    clock = time.monotonic_ns
    expected = messages * per_message
    got = 0
    first_ns = last_ns = 0
    sender_done = False
    last_progress = time.monotonic()
    os.write(ready_fd, b"r")
    while got < expected:
        timeout = None
        if sender_done:
            timeout = grace_s - (time.monotonic() - last_progress)
            if timeout <= 0:
                break
        for key, _ in selector.select(timeout):
            client = key.data
            if client is None:
                os.read(done_fd, 1)
                selector.unregister(done_fd)
                sender_done = True
                continue
            try:
                data = client.sock.recv(RECV_BYTES)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:
                closed += 1
                selector.unregister(client.sock)
                continue
            now = clock()
            units = client.decoder.feed(data)
            if not units:
                continue
            found = findall(units)
            if found:
                for seq, sent_ns in found:
                    counts[int(seq)] += 1
                    record(now - int(sent_ns))
                got += len(found)
                if not first_ns:
                    first_ns = now
                last_ns = now
                last_progress = time.monotonic()
            reply = answer(client.decoder, units)
            if reply:
                with contextlib.suppress(OSError):
                    client.sock.send(reply)
    delivered = sum(min(c, per_message) for c in counts)
    duplicates = sum(max(0, c - per_message) for c in counts)
    results.send(
        {
            "delivered": delivered,
            "duplicates": duplicates,
            "closed_by_server": closed,
            "first_delivery_ns": first_ns,
            "last_delivery_ns": last_ns,
            "latencies_ns": latencies.tobytes(),
        }
    )
    results.close()


def percentile(sorted_values: Sequence[int], fraction: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(fraction * len(sorted_values)) - 1))
    return float(sorted_values[index])


def _result(pipe: Pipe, process: multiprocessing.process.BaseProcess, deadline: float) -> Any:
    """What the process sends, unless it dies first or the deadline passes."""
    while not pipe.poll(0.1):
        if not process.is_alive():
            raise RuntimeError(f"{process.name} ended with {process.exitcode} and no result")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{process.name} gave no result in time")
    return pipe.recv()


def run_messages(
    dialect: Dialect,
    clients: list[Client],
    messages: int,
    rate: float,
    fanout: bool,
    grace_s: float,
    timeout_s: float = 300.0,
    nodes: int = 1,
) -> dict[str, Any]:
    """Send the messages from one process, receive them in another; the figures of the run."""
    plan = plan_messages(len(clients), messages, fanout, nodes)
    per_message = len(clients) - 1 if fanout else 1
    ctx = multiprocessing.get_context("fork")
    ready_r, ready_w = os.pipe()
    done_r, done_w = os.pipe()
    recv_out, recv_in = ctx.Pipe(duplex=False)
    send_out, send_in = ctx.Pipe(duplex=False)
    receiver = ctx.Process(
        target=run_receiver,
        args=(dialect, clients, messages, per_message, ready_w, done_r, grace_s, recv_in),
        name="loadgen-receiver",
    )
    sender = ctx.Process(
        target=run_sender,
        args=(dialect, clients, plan, rate, ready_r, done_w, send_in),
        name="loadgen-sender",
    )
    receiver.start()
    sender.start()
    recv_in.close()
    send_in.close()
    try:
        deadline = time.monotonic() + timeout_s
        sent = _result(send_out, sender, deadline)
        received = _result(recv_out, receiver, deadline)
    finally:
        for process in (sender, receiver):
            process.join(timeout_s)
            if process.is_alive():
                process.kill()
                process.join()
    for fd in (ready_r, ready_w, done_r, done_w):
        os.close(fd)
    latencies = array("q")
    latencies.frombytes(received.pop("latencies_ns"))
    ordered = sorted(latencies)
    expected = messages * per_message
    span_ns = max(1, received["last_delivery_ns"] - sent["send_start_ns"])
    return {
        "messages": messages,
        "expected_deliveries": expected,
        "delivered": received["delivered"],
        "lost": expected - received["delivered"],
        "duplicates": received["duplicates"],
        "closed_by_server": received["closed_by_server"],
        "send_errors": sent["send_errors"],
        "offered_rate": rate or None,
        "send_seconds": (sent["send_end_ns"] - sent["send_start_ns"]) / 1e9,
        "seconds": span_ns / 1e9,
        "delivered_per_s": received["delivered"] / (span_ns / 1e9),
        "latency_ms": {
            "p50": percentile(ordered, 0.50) / 1e6,
            "p99": percentile(ordered, 0.99) / 1e6,
            "max": percentile(ordered, 1.0) / 1e6,
        },
    }


def hold_idle(clients: list[Client], dialect: Dialect) -> dict[str, Any]:
    """Keep every client connected, answering keep-alives, until stdin closes."""
    selector = selectors.DefaultSelector()
    for client in clients:
        selector.register(client.sock, selectors.EVENT_READ, client)
    try:
        selector.register(sys.stdin, selectors.EVENT_READ, None)
    except PermissionError:  # stdin is a regular file (</dev/null): nothing to wait for
        selector.close()
        return {"held_seconds": 0.0, "closed_by_server": 0}
    closed = 0
    started = time.monotonic()
    holding = True
    while holding:
        for key, _ in selector.select():
            client = key.data
            if client is None:
                if not sys.stdin.buffer.read1(1024):
                    holding = False
                continue
            with contextlib.suppress(BlockingIOError):
                data = client.sock.recv(RECV_BYTES)
                if not data:
                    closed += 1
                    selector.unregister(client.sock)
                    continue
                answer = dialect.answer(client.decoder, client.decoder.feed(data))
                if answer:
                    client.sock.send(answer)
    selector.close()
    return {"held_seconds": time.monotonic() - started, "closed_by_server": closed}


def raise_open_files_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dialect", choices=["v1", "irc", "ws"], default="v1")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--more-ports", default="",
                        help="further core nodes' ports, comma-separated: the clients split "
                        "over all, and every direct message crosses nodes")
    parser.add_argument("--path", default="/ws", help="websocket path (dialect ws)")
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--messages", type=int, default=0, help="0: connect and hold idle")
    parser.add_argument("--rate", type=float, default=0.0,
                        help="messages/s; 0: as fast as possible")
    parser.add_argument("--fanout", action="store_true", help="every message to everyone")
    parser.add_argument("--prefix", default="b", help="nick prefix (nicks are PREFIX + 5 digits)")
    parser.add_argument("--parallel", type=int, default=64, help="registrations in flight")
    parser.add_argument("--connecting", type=int, default=8,
                        help="TCP handshakes in flight (ngIRCd listens with a backlog of 10)")
    parser.add_argument("--setup-timeout", type=float, default=120.0)
    parser.add_argument("--grace", type=float, default=3.0,
                        help="seconds without a delivery, after the last send, before giving up")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    dialect: Dialect = {
        "v1": JsonLines(),
        "irc": Irc(),
        "ws": WebSocket(args.host, args.port, args.path),
    }[args.dialect]
    open_files = raise_open_files_limit()
    ports = [args.port, *(int(p) for p in args.more_ports.split(",") if p)]
    setup = connect_all(
        dialect,
        [(args.host, port) for port in ports],
        args.clients,
        args.prefix,
        args.fanout,
        args.parallel,
        args.setup_timeout,
        stop_on_failures=1 if args.messages else 50,
        connecting=args.connecting,
    )
    result: dict[str, Any] = {
        "dialect": args.dialect,
        "clients": args.clients,
        "registered": setup.registered,
        "register_failed": setup.failed,
        "register_failures": setup.failures,
        "register_seconds": setup.seconds,
        "registered_per_s": setup.registered / setup.seconds if setup.seconds else None,
        "open_files_limit": open_files,
    }
    drained, last_arrival = drain_until_quiet(
        setup.clients, dialect, 0.3, max(120.0, args.setup_timeout)
    )
    result["drained_bytes"] = drained
    # With --fanout and no messages (everyone in one room): until the last announcement of an
    # arrival reached everyone, counted from the first connection.
    result["settled_seconds"] = last_arrival - setup.started
    if args.messages == 0:
        print(json.dumps({"holding": setup.registered}), flush=True)
        result.update(hold_idle(setup.clients, dialect))
    elif setup.registered == args.clients:
        result.update(run_messages(dialect, setup.clients, args.messages, args.rate,
                                   args.fanout, args.grace, nodes=len(ports)))
    for client in setup.clients:
        client.sock.close()
    print(json.dumps(result), flush=True)
    return 0 if setup.registered == args.clients else 1


if __name__ == "__main__":
    sys.exit(main())

