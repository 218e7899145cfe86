from __future__ import annotations

import json

import pytest

from tcp_server.protocol import (
    MAX_LINE_BYTES,
    Bye,
    Error,
    ErrorCode,
    Exit,
    Hello,
    Joined,
    JsonLinesCodec,
    Left,
    LineBuffer,
    ListUsers,
    Message,
    Ping,
    Pong,
    ProtocolError,
    Proxy,
    Send,
    Sent,
    UserInfo,
    Users,
    Welcome,
    encode_event,
    encode_request,
    parse_event,
    parse_request,
)

# --- framing ---------------------------------------------------------------------------------


def test_line_buffer_gives_the_same_lines_whatever_the_split() -> None:
    stream = b'{"a":1}\n{"b":"\xc3\xa9"}\r\n\n{"c":3}\npartial'
    expected = [b'{"a":1}', b'{"b":"\xc3\xa9"}', b"", b'{"c":3}']
    for split in range(len(stream) + 1):
        buffer = LineBuffer()
        lines = buffer.feed(stream[:split]) + buffer.feed(stream[split:])
        assert lines == expected, split
        assert buffer.pending == b"partial"


def test_line_buffer_fed_a_byte_at_a_time() -> None:
    buffer = LineBuffer()
    lines = [line for byte in b"one\ntwo\r\n" for line in buffer.feed(bytes([byte]))]
    assert lines == [b"one", b"two"]


def test_line_of_exactly_the_limit_is_accepted() -> None:
    body = b"x" * (MAX_LINE_BYTES - 1)
    assert LineBuffer().feed(body + b"\n") == [body]


def test_line_of_exactly_the_limit_arriving_in_pieces_is_accepted() -> None:
    buffer = LineBuffer()
    assert buffer.feed(b"x" * (MAX_LINE_BYTES - 1)) == []
    assert buffer.feed(b"\n") == [b"x" * (MAX_LINE_BYTES - 1)]


def test_crlf_line_of_exactly_the_limit_is_accepted() -> None:
    body = b"x" * (MAX_LINE_BYTES - 2)
    assert LineBuffer().feed(body + b"\r\n") == [body]


@pytest.mark.parametrize("pieces", [1, 2, 7])
def test_line_one_byte_over_the_limit_is_refused_and_the_next_line_survives(pieces: int) -> None:
    stream = b"x" * MAX_LINE_BYTES + b"\n" + b"next\n"
    buffer = LineBuffer()
    size = len(stream) // pieces + 1
    out = [item for i in range(0, len(stream), size) for item in buffer.feed(stream[i : i + size])]
    assert len(out) == 2
    assert isinstance(out[0], ProtocolError)
    assert out[0].code is ErrorCode.LINE_TOO_LONG
    assert out[1] == b"next"


def test_over_long_line_is_reported_once_when_it_ends() -> None:
    buffer = LineBuffer(max_line_bytes=10)
    assert buffer.feed(b"x" * 25) == []
    assert buffer.feed(b"y" * 25) == []
    out = buffer.feed(b"z\nok\n")
    assert [type(item) for item in out] == [ProtocolError, bytes]
    assert out[1] == b"ok"


def test_line_buffer_does_not_keep_an_over_long_line_in_memory() -> None:
    buffer = LineBuffer(max_line_bytes=100)
    for _ in range(100):
        buffer.feed(b"x" * 1000)
    assert buffer.pending == b""


# --- parsing requests ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b'{"type":"hello","name":"alice"}', Hello(name="alice")),
        (b'{"type":"hello","name":"A_b-9","id":7}', Hello(name="A_b-9", id=7)),
        (b'{"type":"list","id":"x"}', ListUsers(id="x")),
        (b'{"type":"send","to":"*","text":"hi\\nthere"}', Send(to="*", text="hi\nthere")),
        (b'{"type":"exit"}', Exit()),
        (b'{"type":"ping","extra":[1,2]}', Ping()),
        (
            b'{"type":"proxy","secret":"s","ip":"::1","port":5}',
            Proxy(secret="s", ip="::1", port=5),
        ),
    ],
)
def test_parse_request(line: bytes, expected: object) -> None:
    assert parse_request(line) == expected


@pytest.mark.parametrize(
    ("line", "code"),
    [
        (b"\xff\xfe", ErrorCode.BAD_REQUEST),
        (b"not json", ErrorCode.BAD_REQUEST),
        (b"[1,2]", ErrorCode.BAD_REQUEST),
        (b'"hello"', ErrorCode.BAD_REQUEST),
        (b"[" * 100_000, ErrorCode.BAD_REQUEST),
        (b"{}", ErrorCode.BAD_REQUEST),
        (b'{"type":5}', ErrorCode.BAD_REQUEST),
        (b'{"type":"dance"}', ErrorCode.UNKNOWN_TYPE),
        (b'{"type":"hello"}', ErrorCode.BAD_REQUEST),
        (b'{"type":"hello","name":5}', ErrorCode.BAD_REQUEST),
        (b'{"type":"hello","name":""}', ErrorCode.BAD_NAME),
        (b'{"type":"hello","name":"a b"}', ErrorCode.BAD_NAME),
        ('{"type":"hello","name":"a😀"}'.encode(), ErrorCode.BAD_NAME),
        (b'{"type":"hello","name":"' + b"a" * 33 + b'"}', ErrorCode.BAD_NAME),
        (b'{"type":"hello","name":"al\\nice"}', ErrorCode.BAD_NAME),
        (b'{"type":"send","to":"bob"}', ErrorCode.BAD_REQUEST),
        (b'{"type":"send","text":"hi"}', ErrorCode.BAD_REQUEST),
        (b'{"type":"send","to":"bob","text":""}', ErrorCode.BAD_TEXT),
        (b'{"type":"send","to":"bob","text":"' + b"a" * 4001 + b'"}', ErrorCode.BAD_TEXT),
        (b'{"type":"send","to":"bob","text":"\\ud800"}', ErrorCode.BAD_TEXT),
        (b'{"type":"ping","id":1.5}', ErrorCode.BAD_REQUEST),
        (b'{"type":"ping","id":true}', ErrorCode.BAD_REQUEST),
        (b'{"type":"ping","id":"' + b"i" * 65 + b'"}', ErrorCode.BAD_REQUEST),
        (b'{"type":"proxy","secret":"s","ip":"nope","port":1}', ErrorCode.BAD_REQUEST),
        (b'{"type":"proxy","secret":"s","ip":"1.2.3.4","port":70000}', ErrorCode.BAD_REQUEST),
    ],
)
def test_parse_request_errors(line: bytes, code: ErrorCode) -> None:
    with pytest.raises(ProtocolError) as caught:
        parse_request(line)
    assert caught.value.code is code
    assert caught.value.message


def test_error_carries_the_request_id() -> None:
    with pytest.raises(ProtocolError) as caught:
        parse_request(b'{"type":"hello","name":"","id":"q1"}')
    assert caught.value.to_event() == Error(code="bad_name", message=caught.value.message, id="q1")


def test_text_of_exactly_4000_characters_with_emoji_and_newlines_is_accepted() -> None:
    text = ("😀\n" * 2000)[:4000]
    request = parse_request(json.dumps({"type": "send", "to": "b", "text": text}).encode())
    assert request == Send(to="b", text=text)


def test_proxy_repr_hides_the_secret() -> None:
    assert "hunter2" not in repr(Proxy(secret="hunter2", ip="1.2.3.4", port=1))


@pytest.mark.parametrize(
    "request_",
    [Hello("x", id=1), ListUsers(), Send("*", "a\nb é", id="z"), Exit(), Ping(id=0),
     Proxy("s", "10.0.0.1", 4)],
)
def test_requests_round_trip(request_: object) -> None:
    encoded = encode_request(request_)  # type: ignore[arg-type]
    assert encoded.endswith(b"\n")
    assert encoded.count(b"\n") == 1
    assert parse_request(encoded[:-1]) == request_


# --- events ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "event",
    [
        Welcome("alice", "127.0.0.1", 5, id=1),
        Users((UserInfo("a", "::1", 1, "tcp"), UserInfo("b", "1.2.3.4", 2, "web")), id="l"),
        Sent("bob", 1795610750.351),
        Pong(),
        Bye(),
        Bye(reason="server shutting down", id=3),
        Error("bad_text", "too long", id=9),
        Message("alice", "*", "multi\nline 😀 <b>", 1795610750.5),
        Joined("carol"),
        Left("dave"),
    ],
)
def test_events_round_trip_as_one_line(event: object) -> None:
    encoded = encode_event(event)  # type: ignore[arg-type]
    assert encoded.endswith(b"\n")
    assert encoded.count(b"\n") == 1
    assert parse_event(encoded[:-1]) == event


def test_message_event_uses_from_on_the_wire_and_raw_utf8() -> None:
    encoded = encode_event(Message("alice", "bob", "é", 1.0))
    assert encoded == '{"type":"message","from":"alice","to":"bob","text":"é","ts":1.0}\n'.encode()


def test_bye_without_reason_has_no_reason_field() -> None:
    assert encode_event(Bye(id=1)) == b'{"type":"bye","id":1}\n'


def test_unknown_event_type_is_reported_for_the_client_to_skip() -> None:
    with pytest.raises(ProtocolError) as caught:
        parse_event(b'{"type":"typing","name":"x"}')
    assert caught.value.code is ErrorCode.UNKNOWN_TYPE


# --- the codec -------------------------------------------------------------------------------


def test_codec_frames_a_stream_and_parses_each_frame() -> None:
    codec = JsonLinesCodec()
    frames = codec.feed(b'{"type":"ping"}\n  \nbad\n{"type":"exit","id":2}\n')
    assert frames == [b'{"type":"ping"}', b"  ", b"bad", b'{"type":"exit","id":2}']
    assert codec.parse(frames[0], registered=False) == Ping()
    assert codec.parse(frames[1], registered=False) is None
    with pytest.raises(ProtocolError):
        codec.parse(frames[2], registered=True)
    assert codec.parse(frames[3], registered=True) == Exit(id=2)
    assert codec.flush_timeout() is None
