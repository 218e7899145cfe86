"""Browser frames <-> core lines, without I/O: what the gateway forwards and what it refuses.

Each websocket text frame from the browser must be exactly one protocol-v1 JSON object; it
becomes exactly one line to the core. The checks use the core's own codec
(tcp_server.protocol), so the gateway refuses with the same error codes the core would use.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from tcp_server.protocol import (
    MAX_LINE_BYTES,
    WRONG_GATEWAY_SECRET,
    Error,
    ErrorCode,
    ProtocolError,
    decode_object,
    encode,
    event_to_wire,
)

# A frame becomes a line plus "\n", and a line may have MAX_LINE_BYTES with its terminator.
MAX_FRAME_BYTES: Final = MAX_LINE_BYTES - 1

# Gateway-only error code (docs/protocol.md, "The web gateway"): the core cannot be reached,
# closed the connection, or the gateway is shutting down or full.
UNAVAILABLE: Final = "unavailable"


@dataclass(frozen=True, slots=True)
class Upstream:
    """A browser frame accepted for the core: its line (with terminator) and its "type"."""

    line: bytes
    type: object


def frame_to_line(frame: str | bytes) -> Upstream:
    """Check one frame from the browser; raise ProtocolError with the reply it deserves."""
    if not isinstance(frame, str):
        raise ProtocolError(
            ErrorCode.BAD_REQUEST, "binary frames are not accepted: send one JSON object as text"
        )
    try:
        data = frame.encode("utf-8")
    except UnicodeEncodeError:  # a websocket text frame is UTF-8; this is only belt and braces
        raise ProtocolError(ErrorCode.BAD_REQUEST, "the frame is not valid UTF-8") from None
    if len(data) > MAX_FRAME_BYTES:
        raise ProtocolError(
            ErrorCode.LINE_TOO_LONG,
            f"the frame is {len(data)} bytes long; the most is {MAX_FRAME_BYTES}",
        )
    obj = decode_object(data)  # bad_request unless it is exactly one JSON object
    kind = obj.get("type")
    if kind == "proxy":
        raise ProtocolError(ErrorCode.FORBIDDEN, "proxy requests are for the gateway only")
    # decode_object parses strictly: a raw newline cannot be inside a string, so any is
    # whitespace between tokens. A space keeps the meaning and the length, and the frame
    # stays one line (JSON.stringify(obj, null, 2) would otherwise become several requests).
    return Upstream(line=data.replace(b"\n", b" ") + b"\n", type=kind)


# How every error line of the core begins (tcp_server.protocol.encode: compact JSON, "type"
# first). Inside a JSON string a quote is escaped, so this can only start an error object.
CORE_ERROR_START: Final = b'{"type":"error","code":"'
# How the core's welcome begins (the same reasoning): the browser has signed in.
CORE_WELCOME_START: Final = b'{"type":"welcome",'
# How the core's refusal of the gateway's secret begins (its `id`, if any, and the end follow).
CORE_REFUSED_SECRET: Final = encode(
    event_to_wire(Error(ErrorCode.FORBIDDEN, WRONG_GATEWAY_SECRET)))[:-len(b"}\n")]
# The core's errors that the browser did not cause: its store or Redis failed.
NOT_THE_BROWSERS_FAULT: Final = (b'unavailable"',)


def browser_errors(lines: bytes) -> int:
    """How many of the core's whole `lines` are errors the browser caused (its request was
    bad, or too fast): what counts against its websocket's error budget."""
    count = 0
    start = lines.find(CORE_ERROR_START)
    while start >= 0:
        start += len(CORE_ERROR_START)
        if not lines.startswith(NOT_THE_BROWSERS_FAULT, start):
            count += 1
        start = lines.find(CORE_ERROR_START, start)
    return count


def error_frame(code: str, message: str) -> str:
    """A protocol-v1 error object as a text frame, for the gateway's own refusals."""
    return encode(event_to_wire(Error(code=code, message=message))).decode("utf-8").rstrip("\n")
