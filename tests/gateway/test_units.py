"""The gateway's pure parts, without sockets: frames, the frame queue, origins, config."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from wsproto.frame_protocol import FrameProtocol

from tcp_server.protocol import ProtocolError
from tests.support.core import WAIT_S
from tests.support.process import ROOT
from web_gateway.config import SECRET_ENV, config_from_args, normalize_origin
from web_gateway.cores import CorePool
from web_gateway.frames import MAX_FRAME_BYTES, error_frame, frame_to_line
from web_gateway.registry import Refused, RelayRegistry
from web_gateway.relay import Pipe
from web_gateway.views import browser_address, origin_allowed, own_origins
from web_gateway.websocket import FrameDecoder, Received, close_frame, text_frame

# --- frames ------------------------------------------------------------------------------------


def test_accepted_frame_becomes_one_line_with_its_type() -> None:
    upstream = frame_to_line('{"type":"send","to":"bob","text":"a\\nb"}')
    assert upstream.line == b'{"type":"send","to":"bob","text":"a\\nb"}\n'
    assert upstream.type == "send"


def test_raw_newlines_between_tokens_become_spaces() -> None:
    upstream = frame_to_line('{\n  "type": "ping"\r\n}')
    assert upstream.line == b'{   "type": "ping"\r }\n'
    assert upstream.line.count(b"\n") == 1
    assert json.loads(upstream.line) == {"type": "ping"}


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (b"{}", "bad_request"),
        ("", "bad_request"),
        ("[]", "bad_request"),
        ('{"a":1}{"b":2}', "bad_request"),
        ('{"text":"raw\nnewline in a string"}', "bad_request"),
        ('{"type":"proxy","secret":"s","ip":"1.2.3.4","port":1}', "forbidden"),
        ("x" * (MAX_FRAME_BYTES + 1), "line_too_long"),
        ("é" * (MAX_FRAME_BYTES // 2 + 1), "line_too_long"),  # counted in UTF-8 bytes
    ],
)
def test_refused_frames_carry_their_error_code(frame: str | bytes, code: str) -> None:
    with pytest.raises(ProtocolError) as refused:
        frame_to_line(frame)
    assert refused.value.code == code


def test_error_frame_is_a_protocol_error_object() -> None:
    assert json.loads(error_frame("unavailable", "gone")) == {
        "type": "error", "code": "unavailable", "message": "gone"
    }


# --- frames the gateway sends, and reading the browser -----------------------------------------


def decode_server_frames(data: bytes) -> list[tuple[int, bytes]]:
    """The (opcode, payload) of each frame a server sent, decoded by wsproto as a client."""
    decoder = FrameProtocol(client=True, extensions=[])
    decoder.receive_bytes(data)
    frames = []
    for frame in decoder.received_frames():
        payload = frame.payload
        if isinstance(payload, str):
            payload = payload.encode("utf-8")
        elif isinstance(payload, tuple):  # a close frame: (code, reason)
            code, reason = payload
            payload = int(code).to_bytes(2, "big") + reason.encode("utf-8")
        frames.append((int(frame.opcode), bytes(payload)))
    return frames


@pytest.mark.parametrize("size", [0, 125, 126, 65_535, 65_536])
def test_text_frames_of_every_length_class_decode(size: int) -> None:
    payload = b"x" * size
    assert decode_server_frames(text_frame(payload)) == [(0x1, payload)]


def test_close_frame_cuts_a_long_reason_without_splitting_a_character() -> None:
    [(opcode, payload)] = decode_server_frames(close_frame(1001, "é" * 100))
    assert opcode == 0x8
    assert payload[:2] == b"\x03\xe9"
    assert len(payload) <= 125
    payload[2:].decode("utf-8")  # still valid UTF-8


# --- the pipe (one direction of a relay) --------------------------------------------------------


def _fill(sock: socket.socket) -> int:
    """Fill `sock`'s send buffer (and its peer's receive buffer); the bytes it took."""
    sock.setblocking(False)
    taken = 0
    with contextlib.suppress(BlockingIOError):
        while True:
            taken += sock.send(b"f" * 65_536)
    sock.setblocking(True)
    return taken


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    sock.settimeout(WAIT_S)
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        assert chunk, f"end of stream after {len(data)} of {size} bytes"
        data += chunk
    return data


def test_pipe_writes_at_once_while_the_socket_takes_everything() -> None:
    ours, theirs = socket.socketpair()
    pipe = Pipe("test-pipe", ours, max_bytes=100, close_timeout=WAIT_S)
    threads = threading.active_count()
    with ours, theirs:
        assert pipe.put(b"a")
        assert pipe.put(b"b")
        assert _read_exactly(theirs, 2) == b"ab"  # written by put() itself
        assert pipe.close(b"!")
        assert _read_exactly(theirs, 1) == b"!"
        assert pipe.join(0)
        assert threading.active_count() == threads  # no writer was needed


def test_pipe_hands_over_to_a_writer_while_the_socket_is_full_and_keeps_the_order() -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        pipe = Pipe("test-pipe", ours, max_bytes=1_000_000, close_timeout=WAIT_S)
        taken = _fill(ours)
        chunks = [str(index).encode() * 100 for index in range(200)]
        for chunk in chunks:
            assert pipe.put(chunk)  # over the kernel's buffer: queued, a writer waits
        assert not pipe.join(0.05)  # the writer waits for room
        expected = b"f" * taken + b"".join(chunks)
        assert _read_exactly(theirs, len(expected)) == expected
        assert pipe.join(WAIT_S)  # empty: the writer has ended
        assert pipe.put(b"later")  # written at once again
        assert _read_exactly(theirs, 5) == b"later"


def test_the_pipes_hand_over_and_cut_off_under_gevent_too() -> None:
    """gunicorn's worker runs the pipes on gevent's sockets and greenlets: the same tests,
    in a process that gevent monkey-patched first (as the worker does)."""
    script = (
        "from gevent import monkey; monkey.patch_all()\n"
        "from tests.gateway import test_units as t\n"
        "t.test_pipe_writes_at_once_while_the_socket_takes_everything()\n"
        "t.test_pipe_hands_over_to_a_writer_while_the_socket_is_full_and_keeps_the_order()\n"
        "t.test_pipe_refuses_beyond_its_budget_only_while_the_socket_takes_nothing()\n"
        "t.test_a_closed_pipe_whose_peer_does_not_read_is_cut_at_its_deadline()\n"
        "print('all passed')\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                            text=True, timeout=6 * WAIT_S, check=False)
    assert result.stdout.strip() == "all passed", result.stderr[-3000:]


def test_pipe_refuses_beyond_its_budget_only_while_the_socket_takes_nothing() -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        pipe = Pipe("test-pipe", ours, max_bytes=10, close_timeout=WAIT_S)
        assert pipe.put(b"x" * 50)  # over the budget, but the socket takes it
        _fill(ours)
        assert pipe.put(b"x" * 6)
        assert not pipe.put(b"y" * 5)  # the peer does not read: the caller drops it
        assert pipe.close(discard=True)
        assert not pipe.close(b"late")
        assert pipe.put(b"after close")  # discarded silently: the relay is ending
        assert pipe.join(WAIT_S)


def test_a_pipe_whose_socket_fills_with_more_than_its_budget_queued_says_so_at_once() -> None:
    """All of a burst accepted while the socket still took data, then nothing more put: the
    peer must still be dropped (it was only found at the next put, a ping 10 s later)."""
    overflowed: list[bool] = []
    ours, theirs = socket.socketpair()
    with ours, theirs:
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        pipe = Pipe("test-pipe", ours, max_bytes=4_000, close_timeout=WAIT_S,
                    on_overflow=lambda: overflowed.append(pipe.close(discard=True)))
        assert pipe.put(b"x" * 200_000)  # the socket took part of it: not refused...
        assert overflowed == [True]  # ...but the peer is not reading: dropped now
        assert pipe.join(WAIT_S)


def test_a_closed_pipe_whose_peer_does_not_read_is_cut_at_its_deadline() -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        pipe = Pipe("test-pipe", ours, max_bytes=1_000_000, close_timeout=0.2)
        taken = _fill(ours)
        assert pipe.put(b"z" * 10_000)
        assert pipe.close(b"bye")
        assert pipe.join(WAIT_S)  # cut off after 0.2 s, not waiting for ever
        theirs.settimeout(WAIT_S)
        received = 0
        while chunk := theirs.recv(65_536):  # the shutdown ends the stream
            received += len(chunk)
        assert taken <= received < taken + 10_003


# --- origins and addresses ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("origin", "normal"),
    [
        ("http://127.0.0.1:8000", "http://127.0.0.1:8000"),
        ("HTTP://LocalHost:8000/", "http://localhost:8000"),
        ("https://chat.example.com:443", "https://chat.example.com"),
        ("http://[::1]:8000", "http://[::1]:8000"),
    ],
)
def test_origins_are_compared_in_normal_form(origin: str, normal: str) -> None:
    assert normalize_origin(origin) == normal


@pytest.mark.parametrize("origin", ["null", "file://", "ftp://x", "http://a/path", "http://u@h",
                                    "http://h?q", "127.0.0.1:8000"])
def test_things_that_are_not_origins_are_refused(origin: str) -> None:
    with pytest.raises(ValueError, match="not an origin"):
        normalize_origin(origin)


def test_browser_address_comes_from_the_wsgi_environ() -> None:
    environ = {"REMOTE_ADDR": "192.0.2.7", "REMOTE_PORT": "51234",
               "HTTP_X_FORWARDED_FOR": "203.0.113.9"}
    assert browser_address(environ, trust_forwarded=False) == ("192.0.2.7", 51234)


def test_trusted_forwarded_for_gives_its_last_entry_and_port_0() -> None:
    environ = {"REMOTE_ADDR": "127.0.0.1", "REMOTE_PORT": "40000",
               "HTTP_X_FORWARDED_FOR": "10.0.0.1, 2001:db8::7"}
    assert browser_address(environ, trust_forwarded=True) == ("2001:db8::7", 0)


@pytest.mark.parametrize(
    ("listen_host", "local", "origin", "allowed"),
    [
        ("127.0.0.1", ("127.0.0.1", 8000), "http://127.0.0.1:8000", True),
        ("127.0.0.1", ("127.0.0.1", 8000), "http://localhost:8000", True),
        ("127.0.0.1", ("127.0.0.1", 8000), "http://[::1]:8000", True),
        ("127.0.0.1", ("127.0.0.1", 8000), "http://127.0.0.1:8001", False),
        ("127.0.0.1", ("127.0.0.1", 8000), "https://127.0.0.1:8000", False),
        ("127.0.0.1", ("127.0.0.1", 8000), "http://evil.example", False),
        ("127.0.0.1", ("127.0.0.1", 8000), "http://evil.example:8000", False),
        # Listening everywhere: the address the connection reached is its own origin.
        ("0.0.0.0", ("192.168.1.5", 8000), "http://192.168.1.5:8000", True),
        ("0.0.0.0", ("192.168.1.5", 8000), "http://192.168.1.6:8000", False),
        ("0.0.0.0", ("10.0.2.15", 8000), "http://127.0.0.1:8000", True),  # a forwarded port
        ("::", ("::1", 8000), "http://[::1]:8000", True),
        ("chat.lan", ("192.168.1.5", 80), "http://chat.lan", True),
        ("chat.lan", ("192.168.1.5", 80), "http://chat.lan:8000", False),
    ],
)
def test_own_origins_come_from_the_listening_address_never_from_host(
    listen_host: str, local: tuple[str, int], origin: str, allowed: bool
) -> None:
    assert origin_allowed(origin, own_origins(listen_host, local)) is allowed


def test_a_forwarded_address_loses_its_zone() -> None:
    environ = {"REMOTE_ADDR": "127.0.0.1", "REMOTE_PORT": "1",
               "HTTP_X_FORWARDED_FOR": "fe80::7%\x1b[31m" + "z" * 5_000}
    assert browser_address(environ, trust_forwarded=True) == ("fe80::7", 0)


def test_forwarded_for_that_is_not_an_address_is_refused() -> None:
    environ = {"REMOTE_ADDR": "127.0.0.1", "REMOTE_PORT": "1", "HTTP_X_FORWARDED_FOR": "evil"}
    with pytest.raises(ValueError, match="not an IP address"):
        browser_address(environ, trust_forwarded=True)


# --- config ------------------------------------------------------------------------------------


def test_config_defaults_and_the_secret_from_the_environment() -> None:
    config = config_from_args([], {SECRET_ENV: "s3cret"})
    assert (config.host, config.port, config.core_address) == (
        "127.0.0.1", 8000, ("127.0.0.1", 9000)
    )
    assert config.gateway_secret == "s3cret"
    assert "s3cret" not in repr(config)


def test_config_flags() -> None:
    config = config_from_args(
        ["--host", "::", "--port", "8080", "--core", "[::1]:9001", "--allow-origin",
         "https://Chat.Example.com", "--trust-forwarded", "--static-dir", "/srv/static",
         "--max-websockets", "50"],
        {},
    )
    assert config.core_address == ("::1", 9001)
    assert config.allow_origins == ("https://chat.example.com",)
    assert config.trust_forwarded
    assert config.static_dir == Path("/srv/static")
    assert config.max_websockets == 50
    assert config.open_files > config.max_connections + config.max_websockets
    assert config.gateway_secret is None


def test_config_takes_several_cores_in_order() -> None:
    config = config_from_args(["--core", "127.0.0.1:9000, 127.0.0.1:9001,[::1]:9002"], {})
    assert config.core_addresses == (("127.0.0.1", 9000), ("127.0.0.1", 9001), ("::1", 9002))
    assert config_from_args([], {}).core_addresses == (("127.0.0.1", 9000),)


def test_config_limits_per_address_and_connections_by_default() -> None:
    config = config_from_args([], {})
    assert (config.max_websockets, config.max_websockets_per_ip) == (5_000, 50)
    assert config.max_opens_per_ip == 60
    assert config_from_args(["--max-opens-per-ip", "0"], {}).max_opens_per_ip == 0
    assert (config.max_connections, config.header_timeout) == (10_000, 5.0)


def test_config_pings_every_10_s_and_gives_up_after_20_s_by_default() -> None:
    config = config_from_args([], {})
    assert (config.ping_interval, config.pong_timeout) == (10.0, 20.0)
    config = config_from_args(["--ping-interval", "5", "--pong-timeout", "12.5"], {})
    assert (config.ping_interval, config.pong_timeout) == (5.0, 12.5)


@pytest.mark.parametrize("argv", [["--core", "nohost"], ["--core", "h:99999"],
                                  ["--core", "h:1,h:1"], ["--core", "h:1,"],
                                  ["--max-websockets-per-ip", "-1"],
                                  ["--max-opens-per-ip", "-5"],
                                  ["--allow-origin", "evil"], ["--port", "-1"],
                                  ["--ping-interval", "-1"], ["--pong-timeout", "x"]])
def test_bad_flags_are_refused(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        config_from_args(argv, {})


# --- the registry ------------------------------------------------------------------------------


class StuckRelay:
    """A relay whose browser cannot be told anything: stop() changes nothing."""

    def __init__(self) -> None:
        self.aborted = threading.Event()

    def stop(self) -> None:
        pass

    def abort(self, reason: str) -> None:
        self.aborted.set()


def test_stop_all_cuts_the_websockets_still_open_after_the_grace() -> None:
    registry = RelayRegistry(max_websockets=2, stop_grace_s=0.05)
    relay = StuckRelay()
    with registry.slot() as slot:
        slot.attach(relay)  # type: ignore[arg-type]
        registry.stop_all()
        assert relay.aborted.wait(WAIT_S)
    assert registry.wait_stopped(WAIT_S)


def test_a_stopping_registry_refuses_new_websockets() -> None:
    registry = RelayRegistry(max_websockets=2, stop_grace_s=0.05)
    registry.stop_all()
    with pytest.raises(Refused) as refused, registry.slot():
        pass
    assert refused.value.ending.code == 1001
    assert registry.wait_stopped(WAIT_S)


def test_the_registry_refuses_beyond_its_limit_and_frees_slots() -> None:
    registry = RelayRegistry(max_websockets=1, stop_grace_s=0.05)
    with registry.slot():
        with pytest.raises(Refused) as refused, registry.slot():
            pass
        assert refused.value.ending.code == 1013
    with registry.slot():
        assert registry.count() == 1


@pytest.mark.parametrize(("mine", "other"), [
    (["10.0.0.1"] * 3, "10.0.0.2"),
    # An IPv6 address counts as its /64: the next /64 is another address.
    (["2001:db8:1:2::1", "2001:db8:1:2:ffff::9", "2001:db8:1:2::3"], "2001:db8:1:3::1"),
])
def test_the_registry_refuses_an_address_at_its_limit_and_takes_others(
    mine: list[str], other: str
) -> None:
    registry = RelayRegistry(max_websockets=10, stop_grace_s=0.05, max_per_ip=2)
    with registry.slot(mine[0]), registry.slot(mine[1]):
        with pytest.raises(Refused) as refused, registry.slot(mine[2]):
            pass
        assert refused.value.ending.code == 1008
        assert "too many connections from your address" in str(refused.value)
        with registry.slot(other):  # another address still gets in
            assert registry.count() == 3
    with registry.slot(mine[2]):  # slots of an address come back when they close
        pass


def test_the_registry_limits_how_fast_an_address_opens_websockets() -> None:
    now = [100.0]
    registry = RelayRegistry(max_websockets=100, stop_grace_s=0.05, max_per_ip=3,
                             opens_per_minute=6, clock=lambda: now[0])
    for _ in range(6):  # a first burst of max(6, 3), each closed at once: a loop
        with registry.slot("10.0.0.1"):
            pass
    with pytest.raises(Refused) as refused, registry.slot("10.0.0.1"):
        pass
    assert refused.value.ending.code == 1013
    assert refused.value.ending.error == (
        "too many new connections from your address (at most 6 a minute after the first 6); "
        "try again in a few seconds")
    assert registry.count() == 0
    with registry.slot("10.0.0.2"), registry.slot("2001:db8::1"):  # other addresses get in
        pass
    with pytest.raises(Refused), registry.slot("10.0.0.1"):  # a refusal earns no token
        pass
    now[0] += 10.0  # one a minute / 6: one more
    with registry.slot("10.0.0.1"):
        pass
    with pytest.raises(Refused), registry.slot("10.0.0.1"):
        pass


def test_the_registry_opens_at_once_as_many_as_an_address_may_hold() -> None:
    registry = RelayRegistry(max_websockets=100, stop_grace_s=0.05, max_per_ip=10,
                             opens_per_minute=2, clock=lambda: 0.0)
    with contextlib.ExitStack() as stack:
        for _ in range(10):  # a NAT address's browsers all reconnecting after a restart
            stack.enter_context(registry.slot("10.0.0.1"))
        assert registry.count() == 10


def test_an_open_given_back_does_not_count_and_is_given_back_once() -> None:
    registry = RelayRegistry(max_websockets=100, stop_grace_s=0.05, max_per_ip=1,
                             opens_per_minute=3, clock=lambda: 0.0)
    for _ in range(5):  # signed in, or the core unreachable: never counted
        with registry.slot("10.0.0.1") as slot:
            slot.give_back()
    for _ in range(2):  # two of the three counted
        with registry.slot("10.0.0.1"):
            pass
    with registry.slot("10.0.0.1") as slot:
        slot.give_back()
        slot.give_back()  # once only: this leaves one, not two
    with registry.slot("10.0.0.1"):
        pass
    with pytest.raises(Refused), registry.slot("10.0.0.1"):
        pass


def test_opening_websockets_is_unlimited_with_zero() -> None:
    registry = RelayRegistry(max_websockets=10_000, stop_grace_s=0.05, clock=lambda: 0.0)
    for _ in range(1_000):
        with registry.slot("10.0.0.1"):
            pass


# --- the core nodes ----------------------------------------------------------------------------


def listening() -> socket.socket:
    server = socket.create_server(("127.0.0.1", 0))
    return server


def test_core_pool_takes_the_nodes_in_turn() -> None:
    with listening() as first, listening() as second:
        pool = CorePool((first.getsockname(), second.getsockname()), connect_timeout=WAIT_S)
        reached = []
        for _ in range(4):
            core = pool.connect("test")
            assert core is not None
            with core:
                reached.append(core.getpeername())
        assert reached == [first.getsockname(), second.getsockname()] * 2


def test_core_pool_skips_a_node_that_is_down_and_says_none_when_all_are() -> None:
    with listening() as down:
        down_address = down.getsockname()
    with listening() as up:
        pool = CorePool((down_address, up.getsockname()), connect_timeout=WAIT_S)
        for _ in range(3):
            core = pool.connect("test")
            assert core is not None
            with core:
                assert core.getpeername() == up.getsockname()
    assert CorePool((down_address,), connect_timeout=WAIT_S).connect("test") is None


# --- the browser's frames (FrameDecoder) -------------------------------------------------------


def _client(payload: bytes, opcode: int = 0x1, *, fin: bool = True, masked: bool = True,
            rsv: int = 0, size_form: int | None = None) -> bytes:
    """A frame as a browser sends it; `size_form` 126/127 forces a longer length field."""
    first = (0x80 if fin else 0) | rsv | opcode
    size = len(payload)
    form = size_form or (size if size < 126 else 126 if size < 65_536 else 127)
    head = bytes([first, (0x80 if masked else 0) | form])
    if form == 126:
        head += size.to_bytes(2)
    elif form == 127:
        head += size.to_bytes(8)
    if not masked:
        return head + payload
    mask = b"\x12\x34\x56\x78"
    return head + mask + bytes(byte ^ mask[index % 4] for index, byte in enumerate(payload))


def _feed_all(decoder: FrameDecoder, *chunks: bytes) -> Received:
    """Everything the chunks brought, as one Received."""
    total = Received()
    for chunk in chunks:
        got = decoder.feed(chunk)
        total.messages += got.messages
        total.replies += got.replies
        total.pong = total.pong or got.pong
        total.closing = total.closing or got.closing
        total.drain = total.drain or got.drain
        total.close_reply = got.close_reply or total.close_reply
    return total


STREAM = b"".join([
    _client("héllo".encode()),
    _client(b"p", 0x9),
    _client(b"ab", 0x1, fin=False),
    _client(b"q", 0xA),  # a control frame between fragments is allowed
    _client(b"cd", 0x0),
    _client(b"\x00\x01", 0x2),
    _client(b"x" * 200),
    _client(b"\x03\xe8bye", 0x8),
    _client(b"after the close"),
])


def test_frames_split_at_every_byte_decode_the_same() -> None:
    for split in range(len(STREAM) + 1):
        got = _feed_all(FrameDecoder(1_000), STREAM[:split], STREAM[split:])
        assert got.messages == ["héllo", "abcd", b"\x00\x01", "x" * 200], split
        assert got.replies == [b"\x8a\x01p"]  # the pong, with the ping's payload
        assert got.pong
        assert got.closing
        assert not got.drain
        assert got.close_reply == close_frame(1000, "")


def test_a_long_frame_a_byte_at_a_time_and_a_64_bit_length() -> None:
    long_text = "y" * 70_000
    stream = _client(b"z" * 1_000) + _client(long_text.encode())
    decoder = FrameDecoder(100_000)
    got = _feed_all(decoder, *(stream[index:index + 1] for index in range(1_010)),
                    stream[1_010:])
    assert got.messages == ["z" * 1_000, long_text]


def test_the_close_reply_is_not_sent_when_we_began_the_close() -> None:
    decoder = FrameDecoder(1_000)
    decoder.note_close_sent()
    got = decoder.feed(_client(b"\x03\xe9", 0x8))
    assert got.closing
    assert got.close_reply is None


@pytest.mark.parametrize(
    ("stream", "code"),
    [
        (_client(b"{}", rsv=0x40), 1002),  # compressed (permessage-deflate was not agreed)
        (_client(b"{}", masked=False), 1002),
        (_client(b"{}", 0x3), 1002),  # an unknown data opcode
        (_client(b"", 0xB), 1002),  # an unknown control opcode
        (_client(b"cd", 0x0), 1002),  # a continuation with no message begun
        (_client(b"ab", fin=False) + _client(b"cd"), 1002),  # a new message inside one
        (_client(b"p", 0x9, fin=False), 1002),  # a fragmented control frame
        (_client(b"p" * 126, 0x9), 1002),  # a control frame over 125 bytes
        (_client(b"{}", size_form=126), 1002),  # lengths in their shortest form only
        (_client(b"x" * 200, size_form=127), 1002),
        (_client(b"\xff\xfe"), 1007),  # text that is not UTF-8
        (_client(b"ab\xc3", fin=False) + _client(b"\x28", 0x0), 1007),
        (_client(b"\x03", 0x8), 1002),  # a close code of one byte
        (_client(b"\x03\xed", 0x8), 1002),  # 1005 may not be sent
        (_client(b"\x03\xe8\xff", 0x8), 1007),  # a close reason that is not UTF-8
        (_client(b"x" * 600, fin=False) + _client(b"x" * 600, 0x0), 1009),
    ],
)
def test_frames_that_break_the_rules_end_the_websocket(stream: bytes, code: int) -> None:
    decoder = FrameDecoder(1_000)
    got = decoder.feed(stream)
    assert got.closing
    assert got.drain
    assert got.close_reply is not None
    assert got.close_reply[2:4] == code.to_bytes(2)
    later = decoder.feed(_client(b'{"type":"list"}'))
    assert not later.messages
    assert not later.closing


def test_a_frame_over_the_limit_is_refused_from_its_header_alone() -> None:
    header = _client(b"x" * 2_000)[:8]  # 2 + 2 length bytes + 4 mask bytes, no payload
    got = FrameDecoder(1_000).feed(header)
    assert got.close_reply is not None
    assert got.close_reply[2:4] == (1009).to_bytes(2)
