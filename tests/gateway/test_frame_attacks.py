"""A hostile browser against the gateway's websocket reading (the review of the sans-I/O
FrameDecoder and the relay's Pipe): what each attempt may cost, in memory and in time, and
that the gateway ends it cleanly."""

from __future__ import annotations

import tracemalloc
from collections.abc import Iterator

from web_gateway.websocket import FrameDecoder

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
