"""The gateway's pure parts, without sockets: frames, the frame queue, origins, config."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from tcp_server.protocol import ProtocolError
from tests.support.core import WAIT_S
from web_gateway.config import SECRET_ENV, config_from_args, normalize_origin
from web_gateway.frames import MAX_FRAME_BYTES, error_frame, frame_to_line
from web_gateway.registry import Refused, RelayRegistry
from web_gateway.relay import Close, FrameQueue, Idle
from web_gateway.views import browser_address

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


# --- the frame queue ---------------------------------------------------------------------------


def test_frame_queue_gives_frames_in_order_then_the_close() -> None:
    queue = FrameQueue(max_bytes=100)
    assert queue.put("a", 1)
    assert queue.put("b", 1)
    assert queue.close([Close(1000, "bye")])
    assert [queue.take(), queue.take(), queue.take(), queue.take()] == [
        "a", "b", Close(1000, "bye"), None
    ]


def test_frame_queue_take_with_a_timeout_gives_idle_when_nothing_comes() -> None:
    queue = FrameQueue(max_bytes=10)
    assert queue.take(timeout=0.01) is Idle.IDLE
    queue.put("a", 1)
    assert queue.take(timeout=0.01) == "a"
    queue.close()
    assert queue.take(timeout=0.01) is None


def test_frame_queue_refuses_a_frame_beyond_its_budget() -> None:
    queue = FrameQueue(max_bytes=10)
    assert queue.put("x" * 6, 6)
    assert not queue.put("y" * 5, 5)
    assert queue.take() == "x" * 6
    assert queue.put("y" * 5, 5)  # taking frees the budget


def test_frame_queue_takes_one_oversized_frame_when_empty() -> None:
    queue = FrameQueue(max_bytes=10)
    assert queue.put("x" * 50, 50)
    assert not queue.put("y", 1)


def test_frame_queue_first_close_wins_and_discard_empties_it() -> None:
    queue = FrameQueue(max_bytes=10)
    queue.put("a", 1)
    assert queue.close([Close(1001, "first")])
    assert not queue.close([Close(1000, "second")], discard=True)
    assert queue.take() is None
    assert queue.put("late", 4)  # discarded silently after close


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
    assert config.threads > config.max_websockets
    assert config.gateway_secret is None


def test_config_pings_every_10_s_and_gives_up_after_20_s_by_default() -> None:
    config = config_from_args([], {})
    assert (config.ping_interval, config.pong_timeout) == (10.0, 20.0)
    config = config_from_args(["--ping-interval", "5", "--pong-timeout", "12.5"], {})
    assert (config.ping_interval, config.pong_timeout) == (5.0, 12.5)


@pytest.mark.parametrize("argv", [["--core", "nohost"], ["--core", "h:99999"],
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
    assert refused.value.ending.close.code == 1001
    assert registry.wait_stopped(WAIT_S)


def test_the_registry_refuses_beyond_its_limit_and_frees_slots() -> None:
    registry = RelayRegistry(max_websockets=1, stop_grace_s=0.05)
    with registry.slot():
        with pytest.raises(Refused) as refused, registry.slot():
            pass
        assert refused.value.ending.close.code == 1013
    with registry.slot():
        assert registry.count() == 1
