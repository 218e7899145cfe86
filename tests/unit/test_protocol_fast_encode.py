"""encode_event's direct formatting of message, sent and users events is byte for byte json's."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tcp_server.protocol import (
    MAX_SEQ,
    Message,
    Sent,
    UserInfo,
    Users,
    encode,
    encode_event,
    event_to_wire,
)

# Any text JSON can carry (hypothesis leaves out lone surrogates): quotes, backslashes,
# control characters, emoji; and any number, NaN and infinities included.
texts = st.text()
numbers = st.floats() | st.integers(min_value=-(2**63), max_value=2**63)
seqs = st.integers(min_value=0, max_value=MAX_SEQ)


@given(sender=texts, to=texts, text=texts, ts=numbers, seq=seqs)
def test_message_event_encodes_exactly_as_the_generic_encoder(
    sender: str, to: str, text: str, ts: float, seq: int
) -> None:
    event = Message(sender=sender, to=to, text=text, ts=ts, seq=seq)
    assert encode_event(event) == encode(event_to_wire(event))


@given(to=texts, ts=numbers, seq=seqs)
def test_sent_event_encodes_exactly_as_the_generic_encoder(to: str, ts: float, seq: int) -> None:
    event = Sent(to=to, ts=ts, seq=seq)
    assert encode_event(event) == encode(event_to_wire(event))


def test_sent_event_with_an_id_keeps_the_id() -> None:
    assert encode_event(Sent(to="bob", ts=1.5, id="r1", seq=41)) == (
        b'{"type":"sent","to":"bob","ts":1.5,"seq":41,"id":"r1"}\n'
    )


def test_message_event_keeps_unicode_and_escapes_newlines() -> None:
    event = Message(sender="a", to="*", text='hi "you"\n😀', ts=1795610750.351, seq=42)
    assert encode_event(event) == (
        b'{"type":"message","from":"a","to":"*","text":"hi \\"you\\"\\n\xf0\x9f\x98\x80",'
        b'"ts":1795610750.351,"seq":42}\n'
    )


users = st.tuples(texts, texts, st.integers(0, 65_535), texts, st.sampled_from(["online", "away"]))
ids = st.none() | texts | st.integers(min_value=-(2**63), max_value=2**63)


@given(entries=st.lists(users, max_size=5), rid=ids)
def test_users_event_encodes_exactly_as_the_generic_encoder(
    entries: list[tuple[str, str, int, str, str]], rid: str | int | None
) -> None:
    event = Users(users=tuple(UserInfo(*entry) for entry in entries), id=rid)
    assert encode_event(event) == encode(event_to_wire(event))


def test_users_event_is_made_again_for_another_list_and_reused_for_the_same() -> None:
    first = (UserInfo("alice", "192.0.2.1", 1, "tcp"),)
    second = (*first, UserInfo("bob", "192.0.2.2", 2, "web"))
    assert b"bob" not in encode_event(Users(users=first))
    assert b"bob" in encode_event(Users(users=second, id=1))
    equal_but_new = tuple(list(first))
    assert b"bob" not in encode_event(Users(users=equal_but_new, id=2))
    assert encode_event(Users(users=first, id="x")).endswith(b'}],"id":"x"}\n')
