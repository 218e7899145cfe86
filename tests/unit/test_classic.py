from __future__ import annotations

import time

import pytest

from tcp_server.classic import HELP, HELP_BEFORE_NAME, PlainTextCodec, printable
from tcp_server.protocol import (
    MAX_LINE_BYTES,
    Bye,
    Error,
    ErrorCode,
    Exit,
    Hello,
    Joined,
    Left,
    ListUsers,
    Message,
    Ping,
    Pong,
    ProtocolError,
    Send,
    Sent,
    UserInfo,
    Users,
    Welcome,
)


def parse(line: str, registered: bool = True) -> object:
    return PlainTextCodec().parse(line.encode(), registered)


@pytest.mark.parametrize(
    ("line", "registered", "expected"),
    [
        ("alice", False, Hello("alice", recent=10)),
        ("  alice  ", False, Hello("alice", recent=10)),
        ("LIST", True, ListUsers()),
        ("send bob hello there", True, Send("bob", "hello there")),
        ("Send * hi all", True, Send("*", "hi all")),
        ("send bob   spaced  out", True, Send("bob", "  spaced  out")),
        ("exit", False, Exit()),
        ("EXIT", True, Exit()),
        ("ping", True, Ping()),
        ("help", False, HELP_BEFORE_NAME),
        ("HELP", True, HELP),
        ("", True, None),
        ("   ", False, None),
    ],
)
def test_parse_commands(line: str, registered: bool, expected: object) -> None:
    assert parse(line, registered) == expected


@pytest.mark.parametrize(
    ("line", "registered", "code"),
    [
        ("bad name", False, ErrorCode.BAD_NAME),
        ("x" * 33, False, ErrorCode.BAD_NAME),
        ("list", False, ErrorCode.NOT_REGISTERED),
        ("send bob hi", False, ErrorCode.NOT_REGISTERED),
        ("dance", True, ErrorCode.UNKNOWN_TYPE),
        ("send", True, ErrorCode.BAD_REQUEST),
        ("send bob", True, ErrorCode.BAD_TEXT),
        ("send bob    ", True, ErrorCode.BAD_TEXT),
        ("send bob " + "x" * 4001, True, ErrorCode.BAD_TEXT),
    ],
)
def test_parse_errors(line: str, registered: bool, code: ErrorCode) -> None:
    with pytest.raises(ProtocolError) as caught:
        parse(line, registered)
    assert caught.value.code is code


def test_invalid_utf8_is_bad_request() -> None:
    with pytest.raises(ProtocolError) as caught:
        PlainTextCodec().parse(b"send bob \xff", registered=True)
    assert caught.value.code is ErrorCode.BAD_REQUEST


def test_a_pause_ends_a_command_sent_without_newline() -> None:
    codec = PlainTextCodec(pause_s=0.1)
    assert codec.flush_timeout() is None
    assert codec.feed(b"li") == []
    assert codec.flush_timeout() == 0.1
    assert codec.feed(b"st") == []
    assert codec.flush() == [b"list"]
    assert codec.flush_timeout() is None
    assert codec.flush() == []


def test_a_pause_also_ends_an_over_long_command_without_newline() -> None:
    codec = PlainTextCodec()
    assert codec.feed(b"x" * MAX_LINE_BYTES) == []
    assert codec.flush_timeout() is not None
    [error] = codec.flush()
    assert isinstance(error, ProtocolError)
    assert error.code is ErrorCode.LINE_TOO_LONG
    assert codec.flush_timeout() is None
    assert codec.feed(b"list\n") == [b"list"]


def test_newlines_and_control_characters_never_reach_a_terminal_raw() -> None:
    assert printable("a\nb\r\nc\rd\te\x1b[31mf\x7f\x9b") == "a↵b↵c↵d\te\\x1b[31mf\\x7f\\x9b"


def test_every_event_is_rendered_as_readable_lines() -> None:
    codec = PlainTextCodec()
    ts = 1795610750.5
    clock = time.strftime("%H:%M:%S", time.localtime(ts))
    assert codec.encode(Message("bob", "alice", "hi\nthere", ts)) == (
        f"[{clock}] bob -> you: hi↵there\n".encode()
    )
    everyone = codec.encode(Message("bob", "*", "all", ts))
    assert everyone == f"[{clock}] bob -> everyone: all\n".encode()
    assert codec.encode(Joined("carol")) == b"* carol joined\n"
    assert codec.encode(Left("carol")) == b"* carol left\n"
    assert codec.encode(Sent("bob", ts)) == b"sent to bob\n"
    assert codec.encode(Sent("*", ts)) == b"sent to everyone\n"
    assert codec.encode(Pong()) == b"pong\n"
    assert codec.encode(Bye()) == b"bye\n"
    assert codec.encode(Bye(reason="server shutting down")) == b"bye: server shutting down\n"
    assert codec.encode(Error("no_such_user", "no user named 'x' is online")) == (
        b"error: no user named 'x' is online\n"
    )
    assert codec.encode(Welcome("alice", "::1", 5)).startswith(b"welcome alice! you are [::1]:5.")


def test_user_list_has_one_line_per_user_with_address_and_kind() -> None:
    users = Users((UserInfo("alice", "127.0.0.1", 5000, "tcp"), UserInfo("bob", "::1", 6, "web")))
    lines = PlainTextCodec().encode(users).decode().splitlines()
    assert lines[0] == "2 users online:"
    assert lines[1].split() == ["alice", "127.0.0.1:5000", "terminal"]
    assert lines[2].split() == ["bob", "[::1]:6", "browser"]
