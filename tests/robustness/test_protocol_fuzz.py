"""Property tests of the sans-I/O protocol module: any bytes in -> requests or precise errors.

Nothing here touches a socket. Every property feeds arbitrary or mutated input and checks that
the module answers with a request, an event or a ProtocolError carrying a wire error code — and
never raises anything else — and that where bytes are split never changes the result.
"""

from __future__ import annotations

import contextlib
import json
import queue
import tempfile
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tcp_server.classic import PlainTextCodec
from tcp_server.commands import Commands, Session
from tcp_server.dialects import Codec
from tcp_server.protocol import (
    MAX_ID_CHARS,
    MAX_NAME_CHARS,
    MAX_TEXT_CHARS,
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
    Request,
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
from tcp_server.registry import LocalRoom
from tcp_server.store import SqliteStore

FUZZ = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
REQUEST_TYPES = (Hello, ListUsers, Send, Exit, Ping, Proxy)

# --- strategies ----------------------------------------------------------------------------------

names = st.text(
    st.sampled_from("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"),
    min_size=1,
    max_size=MAX_NAME_CHARS,
)
# Any Unicode that UTF-8 can carry (lone surrogates cannot be sent; see the raw-byte tests).
unicode = st.characters(codec="utf-8")
# Lone surrogates too: json.dumps escapes them as \\udXXX, valid JSON that UTF-8 cannot carry.
any_character = st.characters() | st.characters(categories=["Cs"])


def any_strings(max_size: int) -> st.SearchStrategy[str]:
    # st.text() never yields surrogates, whatever its alphabet: join characters instead.
    return st.lists(any_character, max_size=max_size).map("".join)


texts = st.text(unicode, min_size=1, max_size=MAX_TEXT_CHARS)
request_ids = st.none() | st.integers() | st.text(unicode, max_size=MAX_ID_CHARS)
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | any_strings(20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                max_size=3),
    max_leaves=8,
)
field_names = st.sampled_from(["type", "name", "to", "text", "id", "secret", "ip", "port"])
type_values = st.sampled_from(["hello", "list", "send", "exit", "ping", "proxy", "HELLO", ""])
# Objects shaped like requests: a known type (usually), with each field of any JSON type.
request_like_objects = st.dictionaries(
    field_names, json_values | type_values | names, max_size=6
).map(lambda obj: obj if "type" in obj else {"type": "send", **obj})

# Proxy requests that parse (valid address) with a secret of any JSON string, surrogates included.
proxy_objects = st.fixed_dictionaries(
    {"type": st.just("proxy"), "secret": any_strings(12) | st.just("s3cret"),
     "ip": st.ip_addresses().map(str), "port": st.integers(0, 65_535)}
)

valid_requests: st.SearchStrategy[Request] = st.one_of(
    st.builds(Hello, name=names, id=request_ids),
    st.builds(ListUsers, id=request_ids),
    st.builds(Send, to=names | st.just("*"), text=texts, id=request_ids),
    st.builds(Exit, id=request_ids),
    st.builds(Ping, id=request_ids),
    st.builds(
        Proxy,
        secret=st.text(unicode, max_size=40),
        ip=st.ip_addresses().map(str),
        port=st.integers(0, 65_535),
        id=request_ids,
    ),
)


@st.composite
def mutated_lines(draw: st.DrawFn) -> bytes:
    """A valid request line, then flipped, inserted, deleted or truncated bytes."""
    data = bytearray(encode_request(draw(valid_requests)).rstrip(b"\n"))
    for _ in range(draw(st.integers(1, 4))):
        position = draw(st.integers(0, len(data)))
        operation = draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        if operation == "flip" and position < len(data):
            data[position] ^= 1 << draw(st.integers(0, 7))
        elif operation == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=4))
        elif operation == "delete":
            del data[position : position + draw(st.integers(1, 8))]
        else:
            del data[position:]
    return bytes(data.replace(b"\n", b" "))


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(cut, len(data)) for cut in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


def outcome(item: object) -> object:
    """A comparable form of a parse result: the request, or the error's fields."""
    if isinstance(item, ProtocolError):
        return ("error", item.code, item.message, item.request_id)
    return item


def assert_precise(error: ProtocolError) -> None:
    """An error the server can send as it is: a wire code, a message, one encodable line."""
    assert isinstance(error.code, ErrorCode)
    assert error.message
    line = encode_event(error.to_event())
    assert line.endswith(b"\n")
    assert line.count(b"\n") == 1
    assert json.loads(line)["code"] == error.code.value


# --- LineBuffer ----------------------------------------------------------------------------------


@FUZZ
@given(data=st.binary(max_size=400), cuts=st.lists(st.integers(0, 400), max_size=20),
       max_line=st.integers(2, 80))
def test_line_buffer_gives_the_same_lines_however_the_bytes_are_split(
    data: bytes, cuts: list[int], max_line: int
) -> None:
    whole = [outcome(item) for item in LineBuffer(max_line).feed(data)]
    buffer = LineBuffer(max_line)
    pieces = [outcome(item) for chunk in split_at(data, cuts) for item in buffer.feed(chunk)]
    assert pieces == whole


@FUZZ
@given(data=st.binary(max_size=400), max_line=st.integers(2, 80))
def test_line_buffer_gives_the_same_lines_fed_a_byte_at_a_time(data: bytes, max_line: int) -> None:
    whole = [outcome(item) for item in LineBuffer(max_line).feed(data)]
    buffer = LineBuffer(max_line)
    single = [outcome(item) for i in range(len(data)) for item in buffer.feed(data[i : i + 1])]
    assert single == whole


@FUZZ
@given(data=st.binary(max_size=400), max_line=st.integers(2, 80))
def test_line_buffer_lines_respect_the_limit_and_hold_no_newline(
    data: bytes, max_line: int
) -> None:
    for item in LineBuffer(max_line).feed(data):
        if isinstance(item, ProtocolError):
            assert item.code is ErrorCode.LINE_TOO_LONG
            assert_precise(item)
        else:
            assert b"\n" not in item
            assert len(item) + 1 <= max_line  # the terminator counts


@FUZZ
@given(lines=st.lists(st.binary(max_size=30).map(lambda b: b.replace(b"\n", b"")), max_size=10))
def test_line_buffer_returns_every_short_line_unchanged(lines: list[bytes]) -> None:
    stripped = [line[:-1] if line.endswith(b"\r") else line for line in lines]
    assert LineBuffer(64).feed(b"".join(line + b"\n" for line in lines)) == stripped


# --- parse_request -------------------------------------------------------------------------------


def parse_or_error(line: bytes) -> Request | ProtocolError:
    try:
        return parse_request(line)
    except ProtocolError as error:
        return error


@FUZZ
@given(line=st.binary(max_size=300))
def test_parse_request_answers_any_bytes_with_a_request_or_a_precise_error(line: bytes) -> None:
    result = parse_or_error(line)
    if isinstance(result, ProtocolError):
        assert_precise(result)
    else:
        assert isinstance(result, REQUEST_TYPES)


@FUZZ
@given(line=mutated_lines())
def test_parse_request_answers_mutated_requests_with_a_request_or_a_precise_error(
    line: bytes,
) -> None:
    result = parse_or_error(line)
    if isinstance(result, ProtocolError):
        assert_precise(result)
    else:
        assert isinstance(result, REQUEST_TYPES)


@FUZZ
@given(obj=request_like_objects)
def test_parse_request_answers_request_shaped_objects_with_a_request_or_a_precise_error(
    obj: dict[str, Any],
) -> None:
    result = parse_or_error(json.dumps(obj).encode())
    if isinstance(result, ProtocolError):
        assert_precise(result)
        assert result.code in {ErrorCode.BAD_REQUEST, ErrorCode.UNKNOWN_TYPE,
                               ErrorCode.BAD_NAME, ErrorCode.BAD_TEXT}
    else:
        assert isinstance(result, REQUEST_TYPES)


@FUZZ
@given(request=valid_requests)
def test_every_valid_request_survives_encoding_and_parsing(request: Request) -> None:
    assert parse_request(encode_request(request).rstrip(b"\n")) == request


@FUZZ
@given(
    text=texts,
    extra=st.integers(1, 50),
)
def test_text_over_the_limit_is_bad_text(text: str, extra: int) -> None:
    long_text = (text * (MAX_TEXT_CHARS // len(text) + 1))[:MAX_TEXT_CHARS] + "x" * extra
    result = parse_or_error(json.dumps({"type": "send", "to": "a", "text": long_text}).encode())
    assert isinstance(result, ProtocolError)
    assert result.code is ErrorCode.BAD_TEXT


# --- the connection codecs (protocol v1 and the plain-text dialect) ----------------------------


def decode(codec: Codec, chunks: list[bytes], registered: bool = False) -> list[object]:
    """What a connection makes of the chunks: each frame parsed, or the error it earns."""
    results: list[object] = []
    for chunk in chunks:
        for frame in codec.feed(chunk):
            if isinstance(frame, ProtocolError):
                results.append(frame)
                continue
            try:
                results.append(codec.parse(frame, registered))
            except ProtocolError as error:
                results.append(error)
    return results


def assert_request_or_precise_error(item: object) -> None:
    if isinstance(item, ProtocolError):
        assert_precise(item)
    else:  # a request; bytes the dialect answers at once (help); None for a blank line
        assert item is None or isinstance(item, (*REQUEST_TYPES, bytes))


codecs = st.sampled_from([JsonLinesCodec, PlainTextCodec])


@FUZZ
@given(
    lines=st.lists(mutated_lines() | st.binary(max_size=60) | valid_requests.map(
        lambda r: encode_request(r).rstrip(b"\n")), max_size=8),
    cuts=st.lists(st.integers(0, 2_000), max_size=20),
    make_codec=codecs,
    registered=st.booleans(),
)
def test_codec_gives_the_same_results_however_the_stream_is_split(
    lines: list[bytes], cuts: list[int], make_codec: type[Codec], registered: bool
) -> None:
    stream = b"\n".join(line.replace(b"\n", b"") for line in lines) + b"\n"
    whole = decode(make_codec(), [stream], registered)
    pieces = decode(make_codec(), split_at(stream, cuts), registered)
    assert [outcome(item) for item in pieces] == [outcome(item) for item in whole]
    for item in whole:
        assert_request_or_precise_error(item)


@FUZZ
@given(data=st.binary(max_size=2_000), cuts=st.lists(st.integers(0, 2_000), max_size=30),
       make_codec=codecs, registered=st.booleans())
def test_codec_answers_any_byte_stream_with_requests_or_precise_errors(
    data: bytes, cuts: list[int], make_codec: type[Codec], registered: bool
) -> None:
    codec = make_codec(max_line_bytes=256)
    for item in decode(codec, split_at(data, cuts), registered):
        assert_request_or_precise_error(item)
    for item in codec.flush():  # a pause after the last byte, for the plain-text dialect
        if not isinstance(item, ProtocolError):
            with contextlib.suppress(ProtocolError):
                assert_request_or_precise_error(codec.parse(item, registered))


# --- events (what clients parse) -----------------------------------------------------------------

users = st.builds(UserInfo, name=names, ip=st.ip_addresses().map(str),
                  port=st.integers(0, 65_535), via=st.sampled_from(["tcp", "web"]))
timestamps = st.integers(0, 4_000_000_000_000).map(lambda ms: ms / 1000)
events = st.one_of(
    st.builds(Message, sender=names, to=names | st.just("*"), text=texts, ts=timestamps),
    st.builds(Joined, name=names),
    st.builds(Left, name=names),
    st.builds(Welcome, name=names, ip=st.ip_addresses().map(str),
              port=st.integers(0, 65_535), id=request_ids),
    st.builds(Users, users=st.lists(users, max_size=5).map(tuple), id=request_ids),
    st.builds(Sent, to=names | st.just("*"), ts=timestamps, id=request_ids),
    st.builds(Pong, id=request_ids),
    st.builds(Bye, reason=st.none() | st.text(unicode, max_size=60), id=request_ids),
    st.builds(Error, code=st.sampled_from(list(ErrorCode)).map(str),
              message=st.text(unicode, min_size=1, max_size=60), id=request_ids),
)


@FUZZ
@given(event=events)
def test_every_event_is_one_line_and_parses_back_to_itself(event: Any) -> None:
    """Protocol v1: one line per event, and clients read back exactly what was sent."""
    line = encode_event(event)
    assert line.endswith(b"\n")
    assert line.count(b"\n") == 1
    assert parse_event(line.rstrip(b"\n")) == event


@FUZZ
@given(line=st.binary(max_size=300) | mutated_lines())
def test_parse_event_answers_any_bytes_with_an_event_or_a_precise_error(line: bytes) -> None:
    try:
        parse_event(line)
    except ProtocolError as error:
        assert_precise(error)


# --- the commands behind the codec ---------------------------------------------------------------


any_request_lines = (
    mutated_lines()
    | (request_like_objects | proxy_objects).map(lambda o: json.dumps(o).encode())
    | valid_requests.map(lambda r: encode_request(r).rstrip(b"\n"))
)


@FUZZ
@given(
    lines=st.lists(st.tuples(st.integers(0, 2), any_request_lines), max_size=25),
    secret=st.sampled_from([None, "s3cret"]),
)
def test_any_requests_from_several_sessions_get_replies_that_can_be_sent(
    lines: list[tuple[int, bytes]], secret: str | None
) -> None:
    """Whatever the clients send, the rules answer with events that encode to one wire line."""
    room = LocalRoom()
    with tempfile.TemporaryDirectory(prefix="chatroom-fuzz-") as data_dir:
        store = SqliteStore(data_dir, on_commit=room.publish)
        try:
            commands = Commands(room, store, gateway_secret=secret, resume_grace=0,
                                clock=lambda: 1_795_610_750.351)
            run_sessions(commands, room, lines)
        finally:
            store.close()


def run_sessions(commands: Commands, room: LocalRoom, lines: list[tuple[int, bytes]]) -> None:
    delivered: list[bytes] = []
    sessions = [
        Session(ip="127.0.0.1", port=50_000 + i,
                deliver=lambda envelope: delivered.append(envelope.encoded(JsonLinesCodec())))
        for i in range(3)
    ]
    for index, line in lines:
        registered = sessions[index].member is not None
        for item in decode(JsonLinesCodec(), [line.replace(b"\n", b" ") + b"\n"], registered):
            if isinstance(item, ProtocolError):
                replies: list[Any] = [item.to_event()]
            elif item is None or isinstance(item, bytes):
                continue
            else:
                outcome = commands.handle(sessions[index], item)
                replies = list(outcome.replies)
                if outcome.pending is not None:
                    answered: queue.Queue[list[Any]] = queue.Queue()
                    outcome.pending.submit(answered.put)
                    replies += answered.get(timeout=5)
            for reply in replies:
                wire = encode_event(reply)
                assert wire.count(b"\n") == 1
                parse_event(wire.rstrip(b"\n"))
    for session in sessions:
        commands.disconnect(session, 0)
    assert len(room) == 0
    for wire in delivered:
        parse_event(wire.rstrip(b"\n"))


@FUZZ
@given(event=events.filter(lambda e: not isinstance(e, Bye | Error)))
def test_the_plain_text_dialect_renders_what_users_sent_without_control_characters(
    event: Any,
) -> None:
    """Another user's text must not drive a terminal: no escape or other control bytes.

    (A bye's reason and an error's message are the server's own words, not users'.)
    """
    wire = PlainTextCodec().encode(event)
    text = wire.decode("utf-8")
    assert text.endswith("\n")
    assert not [c for c in text if (ord(c) < 0x20 and c not in "\n\t") or 0x7F <= ord(c) < 0xA0]
    if isinstance(event, Message):
        assert text.count("\n") == 1
