"""The browser's end of a relay: simple-websocket (through flask-sock) does the handshake, then
this module reads the websocket's frames and encodes the gateway's own.

simple-websocket would start a reader thread per websocket that also writes to the socket
(pongs, close replies) behind the relay's back; the gateway needs one writer per socket and no
thread it does not own, so `NoReaderThread` takes that thread's place and `BrowserSocket`
reads the socket in the relay's request thread instead. What the browser's frames require in
return (a pong, the close reply) comes back from `read()` as bytes for the relay's single
writer of the browser socket.

Frames the gateway sends are encoded here without state: a server's frames are not masked,
and the gateway negotiates no extension. Compression is never negotiated
(`refuse_compression`): a permessage-deflate frame of a few hundred kilobytes can inflate to
gigabytes before any size check sees it, and chat lines are short.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any, Final

from wsproto import WSConnection
from wsproto.events import BytesMessage, CloseConnection, Ping, Pong, TextMessage

# Frame opcodes (RFC 6455, section 5.2).
OP_TEXT: Final = 0x1
OP_CLOSE: Final = 0x8
OP_PING: Final = 0x9
OP_PONG: Final = 0xA

CLOSE_PROTOCOL_ERROR: Final = 1002
CLOSE_TOO_BIG: Final = 1009
PARSE_FAILURE_CODES: Final = frozenset({CLOSE_PROTOCOL_ERROR, 1007, CLOSE_TOO_BIG})
MAX_CLOSE_REASON_BYTES: Final = 123  # a control frame carries at most 125 bytes


def refuse_compression(environ: MutableMapping[str, Any]) -> None:
    """Take the browser's offer of extensions (permessage-deflate) out of the handshake.

    Called before simple-websocket accepts: it then accepts without extensions, and a frame
    that is compressed anyway (RSV1 set) is a protocol error (1002), never inflated.
    """
    environ.pop("HTTP_SEC_WEBSOCKET_EXTENSIONS", None)


class NoReaderThread:
    """Stands in for simple-websocket's reader thread (SOCK_SERVER_OPTIONS thread_class).

    simple-websocket starts one per websocket right after its handshake; the relay reads the
    socket itself (BrowserSocket), so this one does nothing.
    """

    name = "simple-websocket-reader (unused)"

    def __init__(self, *, target: Callable[[], object]) -> None:
        del target  # simple-websocket's own reader loop: not run

    def start(self) -> None:
        """Nothing to start."""

    def join(self, timeout: float | None = None) -> None:
        """Nothing to wait for."""

    def is_alive(self) -> bool:
        return False


def _frame(opcode: int, payload: bytes) -> bytes:
    size = len(payload)
    if size < 126:
        head = struct.pack("!BB", 0x80 | opcode, size)
    elif size < 65_536:
        head = struct.pack("!BBH", 0x80 | opcode, 126, size)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 127, size)
    return head + payload


def text_frame(data: bytes) -> bytes:
    """A text frame holding `data`, which must be UTF-8 (the core's lines are)."""
    return _frame(OP_TEXT, data)


def ping_frame() -> bytes:
    return _frame(OP_PING, b"")


def close_frame(code: int, reason: str) -> bytes:
    # Cut to the limit without splitting a character.
    encoded = reason.encode("utf-8")[:MAX_CLOSE_REASON_BYTES].decode("utf-8", "ignore")
    return _frame(OP_CLOSE, struct.pack("!H", code) + encoded.encode("utf-8"))


@dataclass(slots=True)
class Received:
    """What one read from the browser brought."""

    messages: list[str | bytes] = field(default_factory=list)
    replies: list[bytes] = field(default_factory=list)  # pongs, for the browser's writer
    pong: bool = False  # the browser answered a ping
    # The websocket ends: the close frame to send back (None if the browser's own close
    # answered ours, or the connection just ended).
    closing: bool = False
    close_reply: bytes | None = None
    # The gateway ends the websocket for the browser's fault (a frame too big, a protocol
    # error): the browser may still be sending, so read on (drain) until it stops or is cut,
    # or the kernel would answer its bytes with a reset that destroys the close frame.
    drain: bool = False


class BrowserSocket:
    """Reads one browser's websocket after simple-websocket's handshake; one reader only."""

    def __init__(self, server: Any, *, max_message_bytes: int, recv_bytes: int) -> None:
        """`server` is the simple_websocket.Server flask-sock hands the route."""
        self.sock: socket.socket = server.sock
        self._codec: WSConnection = server.ws
        self._server = server
        self._max_message_bytes = max_message_bytes
        self._recv_bytes = recv_bytes
        self._parts: list[str | bytes] = []  # the fragments of an unfinished message
        self._part_bytes = 0
        self._close_sent = False

    def detach(self) -> None:
        """Tell flask-sock the websocket is over, so that it sends no close frame of its own:
        the relay has sent it, or the connection is gone."""
        self._server.connected = False

    def note_close_sent(self) -> None:
        """The relay has queued its close frame: the browser's next close only answers it."""
        self._close_sent = True

    def read(self) -> Received:
        """Block for the next bytes from the browser and decode them.

        Raises OSError when the connection is broken; returns `closing` at its end.
        """
        data = self.sock.recv(self._recv_bytes)
        got = Received()
        if not data:
            got.closing = True
            return got
        self._codec.receive_data(data)
        for event in self._codec.events():
            if isinstance(event, TextMessage | BytesMessage):
                part = event.data if isinstance(event.data, str) else bytes(event.data)
                if not self._add_part(part, event.message_finished, got):
                    got.closing = got.drain = True
                    got.close_reply = close_frame(CLOSE_TOO_BIG, "message too big")
                    return got
            elif isinstance(event, Ping):
                got.replies.append(_frame(OP_PONG, bytes(event.payload)))
            elif isinstance(event, Pong):
                got.pong = True
            elif isinstance(event, CloseConnection):
                got.closing = True
                # wsproto reports a frame it cannot parse (a compressed one, invalid UTF-8)
                # as a close with these codes: that close is ours to send.
                got.drain = event.code in PARSE_FAILURE_CODES
                if not self._close_sent:  # the browser began the close: answer it
                    got.close_reply = close_frame(_reply_code(event.code), "")
                return got
        return got

    def drain(self) -> None:
        """Read and discard until the browser closes the connection or it is cut; raises
        OSError when it is broken."""
        while self.sock.recv(self._recv_bytes):
            pass

    def _add_part(self, data: str | bytes, finished: bool, got: Received) -> bool:
        size = len(data)  # characters for text: a cheap bound, UTF-8 is at most 4 times it
        self._part_bytes += size
        if self._part_bytes > self._max_message_bytes:
            return False
        if finished and not self._parts:
            got.messages.append(data)
        else:
            self._parts.append(data)
            if finished:  # a message's fragments are all text or all binary
                texts = [part for part in self._parts if isinstance(part, str)]
                blobs = [part for part in self._parts if isinstance(part, bytes)]
                got.messages.append("".join(texts) if texts else b"".join(blobs))
                self._parts.clear()
        if finished:
            self._part_bytes = 0
        return True


def _reply_code(code: int) -> int:
    # The close reply echoes the browser's code (RFC 6455, 5.5.1); codes that may not be sent
    # on the wire (1005 "no status", 1006 "abnormal", and wsproto's parse failures are sent
    # as themselves) become a normal close or a protocol error.
    if code in (1005, 1006):
        return 1000
    if code == 1015 or not (1000 <= code < 5000):
        return CLOSE_PROTOCOL_ERROR
    return code
