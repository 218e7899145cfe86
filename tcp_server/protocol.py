"""Protocol v1 of the chatroom: JSON objects, one per line, UTF-8.

Sans-I/O: this module turns bytes into typed requests and events and back, and knows every rule
of the wire format (limits, names, texts, error codes). It imports nothing that touches a socket,
a thread or a clock, so the server, the terminal client and the web gateway share it unchanged.
docs/protocol.md is the human-readable form of this module; a change to one is a change to both.
"""

from __future__ import annotations

import json
import json.scanner
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final, Generic, TypeVar

from tcp_server.addresses import canonical_ip

PROTOCOL_VERSION: Final = 1

# One line, terminator included. 64 KiB holds a 4,000-character text even if every character
# were escaped as \uXXXX\uXXXX (48,000 bytes), with room for the envelope.
MAX_LINE_BYTES: Final = 65_536
MAX_NAME_CHARS: Final = 32
MAX_TEXT_CHARS: Final = 4_000
MAX_ID_CHARS: Final = 64
EVERYONE: Final = "*"
MAX_HISTORY_LIMIT: Final = 200
DEFAULT_HISTORY_LIMIT: Final = 50
MAX_SEARCH_LIMIT: Final = 100
DEFAULT_SEARCH_LIMIT: Final = 20
MAX_QUERY_CHARS: Final = 200
# Each different word of a search is one more full-text lookup (4-8 ms each for common words
# at 200,000 messages): a search has at most this many (docs/protocol.md, "Limits").
MAX_QUERY_WORDS: Final = 8
MAX_TOKEN_CHARS: Final = 128
MAX_SEQ: Final = 2**63 - 1  # SQLite's largest integer
# Arrays and objects nested in one line. No request needs more than 2; json's C decoder
# recurses once per level on the thread's C stack (a reader's is small, see server.py), and
# Python 3.13 allows it ~10,000 levels, more than a small stack holds.
MAX_JSON_DEPTH: Final = 32
_JSON_STRING_RE: Final = re.compile(r'"(?:[^"\\]|\\.)*"')
_JSON_BRACKETS_RE: Final = re.compile(r"[\[\]{}]")
ONLINE: Final = "online"
AWAY: Final = "away"

_NAME_RE: Final = re.compile(rf"[A-Za-z0-9_-]{{1,{MAX_NAME_CHARS}}}")

# The message of the `forbidden` error that refuses a proxy request: the gateway recognises
# it (a CHAT_GATEWAY_SECRET that is not the core's refuses every browser).
WRONG_GATEWAY_SECRET: Final = "wrong gateway secret"


class ErrorCode(StrEnum):
    """The wire strings of the "code" field of an error reply."""

    BAD_REQUEST = "bad_request"
    UNKNOWN_TYPE = "unknown_type"
    LINE_TOO_LONG = "line_too_long"
    NOT_REGISTERED = "not_registered"
    ALREADY_REGISTERED = "already_registered"
    BAD_NAME = "bad_name"
    NAME_TAKEN = "name_taken"
    NO_SUCH_USER = "no_such_user"
    BAD_TEXT = "bad_text"
    SERVER_FULL = "server_full"
    FORBIDDEN = "forbidden"
    RATE_LIMITED = "rate_limited"
    SESSION_EXPIRED = "session_expired"
    TOO_MANY_FROM_ADDRESS = "too_many_from_address"
    UNAVAILABLE = "unavailable"

    @property
    def closes_connection(self) -> bool:
        """Whether the server closes the connection right after sending this error."""
        return self in (ErrorCode.SERVER_FULL, ErrorCode.FORBIDDEN)


RequestId = str | int | None


class ProtocolError(Exception):
    """A request or line that breaks the protocol; carries the error reply it deserves."""

    def __init__(self, code: ErrorCode, message: str, request_id: RequestId = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.request_id = request_id

    def to_event(self) -> Error:
        return Error(code=self.code, message=self.message, id=self.request_id)


# --- requests (client -> server) -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hello:
    """Register under a name; with `resume` (a session token), take that session back.

    `after` is the highest seq the client has seen; None (the plain-text dialect only) means
    "what the server last handed to the session's old connection". `recent` (never on the
    wire) asks for that many recent messages to everyone after the welcome.
    """

    name: str
    id: RequestId = None
    resume: str | None = None
    after: int | None = None
    recent: int = 0

    def __repr__(self) -> str:  # keep the token out of logs and tracebacks
        token = "***" if self.resume is not None else None
        return f"Hello(name={self.name!r}, id={self.id!r}, resume={token}, after={self.after})"


@dataclass(frozen=True, slots=True)
class ListUsers:
    id: RequestId = None


# Not frozen, unlike the other requests and events (treat it as immutable all the same): one
# is built for every message, and a frozen dataclass is built four times slower (0.7 against
# 0.15 us; bench/README.md, "The cost per message").
@dataclass(slots=True)
class Send:
    to: str
    text: str
    id: RequestId = None


@dataclass(frozen=True, slots=True)
class Exit:
    id: RequestId = None


@dataclass(frozen=True, slots=True)
class Ping:
    id: RequestId = None


@dataclass(frozen=True, slots=True)
class Proxy:
    """Sent only by the trusted web gateway: the browser's own address, vouched for by a secret."""

    secret: str
    ip: str
    port: int
    id: RequestId = None

    def __repr__(self) -> str:  # keep the secret out of logs and tracebacks
        return f"Proxy(secret='***', ip={self.ip!r}, port={self.port!r}, id={self.id!r})"


@dataclass(frozen=True, slots=True)
class History:
    """The stored messages of one conversation ("*" or a name) with seq < before."""

    with_: str  # "with" on the wire; `with` is a Python keyword
    before: int | None = None
    limit: int = DEFAULT_HISTORY_LIMIT
    id: RequestId = None


@dataclass(frozen=True, slots=True)
class Search:
    q: str
    limit: int = DEFAULT_SEARCH_LIMIT
    id: RequestId = None


@dataclass(frozen=True, slots=True)
class MarkRead:
    """Move the read marker of a conversation forward ("read" on the wire, both ways)."""

    with_: str
    seq: int
    id: RequestId = None


@dataclass(frozen=True, slots=True)
class ListConversations:
    id: RequestId = None


Request = (
    Hello | ListUsers | Send | Exit | Ping | Proxy | History | Search | MarkRead
    | ListConversations
)

# What a request counts as against the rate limit (--rate-limit requests a second). Reads that
# cost the server far more than a message count as more: measured on the 2-core test machine
# (bench/README.md), a search 4-8 ms, the conversations of a session with 10,000 direct
# messages 11 ms, a history page of 200 messages 1.4 ms, against ~0.03 ms for a send; counted
# as one each, one connection could keep a fifth of a CPU busy within its limit. A browser
# (re)joining asks for its list, its conversations and up to 21 history pages of 50 at once:
# 33 of the default burst of 60.
SEARCH_COST_PER_WORD: Final = 5  # a search of one or two words counts as 10, of eight as 40
CONVERSATIONS_COST: Final = 10
HISTORY_MESSAGES_PER_COST: Final = 100


def request_cost(request: Request) -> int:
    """How many requests `request` counts as against the rate limit (docs/protocol.md)."""
    if isinstance(request, Search):
        return SEARCH_COST_PER_WORD * max(2, len(query_words(request.q)))
    if isinstance(request, ListConversations):
        return CONVERSATIONS_COST
    if isinstance(request, History):
        return 1 + (request.limit - 1) // HISTORY_MESSAGES_PER_COST
    return 1

# --- replies and events (server -> client) -------------------------------------------------


@dataclass(frozen=True, slots=True)
class UserInfo:
    name: str
    ip: str
    port: int
    via: str  # "tcp" or "web"
    status: str = ONLINE  # or AWAY


@dataclass(frozen=True, slots=True)
class Welcome:
    name: str
    ip: str
    port: int
    id: RequestId = None
    session: str = ""
    seq: int = 0
    resumed: bool = False
    truncated: bool = False

    def __repr__(self) -> str:  # keep the token out of logs and tracebacks
        return (f"Welcome(name={self.name!r}, ip={self.ip!r}, port={self.port}, id={self.id!r}, "
                f"session='***', seq={self.seq}, resumed={self.resumed})")


@dataclass(frozen=True, slots=True)
class Users:
    users: tuple[UserInfo, ...]
    id: RequestId = None


# Not frozen, unlike the other requests and events (treat it as immutable all the same): one
# is built for every message, and a frozen dataclass is built four times slower (0.7 against
# 0.15 us; bench/README.md, "The cost per message").
@dataclass(slots=True)
class Sent:
    to: str
    ts: float
    id: RequestId = None
    seq: int = 0


@dataclass(frozen=True, slots=True)
class Pong:
    id: RequestId = None


@dataclass(frozen=True, slots=True)
class Bye:
    reason: str | None = None
    id: RequestId = None


@dataclass(frozen=True, slots=True)
class Error:
    code: str
    message: str
    id: RequestId = None


# Not frozen, unlike the other requests and events (treat it as immutable all the same): one
# is built for every message, and a frozen dataclass is built four times slower (0.7 against
# 0.15 us; bench/README.md, "The cost per message").
@dataclass(slots=True)
class Message:
    sender: str  # "from" on the wire; `from` is a Python keyword
    to: str
    text: str
    ts: float
    seq: int = 0


@dataclass(frozen=True, slots=True)
class Joined:
    """Another user registered. `user` is their entry as `users` lists it (None only from a
    core older than the entry), so that a client keeps its list from events alone."""

    name: str
    user: UserInfo | None = None


@dataclass(frozen=True, slots=True)
class Left:
    name: str


@dataclass(frozen=True, slots=True)
class Away:
    name: str


@dataclass(frozen=True, slots=True)
class Back:
    """An away user's session was taken back, or moved to another connection: `user` is the
    entry with its new address (None only from a core older than the entry)."""

    name: str
    user: UserInfo | None = None


@dataclass(frozen=True, slots=True)
class HistoryPage:
    """The reply to history: oldest first."""

    with_: str
    messages: tuple[Message, ...]
    more: bool
    id: RequestId = None


@dataclass(frozen=True, slots=True)
class Results:
    """The reply to search: newest first."""

    q: str
    messages: tuple[Message, ...]
    id: RequestId = None


@dataclass(frozen=True, slots=True)
class ReadMarker:
    """The reply to read: the conversation's marker as it now is."""

    with_: str
    seq: int
    id: RequestId = None


@dataclass(frozen=True, slots=True)
class Conversation:
    with_: str
    last: int
    read: int
    unread: int


@dataclass(frozen=True, slots=True)
class Conversations:
    conversations: tuple[Conversation, ...]
    id: RequestId = None


Event = (
    Welcome | Users | Sent | Pong | Bye | Error | Message | Joined | Left | Away | Back
    | HistoryPage | Results | ReadMarker | Conversations
)

# --- validation ------------------------------------------------------------------------------


def format_address(ip: str, port: int) -> str:
    """ip:port as people write it: an IPv6 address in brackets ([::1]:9000)."""
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def is_valid_name(name: str) -> bool:
    return _NAME_RE.fullmatch(name) is not None


def name_key(name: str) -> str:
    """The form under which names collide: Alice and alice are the same user."""
    return name.casefold()


def check_name(name: str, request_id: RequestId = None) -> str:
    if is_valid_name(name):
        return name
    if not name:
        problem = "is empty"
    elif len(name) > MAX_NAME_CHARS:
        problem = f"is {len(name)} characters long; the most is {MAX_NAME_CHARS}"
    else:
        problem = "may only contain the letters A-Z and a-z, digits, '_' and '-'"
    raise ProtocolError(ErrorCode.BAD_NAME, f"the name {problem}", request_id)


def check_text(text: str, request_id: RequestId = None) -> str:
    if not text:
        raise ProtocolError(ErrorCode.BAD_TEXT, "the text is empty", request_id)
    if len(text) > MAX_TEXT_CHARS:
        raise ProtocolError(
            ErrorCode.BAD_TEXT,
            f"the text is {len(text)} characters long; the most is {MAX_TEXT_CHARS}",
            request_id,
        )
    if not _is_encodable(text):
        raise ProtocolError(
            ErrorCode.BAD_TEXT, "the text contains an unpaired surrogate escape", request_id
        )
    return text


def _is_encodable(text: str) -> bool:
    # JSON's \ud800 escapes can smuggle lone surrogates into a str that no UTF-8 can carry.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# --- framing ---------------------------------------------------------------------------------


class LineBuffer:
    """Splits a byte stream into lines of at most `max_line_bytes` (terminator included).

    feed() returns each complete line without its "\\n" (and without a "\\r" before it), or,
    for a line over the limit, a ProtocolError(line_too_long) once that line has ended: its
    bytes are dropped as they come, never held, so the error answers the whole line. It
    remembers how far it has searched, so a line that arrives a byte at a time costs linear,
    not quadratic, time.
    """

    def __init__(self, max_line_bytes: int = MAX_LINE_BYTES) -> None:
        if max_line_bytes < 2:
            raise ValueError("max_line_bytes must be at least 2")
        self._max = max_line_bytes
        self._buf = bytearray()
        self._searched = 0  # bytes of _buf known to hold no newline
        self._discarding = False  # inside a line already reported as too long

    @property
    def pending(self) -> bytes:
        """Bytes of an unfinished line (empty while discarding an over-long one)."""
        return bytes(self._buf)

    @property
    def in_line(self) -> bool:
        """Whether bytes of an unfinished line (kept or being discarded) have arrived."""
        return bool(self._buf) or self._discarding

    def end_line(self) -> bytes | ProtocolError | None:
        """End the unfinished line here, for dialects that also end lines by a pause.

        Returns its bytes, line_too_long if it was over the limit, or None if there was none.
        """
        line: bytes | ProtocolError | None = bytes(self._buf) if self._buf else None
        if self._discarding:
            line = self._too_long()
        self._buf.clear()
        self._searched = 0
        self._discarding = False
        return line

    def feed(self, data: bytes) -> list[bytes | ProtocolError]:
        buf = self._buf
        buf += data
        out: list[bytes | ProtocolError] = []
        start = 0
        search_from = self._searched
        while (newline := buf.find(b"\n", search_from)) >= 0:
            if self._discarding:
                self._discarding = False
                out.append(self._too_long())
            elif newline + 1 - start > self._max:
                out.append(self._too_long())
            else:
                end = newline - 1 if newline > start and buf[newline - 1] == 0x0D else newline
                out.append(bytes(buf[start:end]))
            start = search_from = newline + 1
        del buf[:start]
        if self._discarding:
            buf.clear()
        elif len(buf) >= self._max:  # even its newline would not fit any more
            self._discarding = True
            buf.clear()
        self._searched = len(buf)
        return out

    def _too_long(self) -> ProtocolError:
        return ProtocolError(
            ErrorCode.LINE_TOO_LONG,
            f"the line is longer than {self._max} bytes; it was discarded",
        )


# --- parsing ---------------------------------------------------------------------------------


def _too_deep(text: str) -> bool:
    """Whether arrays/objects nest deeper than MAX_JSON_DEPTH (brackets in strings aside).
    Only run on a line with many brackets: a cheap count comes first."""
    depth = 0
    for bracket in _JSON_BRACKETS_RE.findall(_JSON_STRING_RE.sub("", text)):
        depth += 1 if bracket in "[{" else -1
        if depth > MAX_JSON_DEPTH:
            return True
    return False


# json.loads() without its two regular-expression whitespace matches around the C scanner,
# which cost twice the scan of a short request (a line per message: bench/README.md).
_json_scan: Final[Callable[[str, int], tuple[Any, int]]] = json.scanner.make_scanner(
    json.JSONDecoder()  # type: ignore[arg-type]  # typeshed has it take a make_scanner
)
_JSON_WHITESPACE: Final = " \t\n\r"


def _json_value(text: str) -> Any:
    """json.loads(text): one JSON value, with JSON's whitespace around it only."""
    start = len(text) - len(text.lstrip(_JSON_WHITESPACE))
    try:
        value, end = _json_scan(text, start)
    except StopIteration:
        raise ValueError("no JSON value") from None
    if end != len(text) and text[end:].strip(_JSON_WHITESPACE):
        raise ValueError("extra data after the JSON value")
    return value


def decode_object(line: bytes) -> dict[str, Any]:
    """Decode one line into a JSON object, or raise ProtocolError(bad_request)."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError(ErrorCode.BAD_REQUEST, "the line is not valid UTF-8") from None
    if text.count("[") + text.count("{") > MAX_JSON_DEPTH and _too_deep(text):
        raise ProtocolError(
            ErrorCode.BAD_REQUEST, f"JSON nested deeper than {MAX_JSON_DEPTH} levels"
        )
    try:
        obj = _json_value(text)
    except (ValueError, RecursionError):  # RecursionError: "[[[[..." nested too deep
        raise ProtocolError(ErrorCode.BAD_REQUEST, "the line is not valid JSON") from None
    if not isinstance(obj, dict):
        raise ProtocolError(ErrorCode.BAD_REQUEST, "a line must hold one JSON object")
    return obj


def _request_id(obj: dict[str, Any]) -> RequestId:
    request_id = obj.get("id")
    if request_id is None:
        return None
    if isinstance(request_id, bool) or not isinstance(request_id, str | int):
        raise ProtocolError(ErrorCode.BAD_REQUEST, 'field "id" must be a string or an integer')
    if isinstance(request_id, str) and (
        len(request_id) > MAX_ID_CHARS or not _is_encodable(request_id)
    ):
        raise ProtocolError(
            ErrorCode.BAD_REQUEST, f'field "id" must be at most {MAX_ID_CHARS} characters'
        )
    return request_id


def _str_field(obj: dict[str, Any], field: str, request_id: RequestId) -> str:
    value = obj.get(field)
    if not isinstance(value, str):
        raise ProtocolError(
            ErrorCode.BAD_REQUEST, f'field "{field}" must be a string', request_id
        )
    return value


def _int_field(obj: dict[str, Any], field: str, request_id: RequestId) -> int:
    value = obj.get(field)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ProtocolError(
            ErrorCode.BAD_REQUEST, f'field "{field}" must be an integer', request_id
        )
    return value


def _optional(
    obj: dict[str, Any], field: str, rid: RequestId,
    parse: Callable[[dict[str, Any], str, RequestId], Any],
) -> Any:
    return None if obj.get(field) is None else parse(obj, field, rid)


def _bounded_int(
    obj: dict[str, Any], field: str, rid: RequestId, low: int, high: int, default: int | None
) -> int | None:
    if obj.get(field) is None:
        return default
    value = _int_field(obj, field, rid)
    if not low <= value <= high:
        raise ProtocolError(
            ErrorCode.BAD_REQUEST, f'field "{field}" must be {low}-{high}', rid
        )
    return value


def _seq_field(obj: dict[str, Any], field: str, rid: RequestId) -> int:
    value = _bounded_int(obj, field, rid, 0, MAX_SEQ, None)
    if value is None:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f'field "{field}" must be an integer', rid)
    return value


def _conversation_field(obj: dict[str, Any], rid: RequestId) -> str:
    """"with": "*" (everyone) or a user's name."""
    value = _str_field(obj, "with", rid)
    if value != EVERYONE and not is_valid_name(value):
        raise ProtocolError(
            ErrorCode.BAD_REQUEST, 'field "with" must be "*" or a user\'s name', rid
        )
    return value


def _parse_hello(obj: dict[str, Any], rid: RequestId) -> Hello:
    name = check_name(_str_field(obj, "name", rid), rid)
    token = _optional(obj, "resume", rid, _str_field)
    after = _optional(obj, "after", rid, _seq_field)
    if (token is None) != (after is None):
        raise ProtocolError(
            ErrorCode.BAD_REQUEST, 'fields "resume" and "after" come together', rid
        )
    if token is not None and (len(token) > MAX_TOKEN_CHARS or not _is_encodable(token)):
        raise ProtocolError(ErrorCode.SESSION_EXPIRED, "no such session", rid)
    return Hello(name=name, id=rid, resume=token, after=after)


def _parse_history(obj: dict[str, Any], rid: RequestId) -> History:
    limit = _bounded_int(obj, "limit", rid, 1, MAX_HISTORY_LIMIT, DEFAULT_HISTORY_LIMIT)
    assert limit is not None
    before = _optional(obj, "before", rid, _seq_field)
    return History(with_=_conversation_field(obj, rid), before=before, limit=limit, id=rid)


# Letters and digits, split where the search index (FTS5's unicode61 tokenizer, which keeps
# to Unicode 6.1 for good) splits them: at `_`, and at 21 characters that were marks in 6.1
# and are letters to Python (New Tai Lue vowel signs, two Vedic signs). Counted as part of a
# word, `a_b_a_b_...` was one word of the query (cost 10) and a phrase of 100 words for the
# index: 0.7 s of the core's CPU a search; `a\u1cf2` * 100 took 4.2 s on 100,000 messages.
# tests/unit/test_search_words.py checks every character against SQLite's tokenizer.
INDEX_SEPARATING_LETTERS: Final = "\u19b0-\u19c0\u19c8\u19c9\u1cf2\u1cf3"
_WORD_RE: Final = re.compile(rf"[^\W_{INDEX_SEPARATING_LETTERS}]+")


def search_words(text: str) -> list[str]:
    """The words of a text or a search text (punctuation, quotes, `_` and `*` separate
    words)."""
    return _WORD_RE.findall(text)


def query_words(q: str) -> list[str]:
    """The different words of a search text (any case), in their order: what is looked up."""
    seen: dict[str, str] = {}
    for word in search_words(q):
        seen.setdefault(word.casefold(), word)
    return list(seen.values())


def check_query(q: str, request_id: RequestId = None) -> str:
    if not q.strip():
        raise ProtocolError(ErrorCode.BAD_REQUEST, "the search text is empty", request_id)
    if len(q) > MAX_QUERY_CHARS or not _is_encodable(q):
        raise ProtocolError(
            ErrorCode.BAD_REQUEST,
            f"the search text must be at most {MAX_QUERY_CHARS} characters",
            request_id,
        )
    if len(query_words(q)) > MAX_QUERY_WORDS:
        raise ProtocolError(
            ErrorCode.BAD_REQUEST,
            f"a search has at most {MAX_QUERY_WORDS} different words", request_id,
        )
    return q


def _parse_search(obj: dict[str, Any], rid: RequestId) -> Search:
    limit = _bounded_int(obj, "limit", rid, 1, MAX_SEARCH_LIMIT, DEFAULT_SEARCH_LIMIT)
    assert limit is not None
    return Search(q=check_query(_str_field(obj, "q", rid), rid), limit=limit, id=rid)


def _parse_read(obj: dict[str, Any], rid: RequestId) -> MarkRead:
    return MarkRead(with_=_conversation_field(obj, rid), seq=_seq_field(obj, "seq", rid), id=rid)


def _parse_send(obj: dict[str, Any], rid: RequestId) -> Send:
    to = _str_field(obj, "to", rid)
    return Send(to=to, text=check_text(_str_field(obj, "text", rid), rid), id=rid)


def _parse_proxy(obj: dict[str, Any], rid: RequestId) -> Proxy:
    secret = _str_field(obj, "secret", rid)
    ip = _str_field(obj, "ip", rid)
    port = _int_field(obj, "port", rid)
    try:
        ip = canonical_ip(ip)
    except ValueError:
        raise ProtocolError(
            ErrorCode.BAD_REQUEST, 'field "ip" must be an IP address', rid
        ) from None
    if not 0 <= port <= 65_535:
        raise ProtocolError(ErrorCode.BAD_REQUEST, 'field "port" must be 0-65535', rid)
    return Proxy(secret=secret, ip=ip, port=port, id=rid)


_REQUEST_PARSERS: Final[dict[str, Callable[[dict[str, Any], RequestId], Request]]] = {
    "hello": _parse_hello,
    "list": lambda obj, rid: ListUsers(id=rid),
    "send": _parse_send,
    "exit": lambda obj, rid: Exit(id=rid),
    "ping": lambda obj, rid: Ping(id=rid),
    "proxy": _parse_proxy,
    "history": _parse_history,
    "search": _parse_search,
    "read": _parse_read,
    "conversations": lambda obj, rid: ListConversations(id=rid),
}


def parse_request(line: bytes) -> Request:
    """Parse one line (without terminator) into a request, or raise ProtocolError."""
    obj = decode_object(line)
    request_id = _request_id(obj)
    kind = obj.get("type")
    if not isinstance(kind, str):
        raise ProtocolError(ErrorCode.BAD_REQUEST, 'field "type" must be a string', request_id)
    parser = _REQUEST_PARSERS.get(kind)
    if parser is None:
        raise ProtocolError(
            ErrorCode.UNKNOWN_TYPE, f"unknown request type {kind[:40]!r}", request_id
        )
    return parser(obj, request_id)


def _with_id(obj: dict[str, Any], request_id: RequestId) -> dict[str, Any]:
    if request_id is not None:
        obj["id"] = request_id
    return obj


def request_to_wire(request: Request) -> dict[str, Any]:
    match request:
        case Hello(name=name, resume=token, after=after):
            obj: dict[str, Any] = {"type": "hello", "name": name}
            if token is not None:
                obj["resume"] = token
            if after is not None:
                obj["after"] = after
        case ListUsers():
            obj = {"type": "list"}
        case Send(to=to, text=text):
            obj = {"type": "send", "to": to, "text": text}
        case Exit():
            obj = {"type": "exit"}
        case Ping():
            obj = {"type": "ping"}
        case Proxy(secret=secret, ip=ip, port=port):
            obj = {"type": "proxy", "secret": secret, "ip": ip, "port": port}
        case History(with_=with_, before=before, limit=limit):
            obj = {"type": "history", "with": with_, "limit": limit}
            if before is not None:
                obj["before"] = before
        case Search(q=q, limit=limit):
            obj = {"type": "search", "q": q, "limit": limit}
        case MarkRead(with_=with_, seq=seq):
            obj = {"type": "read", "with": with_, "seq": seq}
        case ListConversations():
            obj = {"type": "conversations"}
    return _with_id(obj, request.id)


def message_to_wire(message: Message) -> dict[str, Any]:
    return {
        "type": "message", "from": message.sender, "to": message.to, "text": message.text,
        "ts": message.ts, "seq": message.seq,
    }


def user_to_wire(user: UserInfo) -> dict[str, Any]:
    """A user's entry, the same object in `users` and in `joined` and `back`."""
    return {"name": user.name, "ip": user.ip, "port": user.port, "via": user.via,
            "status": user.status}


def _with_user(obj: dict[str, Any], user: UserInfo | None) -> dict[str, Any]:
    if user is not None:
        obj["user"] = user_to_wire(user)
    return obj


def event_to_wire(event: Event) -> dict[str, Any]:
    match event:
        case Message():
            return message_to_wire(event)
        case Joined(name=name, user=user):
            return _with_user({"type": "joined", "name": name}, user)
        case Left(name=name):
            return {"type": "left", "name": name}
        case Away(name=name):
            return {"type": "away", "name": name}
        case Back(name=name, user=user):
            return _with_user({"type": "back", "name": name}, user)
        case Welcome(name=name, ip=ip, port=port, id=rid):
            obj: dict[str, Any] = {
                "type": "welcome", "name": name, "ip": ip, "port": port,
                "session": event.session, "seq": event.seq, "resumed": event.resumed,
            }
            if event.truncated:
                obj["truncated"] = True
            return _with_id(obj, rid)
        case Users(users=users, id=rid):
            return _with_id({"type": "users", "users": [user_to_wire(u) for u in users]}, rid)
        case Sent(to=to, ts=ts, id=rid, seq=seq):
            return _with_id({"type": "sent", "to": to, "ts": ts, "seq": seq}, rid)
        case HistoryPage(with_=with_, messages=messages, more=more, id=rid):
            return _with_id({
                "type": "history", "with": with_,
                "messages": [message_to_wire(m) for m in messages], "more": more,
            }, rid)
        case Results(q=q, messages=messages, id=rid):
            return _with_id({
                "type": "results", "q": q, "messages": [message_to_wire(m) for m in messages],
            }, rid)
        case ReadMarker(with_=with_, seq=seq, id=rid):
            return _with_id({"type": "read", "with": with_, "seq": seq}, rid)
        case Conversations(conversations=conversations, id=rid):
            listed = [
                {"with": c.with_, "last": c.last, "read": c.read, "unread": c.unread}
                for c in conversations
            ]
            return _with_id({"type": "conversations", "conversations": listed}, rid)
        case Pong(id=rid):
            return _with_id({"type": "pong"}, rid)
        case Bye(reason=reason, id=rid):
            bye: dict[str, Any] = {"type": "bye"}
            if reason is not None:
                bye["reason"] = reason
            return _with_id(bye, rid)
        case Error(code=code, message=message, id=rid):
            return _with_id({"type": "error", "code": code, "message": message}, rid)


def encode(obj: dict[str, Any]) -> bytes:
    """One wire line: compact JSON, UTF-8 (not \\u-escaped), terminated by a newline."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"


def encode_event(event: Event) -> bytes:
    # The two events of every message (a message and its sender's "sent") are formatted
    # directly: byte for byte what encode() makes of event_to_wire(), six times faster, and
    # they are most of what a busy server encodes (bench/README.md).
    if isinstance(event, Message):
        return _MESSAGE_LINE.format(
            _json_str(event.sender), _json_str(event.to), _json_str(event.text),
            _json_number(event.ts), int(event.seq),
        ).encode("utf-8")
    if isinstance(event, Sent) and event.id is None:
        return _SENT_LINE.format(
            _json_str(event.to), _json_number(event.ts), int(event.seq)
        ).encode("utf-8")
    if isinstance(event, Users):
        # Byte for byte encode(event_to_wire(event)); the list part is made once per list.
        end = b"}\n" if event.id is None else b',"id":' + _json(event.id).encode("utf-8") + b"}\n"
        return _users_head(event.users) + end
    return encode(event_to_wire(event))


_K = TypeVar("_K")
_V = TypeVar("_V")


class LastMade(Generic[_K, _V]):
    """The value made from the last key, made again only for another key (by identity).

    For the users list: a room hands out the same tuple until someone comes or goes
    (Room.users()), and formatting 1,000 entries costs 1.3 ms, so that a client repeating
    `list` within its rate limit cost the server more than a whole CPU from one address.
    Holding the key keeps its identity from being reused by another object."""

    __slots__ = ("_last", "_make")

    def __init__(self, make: Callable[[_K], _V]) -> None:
        self._make = make
        self._last: tuple[_K, _V] | None = None  # replaced whole: no lock needed

    def __call__(self, key: _K) -> _V:
        last = self._last
        if last is not None and last[0] is key:
            return last[1]
        value = self._make(key)
        self._last = (key, value)
        return value


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


_users_head: LastMade[tuple[UserInfo, ...], bytes] = LastMade(
    lambda users: b'{"type":"users","users":'
    + _json([user_to_wire(user) for user in users]).encode("utf-8")
)


# json's own (C-accelerated) string encoder for ensure_ascii=False, and its number format.
_json_str: Callable[[str], str] = json.encoder.encode_basestring
_MESSAGE_LINE: Final = '{{"type":"message","from":{},"to":{},"text":{},"ts":{},"seq":{}}}\n'
_SENT_LINE: Final = '{{"type":"sent","to":{},"ts":{},"seq":{}}}\n'


def _json_number(value: float) -> str:
    if type(value) is float and math.isfinite(value):
        return float.__repr__(value)
    return json.dumps(value)


def encode_request(request: Request) -> bytes:
    return encode(request_to_wire(request))


# --- parsing events (for clients) ------------------------------------------------------------


def _user_info(obj: Any) -> UserInfo:
    if not isinstance(obj, dict):
        raise ProtocolError(ErrorCode.BAD_REQUEST, "a user entry must be an object")
    rid = None
    status = obj.get("status", ONLINE)
    return UserInfo(
        name=_str_field(obj, "name", rid),
        ip=_str_field(obj, "ip", rid),
        port=_int_field(obj, "port", rid),
        via=_str_field(obj, "via", rid),
        status=status if isinstance(status, str) else ONLINE,
    )


def _optional_user(obj: dict[str, Any]) -> UserInfo | None:
    """The "user" entry of a joined or back event; a core older than the entry sends none.
    The entry must be about the event's own name."""
    if obj.get("user") is None:
        return None
    user = _user_info(obj["user"])
    if name_key(user.name) != name_key(_str_field(obj, "name", None)):
        raise ProtocolError(ErrorCode.BAD_REQUEST, 'the "user" entry is about another name')
    return user


def _event_seq(obj: dict[str, Any]) -> int:
    return 0 if obj.get("seq") is None else _int_field(obj, "seq", None)


def _parse_message(obj: Any) -> Message:
    if not isinstance(obj, dict):
        raise ProtocolError(ErrorCode.BAD_REQUEST, "a message must be an object")
    return Message(
        sender=_str_field(obj, "from", None),
        to=_str_field(obj, "to", None),
        text=_str_field(obj, "text", None),
        ts=_number_field(obj, "ts"),
        seq=_event_seq(obj),
    )


def _messages_field(obj: dict[str, Any]) -> tuple[Message, ...]:
    messages = obj.get("messages")
    if not isinstance(messages, list):
        raise ProtocolError(ErrorCode.BAD_REQUEST, 'field "messages" must be a list')
    return tuple(_parse_message(m) for m in messages)


def _parse_welcome(obj: dict[str, Any]) -> Welcome:
    session = obj.get("session", "")
    return Welcome(
        name=_str_field(obj, "name", None),
        ip=_str_field(obj, "ip", None),
        port=_int_field(obj, "port", None),
        id=_request_id(obj),
        session=session if isinstance(session, str) else "",
        seq=_event_seq(obj),
        resumed=obj.get("resumed") is True,
        truncated=obj.get("truncated") is True,
    )


def _parse_conversation(obj: Any) -> Conversation:
    if not isinstance(obj, dict):
        raise ProtocolError(ErrorCode.BAD_REQUEST, "a conversation must be an object")
    return Conversation(
        with_=_str_field(obj, "with", None),
        last=_int_field(obj, "last", None),
        read=_int_field(obj, "read", None),
        unread=_int_field(obj, "unread", None),
    )


def _parse_conversations(obj: dict[str, Any]) -> Conversations:
    listed = obj.get("conversations")
    if not isinstance(listed, list):
        raise ProtocolError(ErrorCode.BAD_REQUEST, 'field "conversations" must be a list')
    return Conversations(
        conversations=tuple(_parse_conversation(c) for c in listed), id=_request_id(obj)
    )


def _number_field(obj: dict[str, Any], field: str) -> float:
    value = obj.get(field)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ProtocolError(ErrorCode.BAD_REQUEST, f'field "{field}" must be a number')
    return float(value)


def _parse_users(obj: dict[str, Any]) -> Users:
    users = obj.get("users")
    if not isinstance(users, list):
        raise ProtocolError(ErrorCode.BAD_REQUEST, 'field "users" must be a list')
    return Users(users=tuple(_user_info(u) for u in users), id=_request_id(obj))


def _parse_bye(obj: dict[str, Any]) -> Bye:
    reason = obj.get("reason")
    if reason is not None and not isinstance(reason, str):
        raise ProtocolError(ErrorCode.BAD_REQUEST, 'field "reason" must be a string')
    return Bye(reason=reason, id=_request_id(obj))


_EVENT_PARSERS: Final[dict[str, Callable[[dict[str, Any]], Event]]] = {
    "message": _parse_message,
    "joined": lambda o: Joined(name=_str_field(o, "name", None), user=_optional_user(o)),
    "left": lambda o: Left(name=_str_field(o, "name", None)),
    "away": lambda o: Away(name=_str_field(o, "name", None)),
    "back": lambda o: Back(name=_str_field(o, "name", None), user=_optional_user(o)),
    "welcome": _parse_welcome,
    "users": _parse_users,
    "sent": lambda o: Sent(to=_str_field(o, "to", None), ts=_number_field(o, "ts"),
                           id=_request_id(o), seq=_event_seq(o)),
    "history": lambda o: HistoryPage(
        with_=_str_field(o, "with", None), messages=_messages_field(o),
        more=o.get("more") is True, id=_request_id(o),
    ),
    "results": lambda o: Results(
        q=_str_field(o, "q", None), messages=_messages_field(o), id=_request_id(o)
    ),
    "read": lambda o: ReadMarker(
        with_=_str_field(o, "with", None), seq=_int_field(o, "seq", None), id=_request_id(o)
    ),
    "conversations": _parse_conversations,
    "pong": lambda o: Pong(id=_request_id(o)),
    "bye": _parse_bye,
    "error": lambda o: Error(
        code=_str_field(o, "code", None),
        message=_str_field(o, "message", None),
        id=_request_id(o),
    ),
}


def parse_event(line: bytes) -> Event:
    """Parse one line from the server into an event; for clients. Raises ProtocolError.

    An unknown "type" raises ProtocolError(unknown_type): a client should skip such a line, as
    later protocol versions may add events.
    """
    obj = decode_object(line)
    kind = obj.get("type")
    if not isinstance(kind, str):
        raise ProtocolError(ErrorCode.BAD_REQUEST, 'field "type" must be a string')
    parser = _EVENT_PARSERS.get(kind)
    if parser is None:
        raise ProtocolError(ErrorCode.UNKNOWN_TYPE, f"unknown event type {kind[:40]!r}")
    return parser(obj)


# --- a connection's codec ----------------------------------------------------------------------


class JsonLinesCodec:
    """Protocol v1 for one connection, server side: bytes in -> frames -> requests; events out.

    Framing and parsing are separate steps so that the connection parses each frame only after
    it has handled the one before (a dialect's parse may depend on the session's state).
    """

    def __init__(self, max_line_bytes: int = MAX_LINE_BYTES) -> None:
        self._lines = LineBuffer(max_line_bytes)

    def feed(self, data: bytes) -> list[bytes | ProtocolError]:
        return self._lines.feed(data)

    def flush_timeout(self) -> float | None:
        """Seconds of silence after which pending bytes count as a frame; v1: newline only."""
        return None

    def flush(self) -> list[bytes | ProtocolError]:
        return []

    def parse(self, frame: bytes, registered: bool) -> Request | bytes | None:
        """A request; or bytes to answer at once; or None for a frame to ignore."""
        if not frame.strip(b" \t"):  # blank lines (an nc user pressing Enter) are ignored
            return None
        return parse_request(frame)

    def encode(self, event: Event) -> bytes:
        return encode_event(event)
