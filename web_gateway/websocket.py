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

import select
import socket
import struct
import time
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any, Final

from web_gateway.sockets import SocketReader

# Frame opcodes (RFC 6455, section 5.2).
OP_CONTINUATION: Final = 0x0
OP_TEXT: Final = 0x1
OP_BINARY: Final = 0x2
OP_CLOSE: Final = 0x8
OP_PING: Final = 0x9
OP_PONG: Final = 0xA

CLOSE_PROTOCOL_ERROR: Final = 1002
CLOSE_INVALID_DATA: Final = 1007
CLOSE_TOO_BIG: Final = 1009
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
        head = bytes((0x80 | opcode, size))
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

    messages: list[str | bytes] = field(default_factory=list)  # text as str, binary as bytes
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


class FrameDecoder:
    """The browser's websocket frames (RFC 6455, section 5) as the gateway's `Received`:
    sans-I/O, for a server that negotiated no extension.

    Every frame must be masked and have no reserved bit set (a compressed frame is refused,
    never inflated); control frames are short and whole; a message's fragments follow each
    other; text is valid UTF-8; lengths use their shortest form. A frame that breaks a rule
    ends the websocket with 1002 (1007 for text that is not UTF-8), and one that would make
    a message longer than `max_message_bytes` with 1009 as soon as its header is read, before
    its payload is held. After the close (the browser's or ours) nothing more is decoded.
    """

    __slots__ = ("_buf", "_close_sent", "_done", "_max", "_parts", "_text")

    def __init__(self, max_message_bytes: int) -> None:
        self._max = max_message_bytes
        # Bytes of a frame not complete yet: a bytearray, so that a frame arriving a byte at
        # a time is appended to, not copied whole each time.
        self._buf = bytearray()
        # The fragments of an unfinished message, joined as they come: one bytearray, not a
        # list of them, so that what a message holds is its size, whatever the fragments'
        # (an empty fragment adds nothing to the size, and must add no list entry either).
        self._parts = bytearray()
        self._text: bool | None = None  # the unfinished message's kind, None between messages
        self._close_sent = False
        self._done = False

    def note_close_sent(self) -> None:
        """Our close frame is on its way: the browser's next close only answers it."""
        self._close_sent = True

    def feed(self, data: bytes) -> Received:
        got = Received()
        if self._done:
            return got
        buf: bytes | bytearray = data
        if self._buf:
            self._buf += data
            buf = self._buf
        pos, end = 0, len(buf)
        try:
            while end - pos >= 2:
                first, second = buf[pos], buf[pos + 1]
                size = second & 0x7F
                head = pos + 2
                if size == 126:
                    if end - head < 2:
                        break
                    size = int.from_bytes(buf[head:head + 2])
                    head += 2
                    if size < 126:
                        raise _Refused(CLOSE_PROTOCOL_ERROR, "length not in its shortest form")
                elif size == 127:
                    if end - head < 8:
                        break
                    size = int.from_bytes(buf[head:head + 8])
                    head += 8
                    if size < 65_536 or size >> 63:
                        raise _Refused(CLOSE_PROTOCOL_ERROR, "length not in its shortest form")
                opcode = first & 0x0F
                self._check_header(first, second, opcode, size)
                if end - head < 4 + size:
                    break
                payload = _unmask(buf[head + 4:head + 4 + size], buf[head:head + 4])
                pos = head + 4 + size
                if self._frame(first & 0x80, opcode, payload, got):
                    self._done = True
                    break
        except _Refused as refused:
            self._done = True
            got.closing = got.drain = True
            got.close_reply = close_frame(refused.code, refused.reason)
        if self._done:
            self._buf = bytearray()
        elif buf is self._buf:
            del buf[:pos]
        elif pos < end:
            self._buf = bytearray(buf[pos:])
        return got

    def _check_header(self, first: int, second: int, opcode: int, size: int) -> None:
        if first & 0x70:
            raise _Refused(CLOSE_PROTOCOL_ERROR, "reserved bits set (no extension was agreed)")
        if not second & 0x80:
            raise _Refused(CLOSE_PROTOCOL_ERROR, "a client frame must be masked")
        if opcode >= OP_CLOSE:
            if opcode > OP_PONG:
                raise _Refused(CLOSE_PROTOCOL_ERROR, f"unknown opcode {opcode}")
            if not first & 0x80 or size > 125:
                raise _Refused(CLOSE_PROTOCOL_ERROR, "control frames are whole and short")
            return
        if opcode > OP_BINARY:
            raise _Refused(CLOSE_PROTOCOL_ERROR, f"unknown opcode {opcode}")
        if (opcode == OP_CONTINUATION) != (self._text is not None):
            raise _Refused(CLOSE_PROTOCOL_ERROR, "fragments out of order")
        if len(self._parts) + size > self._max:
            raise _Refused(CLOSE_TOO_BIG, "message too big")

    def _frame(self, fin: int, opcode: int, payload: bytes, got: Received) -> bool:
        """One whole frame; True when it ends the websocket."""
        if opcode == OP_PING:
            got.replies.append(_frame(OP_PONG, payload))
        elif opcode == OP_PONG:
            got.pong = True
        elif opcode == OP_CLOSE:
            code = _close_code(payload)
            got.closing = True
            if not self._close_sent:  # the browser began the close: answer it
                got.close_reply = close_frame(_reply_code(code), "")
            return True
        elif fin and self._text is None:  # a whole message in one frame: the usual case
            got.messages.append(_text(payload) if opcode == OP_TEXT else payload)
        else:
            if self._text is None:
                self._text = opcode == OP_TEXT
            self._parts += payload
            if fin:
                data = bytes(self._parts)
                got.messages.append(_text(data) if self._text else data)
                self._parts = bytearray()
                self._text = None
        return False


class _Refused(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def _unmask(payload: bytes | bytearray, mask: bytes | bytearray) -> bytes:
    size = len(payload)
    if not size:
        return b""
    key = (mask * (size // 4 + 1))[:size]
    return (int.from_bytes(payload) ^ int.from_bytes(key)).to_bytes(size)


def _text(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise _Refused(CLOSE_INVALID_DATA, "text is not valid UTF-8") from None


VALID_CLOSE_CODES: Final = frozenset({1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011,
                                      1012, 1013, 1014})


def _close_code(payload: bytes) -> int:
    """The code of a browser's close frame (1005: none given); raises _Refused if invalid."""
    if not payload:
        return 1005
    if len(payload) == 1:
        raise _Refused(CLOSE_PROTOCOL_ERROR, "a close frame's code has two bytes")
    code = int.from_bytes(payload[:2])
    if code not in VALID_CLOSE_CODES and not 3000 <= code < 5000:
        raise _Refused(CLOSE_PROTOCOL_ERROR, f"close code {code} may not be sent")
    _text(payload[2:])  # the reason must be UTF-8
    return code


class BrowserSocket:
    """Reads one browser's websocket after simple-websocket's handshake; one reader only."""

    def __init__(self, server: Any, *, max_message_bytes: int, recv_bytes: int) -> None:
        """`server` is the simple_websocket.Server flask-sock hands the route."""
        self.sock: socket.socket = server.sock
        self._server = server
        # From here on the gateway reads and writes the socket: simple-websocket's wsproto
        # connection and event, used for the handshake only, would just take memory.
        server.ws = server.event = None
        self._frames = FrameDecoder(max_message_bytes)
        self._recv_bytes = recv_bytes
        self._reader = SocketReader(self.sock, recv_bytes)

    @property
    def filled(self) -> bool:
        """The last read filled its buffer: more is likely waiting."""
        return self._reader.filled

    def detach(self) -> None:
        """Tell flask-sock the websocket is over, so that it sends no close frame of its own:
        the relay has sent it, or the connection is gone."""
        self._server.connected = False

    def note_close_sent(self) -> None:
        """The relay has queued its close frame: the browser's next close only answers it."""
        self._frames.note_close_sent()

    def read(self) -> Received:
        """Block for the next bytes from the browser and decode them.

        Raises OSError when the connection is broken; returns `closing` at its end.
        """
        data = self._reader.recv()
        if not data:
            return Received(closing=True)
        return self._frames.feed(data)

    def drain(self, timeout: float) -> None:
        """Read and discard until the browser closes the connection, for at most `timeout`
        seconds in all (however it trickles); raises OSError when it is broken or the time
        is up (TimeoutError)."""
        # A poll, not a socket timeout: the relay's writer may be sending the close frame on
        # this socket, and a timeout would make its sends wait (threads) too.
        deadline = time.monotonic() + timeout
        poller = select.poll()  # gevent's under gevent: waits in the event loop
        poller.register(self.sock.fileno(), select.POLLIN)
        while (left := deadline - time.monotonic()) > 0:
            if poller.poll(left * 1000) and not self.sock.recv(self._recv_bytes):
                return
        raise TimeoutError("the browser did not close in time")


def _reply_code(code: int) -> int:
    # The close reply echoes the browser's code (RFC 6455, 5.5.1); 1005 ("no status") may not
    # be sent on the wire and becomes a normal close.
    return 1000 if code == 1005 else code
