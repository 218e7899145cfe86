"""The two dialects of port 9000 and how a connection picks one from its first byte."""

from __future__ import annotations

from typing import Protocol

from tcp_server.classic import PlainTextCodec
from tcp_server.config import ServerConfig
from tcp_server.protocol import Event, JsonLinesCodec, ProtocolError, Request


class Codec(Protocol):
    """A dialect for one connection: frames in, requests out, events encoded. No I/O."""

    def feed(self, data: bytes) -> list[bytes | ProtocolError]:
        """Split received bytes into frames (or line_too_long errors)."""

    def flush_timeout(self) -> float | None:
        """Seconds of silence after which pending bytes end a frame; None: wait for more."""

    def flush(self) -> list[bytes | ProtocolError]:
        """The pending bytes as a frame, after such a silence."""

    def parse(self, frame: bytes, registered: bool) -> Request | bytes | None:
        """A request; bytes to answer directly; None to ignore. Raises ProtocolError."""

    def encode(self, event: Event) -> bytes:
        """An event as bytes on the wire; depends on nothing but the event and the class."""


DEFAULT_CODEC: Codec = JsonLinesCodec()  # speaks to a peer that has not said anything yet

_BLANK = b" \t\r\n"


def choose_codec(first_bytes: bytes, config: ServerConfig) -> Codec:
    """`{` first means protocol v1 (JSON lines); anything else the plain-text dialect."""
    if first_bytes.lstrip(_BLANK).startswith(b"{"):
        return JsonLinesCodec()
    return PlainTextCodec(pause_s=config.text_pause)


def skip_blank(data: bytes) -> bytes:
    """What is left of data before a dialect is chosen: blank bytes say nothing about it."""
    return data.lstrip(_BLANK)
