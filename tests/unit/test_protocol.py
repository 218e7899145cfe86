from __future__ import annotations

import json

import pytest

from tcp_server.protocol import (
    AWAY,
    DEFAULT_HISTORY_LIMIT,
    DEFAULT_SEARCH_LIMIT,
    MAX_HISTORY_LIMIT,
    MAX_LINE_BYTES,
    MAX_QUERY_CHARS,
    MAX_SEARCH_LIMIT,
    MAX_SEQ,
    MAX_TOKEN_CHARS,
    Away,
    Back,
    Bye,
    Conversation,
    Conversations,
    Error,
    ErrorCode,
    Event,
    Exit,
    Hello,
    History,
    HistoryPage,
    Joined,
    JsonLinesCodec,
    Left,
    LineBuffer,
    ListConversations,
    ListUsers,
    MarkRead,
    Message,
    Ping,
    Pong,
    ProtocolError,
    Proxy,
    ReadMarker,
    Results,
    Search,
    Send,
    Sent,
    UserInfo,
    Users,
    Welcome,
    encode_event,
    encode_request,
    event_to_wire,
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
        (  # a zone is the gateway's interface, nothing others should see
            b'{"type":"proxy","secret":"s","ip":"fe80::1%\\u001b[2J","port":5}',
            Proxy(secret="s", ip="fe80::1", port=5),
        ),
        (
            b'{"type":"hello","name":"alice","resume":"m2V","after":57}',
            Hello(name="alice", resume="m2V", after=57),
        ),
        (
            b'{"type":"hello","name":"alice","resume":"m2V","after":0,"id":2}',
            Hello(name="alice", id=2, resume="m2V", after=0),
        ),
        (b'{"type":"hello","name":"a","resume":null,"after":null}', Hello(name="a")),
        (b'{"type":"history","with":"*"}', History(with_="*", limit=DEFAULT_HISTORY_LIMIT)),
        (
            b'{"type":"history","with":"Bob","before":120,"limit":1,"id":7}',
            History(with_="Bob", before=120, limit=1, id=7),
        ),
        (
            b'{"type":"history","with":"*","before":0,"limit":200}',
            History(with_="*", before=0, limit=MAX_HISTORY_LIMIT),
        ),
        (b'{"type":"history","with":"*","before":null}', History(with_="*")),
        (
            b'{"type":"search","q":"lunch friday","id":8}',
            Search(q="lunch friday", limit=DEFAULT_SEARCH_LIMIT, id=8),
        ),
        (b'{"type":"search","q":" x ","limit":1}', Search(q=" x ", limit=1)),
        (b'{"type":"search","q":"\\"*\\" NEAR -","limit":100}', Search(q='"*" NEAR -', limit=100)),
        (b'{"type":"read","with":"bob","seq":58,"id":9}', MarkRead(with_="bob", seq=58, id=9)),
        (b'{"type":"read","with":"*","seq":0}', MarkRead(with_="*", seq=0)),
        (b'{"type":"conversations","id":10}', ListConversations(id=10)),
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
        # hello with resume: the token and the last seen seq come together
        (b'{"type":"hello","name":"a","resume":"t"}', ErrorCode.BAD_REQUEST),
        (b'{"type":"hello","name":"a","after":3}', ErrorCode.BAD_REQUEST),
        (b'{"type":"hello","name":"a","resume":"t","after":null}', ErrorCode.BAD_REQUEST),
        (b'{"type":"hello","name":"a","resume":5,"after":3}', ErrorCode.BAD_REQUEST),
        (b'{"type":"hello","name":"a","resume":"t","after":-1}', ErrorCode.BAD_REQUEST),
        (b'{"type":"hello","name":"a","resume":"t","after":"3"}', ErrorCode.BAD_REQUEST),
        (b'{"type":"hello","name":"a","resume":"t","after":true}', ErrorCode.BAD_REQUEST),
        (b'{"type":"hello","name":"a","resume":"t","after":1.5}', ErrorCode.BAD_REQUEST),
        (b'{"type":"hello","name":"a","resume":"t","after":' + str(MAX_SEQ + 1).encode() + b"}",
         ErrorCode.BAD_REQUEST),
        (b'{"type":"hello","name":"a","resume":"' + b"t" * (MAX_TOKEN_CHARS + 1)
         + b'","after":0}', ErrorCode.SESSION_EXPIRED),
        (b'{"type":"hello","name":"a b","resume":"t","after":0}', ErrorCode.BAD_NAME),
        # history
        (b'{"type":"history"}', ErrorCode.BAD_REQUEST),
        (b'{"type":"history","with":""}', ErrorCode.BAD_REQUEST),
        (b'{"type":"history","with":"a b"}', ErrorCode.BAD_REQUEST),
        (b'{"type":"history","with":"**"}', ErrorCode.BAD_REQUEST),
        (b'{"type":"history","with":"' + b"a" * 33 + b'"}', ErrorCode.BAD_REQUEST),
        (b'{"type":"history","with":5}', ErrorCode.BAD_REQUEST),
        (b'{"type":"history","with":"*","limit":0}', ErrorCode.BAD_REQUEST),
        (b'{"type":"history","with":"*","limit":201}', ErrorCode.BAD_REQUEST),
        (b'{"type":"history","with":"*","limit":"5"}', ErrorCode.BAD_REQUEST),
        (b'{"type":"history","with":"*","limit":true}', ErrorCode.BAD_REQUEST),
        (b'{"type":"history","with":"*","before":-1}', ErrorCode.BAD_REQUEST),
        (b'{"type":"history","with":"*","before":1.0}', ErrorCode.BAD_REQUEST),
        # search
        (b'{"type":"search"}', ErrorCode.BAD_REQUEST),
        (b'{"type":"search","q":""}', ErrorCode.BAD_REQUEST),
        (b'{"type":"search","q":"   "}', ErrorCode.BAD_REQUEST),
        (b'{"type":"search","q":" \\t\\n "}', ErrorCode.BAD_REQUEST),
        (b'{"type":"search","q":"' + b"q" * (MAX_QUERY_CHARS + 1) + b'"}',
         ErrorCode.BAD_REQUEST),
        (b'{"type":"search","q":"\\ud800"}', ErrorCode.BAD_REQUEST),
        (b'{"type":"search","q":["a"]}', ErrorCode.BAD_REQUEST),
        (b'{"type":"search","q":"a","limit":0}', ErrorCode.BAD_REQUEST),
        (b'{"type":"search","q":"a","limit":101}', ErrorCode.BAD_REQUEST),
        # read
        (b'{"type":"read","with":"bob"}', ErrorCode.BAD_REQUEST),
        (b'{"type":"read","seq":1}', ErrorCode.BAD_REQUEST),
        (b'{"type":"read","with":"bob","seq":-1}', ErrorCode.BAD_REQUEST),
        (b'{"type":"read","with":"bob","seq":null}', ErrorCode.BAD_REQUEST),
        (b'{"type":"read","with":"b o b","seq":1}', ErrorCode.BAD_REQUEST),
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


def test_hello_and_welcome_reprs_hide_the_session_token() -> None:
    assert "m2Vsecret" not in repr(Hello("alice", resume="m2Vsecret", after=3))
    assert "m2Vsecret" not in repr(Welcome("alice", "::1", 1, session="m2Vsecret"))


@pytest.mark.parametrize("limit", [1, MAX_HISTORY_LIMIT])
def test_history_limit_at_its_bounds_is_accepted(limit: int) -> None:
    line = json.dumps({"type": "history", "with": "*", "limit": limit}).encode()
    assert parse_request(line) == History(with_="*", limit=limit)


@pytest.mark.parametrize("limit", [1, MAX_SEARCH_LIMIT])
def test_search_limit_at_its_bounds_is_accepted(limit: int) -> None:
    line = json.dumps({"type": "search", "q": "x", "limit": limit}).encode()
    assert parse_request(line) == Search(q="x", limit=limit)


def test_search_text_of_exactly_the_limit_is_accepted() -> None:
    q = "é" * MAX_QUERY_CHARS
    assert parse_request(json.dumps({"type": "search", "q": q}).encode()) == Search(q=q)


def test_resume_token_of_exactly_the_limit_is_parsed() -> None:
    token = "t" * MAX_TOKEN_CHARS
    line = json.dumps({"type": "hello", "name": "a", "resume": token, "after": MAX_SEQ})
    assert parse_request(line.encode()) == Hello("a", resume=token, after=MAX_SEQ)


def test_new_request_errors_carry_the_request_id() -> None:
    with pytest.raises(ProtocolError) as caught:
        parse_request(b'{"type":"history","with":"*","limit":0,"id":"h1"}')
    assert caught.value.request_id == "h1"


@pytest.mark.parametrize(
    "request_",
    [Hello("x", id=1), ListUsers(), Send("*", "a\nb é", id="z"), Exit(), Ping(id=0),
     Proxy("s", "10.0.0.1", 4), Hello("x", resume="tok", after=0),
     Hello("x", id="h", resume="tok", after=99), History("*"), History("bob", 5, 1, id=3),
     Search("a \"b\" *"), Search("q", 100, id="s"), MarkRead("*", 7), MarkRead("bob", 0, id=1),
     ListConversations(), ListConversations(id=4)],
)
def test_requests_round_trip(request_: object) -> None:
    encoded = encode_request(request_)  # type: ignore[arg-type]
    assert encoded.endswith(b"\n")
    assert encoded.count(b"\n") == 1
    assert parse_request(encoded[:-1]) == request_


# --- events ----------------------------------------------------------------------------------


EVENTS: list[Event] = [
    Welcome("alice", "127.0.0.1", 5, id=1),
    Welcome("alice", "::1", 5, session="m2V", seq=40),
    Welcome("alice", "::1", 5, id="r", session="m2V", seq=63, resumed=True, truncated=True),
    Users((UserInfo("a", "::1", 1, "tcp"), UserInfo("b", "1.2.3.4", 2, "web")), id="l"),
    Users((UserInfo("a", "::1", 1, "tcp", AWAY),)),
    Sent("bob", 1795610750.351),
    Sent("*", 2.5, id=4, seq=41),
    Pong(),
    Bye(),
    Bye(reason="server shutting down", id=3),
    Error("bad_text", "too long", id=9),
    Message("alice", "*", "multi\nline 😀 <b>", 1795610750.5),
    Message("bob", "alice", "are you there?", 1795610790.1, seq=58),
    Joined("carol"),
    Joined("Carol", UserInfo("Carol", "::1", 7, "web")),
    Left("dave"),
    Away("erin"),
    Back("erin"),
    Back("erin", UserInfo("erin", "10.0.0.2", 8, "tcp")),
    HistoryPage("*", (), more=False),
    HistoryPage(
        "bob",
        (Message("alice", "bob", "a", 1.5, 3), Message("bob", "alice", "b\n😀", 2.0, 9)),
        more=True,
        id=7,
    ),
    Results("lunch friday", (Message("bob", "*", "lunch friday?", 3.0, 61),), id="s"),
    Results('"*"', ()),
    ReadMarker("bob", 58, id=9),
    ReadMarker("*", 0),
    Conversations((Conversation("*", 63, 61, 2), Conversation("bob", 58, 58, 0)), id=10),
    Conversations((Conversation("*", 0, 0, 0),)),
]


@pytest.mark.parametrize("event", EVENTS)
def test_events_round_trip_as_one_line(event: Event) -> None:
    encoded = encode_event(event)
    assert encoded.endswith(b"\n")
    assert encoded.count(b"\n") == 1
    assert parse_event(encoded[:-1]) == event


@pytest.mark.parametrize("event", EVENTS)
def test_events_round_trip_through_event_to_wire(event: Event) -> None:
    assert parse_event(json.dumps(event_to_wire(event)).encode()) == event


def test_message_event_uses_from_on_the_wire_and_raw_utf8_with_its_seq() -> None:
    encoded = encode_event(Message("alice", "bob", "é", 1.0, seq=42))
    assert encoded == (
        '{"type":"message","from":"alice","to":"bob","text":"é","ts":1.0,"seq":42}\n'.encode()
    )


def test_sent_event_carries_the_seq() -> None:
    assert encode_event(Sent("bob", 1795610750.351, seq=41)) == (
        b'{"type":"sent","to":"bob","ts":1795610750.351,"seq":41}\n'
    )


def test_welcome_on_the_wire() -> None:
    welcome = Welcome("alice", "127.0.0.1", 55834, id=1, session="m2V", seq=40)
    assert encode_event(welcome) == (
        b'{"type":"welcome","name":"alice","ip":"127.0.0.1","port":55834,"session":"m2V",'
        b'"seq":40,"resumed":false,"id":1}\n'
    )


def test_welcome_of_a_resume_says_truncated_only_when_it_is() -> None:
    resumed = Welcome("alice", "::1", 5, session="m2V", seq=63, resumed=True)
    assert event_to_wire(resumed)["resumed"] is True
    assert "truncated" not in event_to_wire(resumed)
    truncated = Welcome("alice", "::1", 5, session="m2V", seq=63, resumed=True, truncated=True)
    assert event_to_wire(truncated)["truncated"] is True


def test_users_on_the_wire_carry_each_status() -> None:
    users = Users((UserInfo("a", "::1", 1, "tcp"), UserInfo("b", "1.2.3.4", 2, "web", AWAY)))
    assert encode_event(users) == (
        b'{"type":"users","users":[{"name":"a","ip":"::1","port":1,"via":"tcp","status":"online"},'
        b'{"name":"b","ip":"1.2.3.4","port":2,"via":"web","status":"away"}]}\n'
    )


def test_joined_on_the_wire_carries_the_users_entry_as_users_lists_it() -> None:
    entry = UserInfo("bob", "1.2.3.4", 2, "web")
    joined = encode_event(Joined("bob", entry))
    assert joined == (
        b'{"type":"joined","name":"bob","user":{"name":"bob","ip":"1.2.3.4","port":2,'
        b'"via":"web","status":"online"}}\n'
    )
    assert json.loads(joined)["user"] == json.loads(encode_event(Users((entry,))))["users"][0]


def test_back_on_the_wire_carries_the_new_entry() -> None:
    assert encode_event(Back("bob", UserInfo("bob", "::1", 9, "tcp"))) == (
        b'{"type":"back","name":"bob","user":{"name":"bob","ip":"::1","port":9,"via":"tcp",'
        b'"status":"online"}}\n'
    )


@pytest.mark.parametrize("user", [
    '"bob"', "[]", '{"name":"bob"}', '{"name":"bob","ip":"::1","port":"9","via":"tcp"}',
    '{"name":"mallory","ip":"::1","port":9,"via":"tcp"}',
])
@pytest.mark.parametrize("kind", ["joined", "back"])
def test_joined_or_back_with_a_bad_user_entry_is_refused(kind: str, user: str) -> None:
    line = f'{{"type":"{kind}","name":"bob","user":{user}}}'.encode()
    with pytest.raises(ProtocolError) as raised:
        parse_event(line)
    assert raised.value.code == ErrorCode.BAD_REQUEST


def test_an_entry_in_another_case_is_the_same_user() -> None:
    line = b'{"type":"joined","name":"bob","user":{"name":"BOB","ip":"::1","port":9,"via":"tcp"}}'
    assert parse_event(line) == Joined("bob", UserInfo("BOB", "::1", 9, "tcp"))


def test_away_and_back_on_the_wire() -> None:
    assert encode_event(Away("bob")) == b'{"type":"away","name":"bob"}\n'
    assert encode_event(Back("bob")) == b'{"type":"back","name":"bob"}\n'


def test_history_reply_on_the_wire_holds_complete_messages_oldest_first() -> None:
    page = HistoryPage(
        "*", (Message("bob", "*", "a", 1.0, 70), Message("carol", "*", "b", 2.0, 71)), True, id=7
    )
    assert json.loads(encode_event(page)) == {
        "type": "history", "with": "*", "more": True, "id": 7,
        "messages": [
            {"type": "message", "from": "bob", "to": "*", "text": "a", "ts": 1.0, "seq": 70},
            {"type": "message", "from": "carol", "to": "*", "text": "b", "ts": 2.0, "seq": 71},
        ],
    }


def test_results_read_and_conversations_on_the_wire() -> None:
    assert json.loads(encode_event(Results("lunch", (), id=8))) == {
        "type": "results", "q": "lunch", "messages": [], "id": 8,
    }
    assert encode_event(ReadMarker("bob", 58, id=9)) == (
        b'{"type":"read","with":"bob","seq":58,"id":9}\n'
    )
    listed = Conversations((Conversation("*", 63, 61, 2), Conversation("bob", 58, 58, 0)), id=10)
    assert encode_event(listed) == (
        b'{"type":"conversations","conversations":[{"with":"*","last":63,"read":61,"unread":2},'
        b'{"with":"bob","last":58,"read":58,"unread":0}],"id":10}\n'
    )


def test_events_from_a_server_without_the_new_fields_parse_with_defaults() -> None:
    assert parse_event(b'{"type":"message","from":"a","to":"*","text":"t","ts":1}') == (
        Message("a", "*", "t", 1.0, seq=0)
    )
    assert parse_event(b'{"type":"users","users":[{"name":"a","ip":"::1","port":1,"via":"tcp"}]}'
                       ) == Users((UserInfo("a", "::1", 1, "tcp"),))
    assert parse_event(b'{"type":"welcome","name":"a","ip":"::1","port":1}') == (
        Welcome("a", "::1", 1)
    )


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


def test_costly_reads_count_as_several_requests() -> None:
    from tcp_server.protocol import (
        History,
        ListConversations,
        ListUsers,
        Search,
        Send,
        request_cost,
    )

    assert [request_cost(r) for r in [
        Send(to="bob", text="hi"), ListUsers(), Search(q="x"), ListConversations(),
        History(with_="*", limit=1), History(with_="*", limit=100), History(with_="*", limit=101),
        History(with_="*", limit=200),
    ]] == [1, 1, 10, 10, 1, 1, 2, 2]


def test_a_search_counts_each_different_word_and_has_at_most_eight() -> None:
    from tcp_server.protocol import (
        MAX_QUERY_WORDS,
        ErrorCode,
        ProtocolError,
        Search,
        parse_request,
        query_words,
        request_cost,
    )

    assert query_words("the THE thé the fox, the") == ["the", "thé", "fox"]
    # `_` separates words, as in the search index: no phrase of 100 words counted as one.
    assert query_words("a_b_" * 49) == ["a", "b"]
    assert request_cost(Search(q="_".join(f"w{n}" for n in range(8)))) == 40
    with pytest.raises(ProtocolError):
        parse_request(b'{"type":"search","q":"%s"}' % "_".join(f"w{n}" for n in range(9)).encode())
    assert request_cost(Search(q="the " * 50)) == 10  # one word, however often
    eight = " ".join(f"word{n}" for n in range(MAX_QUERY_WORDS))
    assert request_cost(Search(q=eight)) == 40
    assert parse_request(b'{"type":"search","q":"%s"}' % eight.encode()) == Search(q=eight)
    with pytest.raises(ProtocolError) as refused:
        parse_request(b'{"type":"search","q":"%s nine"}' % eight.encode())
    assert refused.value.code is ErrorCode.BAD_REQUEST
    assert "at most 8 different words" in str(refused.value)
