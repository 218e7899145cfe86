"""encode_event's direct formatting of message and sent events is byte for byte json's."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tcp_server.protocol import MAX_SEQ, Message, Sent, encode, encode_event, event_to_wire

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
