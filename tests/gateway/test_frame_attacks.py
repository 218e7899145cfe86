"""A hostile browser against the gateway's websocket reading (the review of the sans-I/O
FrameDecoder and the relay's Pipe): what each attempt may cost, in memory and in time, and
that the gateway ends it cleanly."""

from __future__ import annotations

import contextlib
import gc
import logging
import socket
import struct
import subprocess
import sys
import threading
import time
import tracemalloc
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from tcp_server.server import ChatServer
from tests.gateway.rawws import (
    client_frame,
    handshake,
    read_until_closed,
    server_close_code,
)
from tests.gateway.test_units import _fill
from tests.support.core import WAIT_S, wait_until
from tests.support.gateway import InProcessGateway, WsClient, gateway_process, running_gateway
from tests.support.process import ROOT
from web_gateway.budget import ErrorBudget
from web_gateway.config import GatewayConfig
from web_gateway.relay import RECV_BYTES, Pipe, Relay
from web_gateway.websocket import BrowserSocket, FrameDecoder

log = logging.getLogger(__name__)

MASK = b"\x12\x34\x56\x78"


def fragment(payload: bytes, opcode: int = 0x0, *, fin: bool = False) -> bytes:
    """A masked frame of at most 125 bytes, `fin` set or not."""
    assert len(payload) < 126
    head = bytes(((0x80 if fin else 0) | opcode, 0x80 | len(payload)))
    return head + MASK + bytes(byte ^ MASK[index % 4] for index, byte in enumerate(payload))


def held_bytes(decoder: FrameDecoder, chunks: Iterator[bytes]) -> int:
    """How much memory feeding `chunks` leaves allocated (the decoder holds it)."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for chunk in chunks:
            got = decoder.feed(chunk)
            assert not got.closing
            assert not got.messages
        return tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()


# --- fragments: what an unfinished message holds --------------------------------------------


def test_empty_fragments_hold_no_memory() -> None:
    """Empty continuation frames add nothing to a message's size, so the size limit never
    stops them: they must not cost memory either (a list of them grew without bound)."""
    decoder = FrameDecoder(1_000)
    empty = fragment(b"") * 1_000
    held = held_bytes(decoder, iter([fragment(b"a", 0x1), *([empty] * 200)]))
    assert held < 64_000, f"200,000 empty fragments hold {held} bytes"
    got = decoder.feed(fragment(b"b", fin=True))
    assert got.messages == ["ab"]


def test_one_byte_fragments_hold_about_their_bytes() -> None:
    """A message sent a byte per frame holds about its size, not an object per byte (40
    times as much: 40 MB per websocket at the 1 MiB message limit)."""
    count = 50_000
    decoder = FrameDecoder(count + 1)
    frames = b"".join(fragment(b"x") for _ in range(count - 1))
    chunks = (frames[index:index + 6_000] for index in range(0, len(frames), 6_000))
    held = held_bytes(decoder, iter([fragment(b"x", 0x1), *chunks]))
    assert held < 3 * count, f"{count} one-byte fragments hold {held} bytes"
    got = decoder.feed(fragment(b"", fin=True))
    assert got.messages == ["x" * count]


def test_fragments_still_count_against_the_message_limit() -> None:
    decoder = FrameDecoder(100)
    got = decoder.feed(fragment(b"x" * 60, 0x1) + fragment(b"x" * 40))
    assert not got.closing
    got = decoder.feed(fragment(b"x", fin=True))
    assert got.close_reply is not None
    assert got.close_reply[2:4] == (1009).to_bytes(2)


# --- the RFC's corners, as a hostile browser tries them ----------------------------------------


def long_header(opcode: int, size: int) -> bytes:
    """A frame's head with a 64-bit length (any value, the top bit too) and a mask: no payload."""
    return bytes((0x80 | opcode, 0x80 | 127)) + size.to_bytes(8) + MASK


@pytest.mark.parametrize(("size", "code"), [
    (1 << 63, 1002),  # the top bit of a 64-bit length must be 0
    ((1 << 64) - 1, 1002),
    (2_000_000, 1009),  # over the limit: refused before any of its payload is held
])
def test_a_64_bit_length_is_judged_from_the_header_alone(size: int, code: int) -> None:
    got = FrameDecoder(1_000_000).feed(long_header(0x1, size))
    assert got.close_reply is not None
    assert got.close_reply[2:4] == code.to_bytes(2)


def test_a_character_split_across_fragments_is_valid_text() -> None:
    text = "é€😀".encode()
    stream = (fragment(text[:1], 0x1) + fragment(text[1:4]) + fragment(b"", 0x9, fin=True)
              + fragment(text[4:], fin=True))
    for split in range(len(stream) + 1):
        decoder = FrameDecoder(100)
        first, second = decoder.feed(stream[:split]), decoder.feed(stream[split:])
        assert first.messages + second.messages == ["é€😀"], split
        assert len(first.replies + second.replies) == 1  # the ping between the fragments


@pytest.mark.parametrize("code", [0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65_535])
def test_a_close_code_that_may_not_be_sent_is_a_protocol_error(code: int) -> None:
    got = FrameDecoder(100).feed(fragment(code.to_bytes(2) + b"why", 0x8, fin=True))
    assert got.close_reply is not None
    assert got.close_reply[2:4] == (1002).to_bytes(2)
    assert got.drain


@pytest.mark.parametrize("code", [1000, 1001, 1003, 1007, 1011, 1014, 3000, 4999])
def test_a_valid_close_code_is_answered_with_the_same(code: int) -> None:
    got = FrameDecoder(100).feed(fragment(code.to_bytes(2) + "fin é".encode(), 0x8, fin=True))
    assert got.closing
    assert not got.drain
    assert got.close_reply is not None
    assert got.close_reply[2:4] == code.to_bytes(2)


def test_nothing_after_the_browsers_close_is_answered() -> None:
    got = FrameDecoder(100).feed(fragment(b"", 0x8, fin=True) + fragment(b"p", 0x9, fin=True)
                                 + fragment(b"{}", 0x1, fin=True))
    assert got.closing
    assert not got.replies
    assert not got.messages
    assert got.close_reply is not None
    assert got.close_reply[2:4] == (1000).to_bytes(2)  # no code given: a normal close


def test_a_ping_flood_in_one_read_is_answered_pong_for_ping() -> None:
    got = FrameDecoder(100).feed(fragment(b"ab", 0x9, fin=True) * 10_000)
    assert got.replies == [b"\x8a\x02ab"] * 10_000


# --- against a gateway ----------------------------------------------------------------------


@pytest.fixture
def quiet_gateway(gateway_config: GatewayConfig) -> Iterator[InProcessGateway]:
    """A gateway that sends no pings: only the websocket's own limits end a connection."""
    with running_gateway(replace(gateway_config, ping_interval=0.0)) as gateway:
        yield gateway


def joined(port: int, origin: str, name: str) -> socket.socket:
    sock, head = handshake(port, origin=origin)
    assert head.startswith(b"HTTP/1.1 101"), head
    sock.sendall(client_frame(f'{{"type":"hello","name":"{name}"}}'.encode()))
    data = b""
    while b"welcome" not in data:
        chunk = sock.recv(65_536)
        assert chunk, "closed before the welcome"
        data += chunk
    return sock


def test_a_silent_browser_after_a_protocol_error_is_cut_and_leaves_the_room(
    core: ChatServer, quiet_gateway: InProcessGateway
) -> None:
    """After refusing a frame (1002) the gateway reads on for the browser's close; a browser
    that then says nothing more is cut within the close timeout, not kept (with its user
    online in the room) until a pong timeout or forever."""
    with joined(quiet_gateway.port, quiet_gateway.origin, "mallory") as sock:
        wait_until(lambda: core.connection_count() == 1, what="the user to join")
        sock.sendall(struct.pack("!BB", 0x81, 2) + b"{}")  # not masked
        data = read_until_closed(sock, timeout=WAIT_S)
        assert server_close_code(data) == 1002
        sock.settimeout(0.1)
        try:
            assert sock.recv(1) == b""
        except ConnectionResetError:
            pass
        except TimeoutError:
            pytest.fail(f"the connection is still open {WAIT_S} s after the 1002")
        wait_until(lambda: core.connection_count() == 0, what="the user to leave the room")


def test_a_browser_dripping_a_frame_byte_by_byte_is_cut_by_the_pong_timeout(
    core: ChatServer, gateway_config: GatewayConfig
) -> None:
    """After the handshake the header timeout no longer applies: a browser that sends a frame
    a byte at a time holds at most that frame (bounded by the message limit) and, unable to
    answer a ping in the middle of a frame, is cut when the pong timeout runs out."""
    config = replace(gateway_config, ping_interval=0.2, pong_timeout=0.6)
    with running_gateway(config) as gateway, joined(gateway.port, gateway.origin, "drip") as sock:
        frame = client_frame(b'{"type":"list"}' + b" " * 200)
        sent = 0
        with contextlib.suppress(OSError):  # cut: a reset or a broken pipe
            while sent < len(frame):
                sock.sendall(frame[sent:sent + 1])
                sent += 1
                with contextlib.suppress(AssertionError):  # a byte each 0.1 s, or the end
                    wait_until(lambda: core.connection_count() == 0, timeout=0.1)
                    break
        assert sent < len(frame), "the whole frame went through"
        wait_until(lambda: core.connection_count() == 0, what="the dripping browser to be cut")


# --- floods against the real gateway process (gunicorn, one gevent worker) ---------------------

FLOODS = {
    "pings, whose pongs it reads": client_frame(b"", 0x9),
    "pongs": client_frame(b"", 0xA),
    "empty text frames, whose errors it reads": client_frame(b""),
}


@pytest.mark.slow
@pytest.mark.parametrize("flood", FLOODS)
def test_a_flood_of_tiny_frames_does_not_stall_the_other_websockets(
    core: ChatServer, static_dir: Path, flood: str
) -> None:
    """A gevent socket's recv() does not go through the event loop while data waits: a
    browser sending tiny frames faster than the gateway decodes them kept its reader running
    and froze every other websocket of the worker (no reply within 5 s)."""
    host, port = core.address
    burst = FLOODS[flood] * 20_000
    stop = threading.Event()
    with gateway_process("--core", f"{host}:{port}", static_dir=static_dir) as gateway, \
            WsClient(gateway.url, gateway.origin) as bob:
        bob.hello("bob")
        sock, head = handshake(gateway.port, origin=gateway.origin, source="127.0.0.2")
        assert head.startswith(b"HTTP/1.1 101"), head

        sent = [0]

        def send() -> None:
            with contextlib.suppress(OSError):
                while not stop.is_set():
                    sock.sendall(burst)
                    sent[0] += len(burst)

        def read() -> None:  # what the flood brings back is read, so it is never dropped
            with contextlib.suppress(OSError):
                while not stop.is_set() and sock.recv(1 << 20):
                    pass

        threads = [threading.Thread(target=send, name="test-flood-send"),
                   threading.Thread(target=read, name="test-flood-read")]
        try:
            for thread in threads:
                thread.start()
            wait_until(lambda: sent[0] >= 4 * len(burst), what="the flood to be under way")
            times = []
            for _ in range(5):
                started = time.monotonic()
                assert bob.request("list")["type"] == "users"  # within WAIT_S, or it raises
                times.append(time.monotonic() - started)
            log.warning("a list's round trip during a flood of %s: %s ms", flood,
                        ", ".join(f"{seconds * 1_000:.1f}" for seconds in times))
        finally:
            stop.set()
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            for thread in threads:
                thread.join(WAIT_S)
            sock.close()


# --- relays opened and closed many times: nothing is left behind ----------------------------


class _HandshakeDone:
    """What BrowserSocket takes from simple-websocket after the handshake."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.ws: object = None
        self.event: object = None
        self.connected = True


RELAY_ENDINGS = ("browser-closes", "core-closes", "bad-frame-then-silent", "stop",
                 "deaf-browser-vanishes", "deaf-browser-then-stop", "deaf-browser-core-closes")


def relay_once(number: int, ending: str) -> None:
    """One relay over socket pairs, a request relayed, then ended the way `ending` says."""
    browser_end, browser = socket.socketpair()
    core_end, core = socket.socketpair()
    relay = Relay(
        BrowserSocket(_HandshakeDone(browser_end), max_message_bytes=1 << 20,
                      recv_bytes=RECV_BYTES),
        core_end, peer=("127.0.0.9", 5), secret="s", number=number, max_queue_bytes=65_536,
        close_timeout=0.05, errors=ErrorBudget(10, 10.0))
    request = threading.Thread(target=relay.run, name=f"test-request-{number}")
    with browser, core, browser_end:
        request.start()
        core.settimeout(WAIT_S)
        browser.sendall(client_frame(b'{"type":"list"}'))
        data = b""
        while b'"list"' not in data:
            chunk = core.recv(65_536)
            assert chunk, "the core connection ended"
            data += chunk
        if ending == "browser-closes":
            browser.sendall(client_frame(b"\x03\xe8", 0x8))
        elif ending == "core-closes":
            core.shutdown(socket.SHUT_RDWR)
        elif ending == "bad-frame-then-silent":
            browser.sendall(struct.pack("!BB", 0x81, 2) + b"{}")  # not masked
        elif ending == "stop":
            relay.stop()
        else:  # the core sends more than a browser that reads nothing can take in
            line = b'{"type":"message","text":"' + b"x" * 16_000 + b'"}\n'
            for _ in range(100):  # until a writer waits for room (the kernel's buffer is full)
                core.sendall(line)
                with contextlib.suppress(AssertionError):
                    wait_until(lambda: not relay._down.join(0), timeout=0.02)
                    break
            assert not relay._down.join(0), "the browser's socket took everything"
            if ending == "deaf-browser-vanishes":
                browser.shutdown(socket.SHUT_RDWR)
            elif ending == "deaf-browser-then-stop":
                relay.stop()
            else:
                core.shutdown(socket.SHUT_RDWR)
        request.join(WAIT_S)
        assert not request.is_alive(), f"the relay did not end ({ending})"


def live_workers() -> int:
    """Greenlets under gevent, threads otherwise."""
    if sys.modules.get("gevent.monkey") is None:
        return threading.active_count()
    import greenlet

    gc.collect()
    return sum(isinstance(obj, greenlet.greenlet) for obj in gc.get_objects())


@pytest.mark.parametrize("ending", RELAY_ENDINGS)
def test_relays_opened_and_ended_leave_nothing_behind(ending: str) -> None:
    relay_once(0, ending)
    gc.collect()
    workers, objects = live_workers(), len(gc.get_objects())
    for number in range(1, 11):
        relay_once(number, ending)
    gc.collect()
    assert live_workers() == workers
    assert len(gc.get_objects()) < objects + 200  # a few stray ints and frames, no relays


@pytest.mark.slow
def test_relays_opened_and_ended_leave_no_greenlet_under_gevent() -> None:
    """The same, in a process that gevent monkey-patched first (as gunicorn's worker)."""
    script = (
        "from gevent import monkey; monkey.patch_all()\n"
        "from tests.gateway import test_frame_attacks as t\n"
        f"for ending in {RELAY_ENDINGS!r}:\n"
        "    t.test_relays_opened_and_ended_leave_nothing_behind(ending)\n"
        "print('all passed')\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                            text=True, timeout=12 * WAIT_S, check=False)
    assert result.stdout.strip() == "all passed", result.stderr[-3000:]


def pipe_joined_while_its_writer_starts() -> bool | RuntimeError:
    """Under gevent a writer's start() switches to the other greenlets: one joining the pipe
    then (a relay's _finish) must wait for the writer, not fail on a thread not started."""
    ours, theirs = socket.socketpair()
    with ours, theirs:
        pipe = Pipe("test-pipe", ours, max_bytes=1_000_000, close_timeout=WAIT_S)
        _fill(ours)
        ready = threading.Event()
        outcome: list[bool | RuntimeError] = []

        def join() -> None:
            ready.wait(WAIT_S)
            try:
                outcome.append(pipe.join(0.01))
            except RuntimeError as error:
                outcome.append(error)

        joiner = threading.Thread(target=join, name="test-joiner")
        joiner.start()
        ready.set()  # the joiner runs at the next switch: the writer's start()
        assert pipe.put(b"x" * 1_000)  # the socket is full: a writer starts
        joiner.join(WAIT_S)
        pipe.close(discard=True)
        assert pipe.join(WAIT_S)
        return outcome[0]


def test_a_pipe_joined_while_its_writer_starts_waits_for_it_under_gevent() -> None:
    script = (
        "from gevent import monkey; monkey.patch_all()\n"
        "from tests.gateway import test_frame_attacks as t\n"
        "print(t.pipe_joined_while_its_writer_starts())\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                            text=True, timeout=6 * WAIT_S, check=False)
    assert result.stdout.strip() == "False", result.stdout + result.stderr[-3000:]
