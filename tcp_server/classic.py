"""The assignment's plain-text dialect, a second codec beside protocol v1 (sans-I/O).

The first command is the username; then `list`, `send <name> <message>`, `send * <message>`,
`exit` and `help`, matched case-insensitively. A command ends at a newline, or, for clients
that send one command per send() without a newline, when no byte follows within a short pause.
Everything the server says is one or more readable lines; errors start with "error".
"""

from __future__ import annotations

import time
from typing import Final

from tcp_server.display import AWAY_MARK, LINE_BREAK_MARK, VIA_LABELS, display_text
from tcp_server.protocol import (
    AWAY,
    EVERYONE,
    MAX_LINE_BYTES,
    Away,
    Back,
    Bye,
    Conversations,
    Error,
    ErrorCode,
    Event,
    Exit,
    Hello,
    History,
    HistoryPage,
    Joined,
    LastMade,
    Left,
    LineBuffer,
    ListUsers,
    Message,
    Ping,
    Pong,
    ProtocolError,
    ReadMarker,
    Request,
    Results,
    Search,
    Send,
    Sent,
    UserInfo,
    Users,
    Welcome,
    check_name,
    check_query,
    check_text,
    format_address,
)

DEFAULT_PAUSE_S: Final = 0.1
SEND_USAGE: Final = "usage: send <name> <message>, or send * <message> for everyone"
COMMANDS: Final = ("list", "send", "exit", "help", "ping", "history", "search", "resume")
RECENT_ON_JOIN: Final = 10
HISTORY_LINES: Final = 20
RESUME_USAGE: Final = "usage: resume <name> <token>, as the first command of a new connection"

HELP: Final = (
    b"commands (any case):\n"
    b"  list                    who is online: name, ip:port, terminal or browser\n"
    b"  send <name> <message>   a message to one user\n"
    b"  send * <message>        a message to everyone else\n"
    b"  history [name]          the last messages to everyone, or with one user\n"
    b"  search <words>          the newest messages containing every word\n"
    b"  ping                    the server answers pong\n"
    b"  exit                    leave the chat\n"
    b"  help                    this text\n"
)
HELP_BEFORE_NAME: Final = (
    b"first type your username (1-32 of A-Z a-z 0-9 _ -), or resume <name> <token> to take\n"
    b"a session back after a disconnect; then:\n" + HELP
)

def printable(text: str) -> str:
    """Text from another user on one line, by the display rule (tcp_server/display.py): no
    control or bidi character reaches the reader's terminal; a line break becomes ↵ so that
    every event stays on one line; a tab is kept."""
    return display_text(text, line_break=LINE_BREAK_MARK)


class PlainTextCodec:
    """The plain-text dialect for one connection, server side."""

    def __init__(
        self, pause_s: float = DEFAULT_PAUSE_S, max_line_bytes: int = MAX_LINE_BYTES
    ) -> None:
        self._pause_s = pause_s
        self._lines = LineBuffer(max_line_bytes)

    def feed(self, data: bytes) -> list[bytes | ProtocolError]:
        return self._lines.feed(data)

    def flush_timeout(self) -> float | None:
        """A pause this long after the last byte ends the pending command."""
        return self._pause_s if self._lines.in_line else None

    def flush(self) -> list[bytes | ProtocolError]:
        line = self._lines.end_line()
        return [line] if line is not None else []

    def parse(self, frame: bytes, registered: bool) -> Request | bytes | None:
        try:
            command_line = frame.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise ProtocolError(
                ErrorCode.BAD_REQUEST, "the command is not valid UTF-8 text"
            ) from None
        if not command_line:
            return None
        word, _, rest = command_line.partition(" ")
        command = word.lower()
        if command == "help":
            return HELP if registered else HELP_BEFORE_NAME
        if command == "exit":
            return Exit()
        if command == "ping":
            return Ping()
        if not registered:
            if command == "resume" and rest:
                return _parse_resume(rest)
            if command in COMMANDS:
                raise ProtocolError(ErrorCode.NOT_REGISTERED, "send your username first")
            return Hello(name=check_name(command_line), recent=RECENT_ON_JOIN)
        if command == "list":
            return ListUsers()
        if command == "send":
            return _parse_send(rest)
        if command == "history":
            with_ = rest.strip() or EVERYONE
            if with_ != EVERYONE:
                check_name(with_)
            return History(with_=with_, limit=HISTORY_LINES)
        if command == "search":
            return Search(q=check_query(rest), limit=HISTORY_LINES)
        raise ProtocolError(
            ErrorCode.UNKNOWN_TYPE, f"unknown command {word[:40]!r}; type help for the commands"
        )

    def encode(self, event: Event) -> bytes:
        return (_render(event) + "\n").encode("utf-8")


def _parse_send(rest: str) -> Send:
    to, _, text = rest.lstrip(" ").partition(" ")
    if not to:
        raise ProtocolError(ErrorCode.BAD_REQUEST, SEND_USAGE)
    if not text.strip():
        raise ProtocolError(ErrorCode.BAD_TEXT, f"the message is empty; {SEND_USAGE}")
    return Send(to=to, text=check_text(text))


def _parse_resume(rest: str) -> Hello:
    parts = rest.split()
    if len(parts) != 2:
        raise ProtocolError(ErrorCode.BAD_REQUEST, RESUME_USAGE)
    name, token = parts
    return Hello(name=check_name(name), resume=token)


def _render_users(users: tuple[UserInfo, ...]) -> str:
    heading = f"{len(users)} user{'s' if len(users) != 1 else ''} online:"
    return "\n".join([heading, *map(_user_line, users)])


# Made once per list of users, as the JSON dialect's (protocol.LastMade says why).
_users_lines: LastMade[tuple[UserInfo, ...], str] = LastMade(_render_users)


def _user_line(user: UserInfo) -> str:
    kind = VIA_LABELS.get(user.via, "terminal")
    away = f"  {AWAY_MARK}" if user.status == AWAY else ""
    return f"  {user.name:<20} {format_address(user.ip, user.port):<24} {kind}{away}"


def _clock(ts: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ts))


def _stored_line(message: Message) -> str:
    """A message in a history or search answer: with its seq and both ends."""
    audience = "everyone" if message.to == EVERYONE else message.to
    return (f"[{_clock(message.ts)}] #{message.seq} {message.sender} -> {audience}: "
            f"{printable(message.text)}")


def _listing(heading: str, messages: tuple[Message, ...]) -> str:
    return "\n".join([heading, *map(_stored_line, messages)])


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _render(event: Event) -> str:
    match event:
        case Message(sender=sender, to=to, text=text, ts=ts):
            audience = "everyone" if to == EVERYONE else "you"
            return f"[{_clock(ts)}] {sender} -> {audience}: {printable(text)}"
        case Joined(name=name):
            return f"* {name} joined"
        case Left(name=name):
            return f"* {name} left"
        case Away(name=name):
            return f"* {name} is away"
        case Back(name=name):
            return f"* {name} is back"
        case Welcome(name=name, ip=ip, port=port, resumed=True):
            lost = " (some older messages were deleted meanwhile)" if event.truncated else ""
            return f"welcome back {name}! you are {format_address(ip, port)}.{lost}"
        case Welcome(name=name, ip=ip, port=port, session=token):
            return (
                f"welcome {name}! you are {format_address(ip, port)}. commands: list, "
                "send <name> <message>, send * <message>, history, search, exit, help\n"
                f"if you are disconnected, take this session back within the grace period by "
                f"sending, as the first line of a new connection: resume {name} {token}"
            )
        case HistoryPage(with_=with_, messages=messages):
            conversation = "to everyone" if with_ == EVERYONE else f"with {with_}"
            if not messages:
                return f"no messages {conversation} yet"
            return _listing(f"last {_count(len(messages), 'message')} {conversation}:", messages)
        case Results(q=q, messages=messages):
            found = f"{len(messages)} match{'' if len(messages) == 1 else 'es'}"
            return _listing(f"{found} for {printable(q)!r}:", messages)
        case ReadMarker(with_=with_, seq=seq):
            return f"read up to #{seq} with {with_}"
        case Conversations(conversations=conversations):
            return "\n".join(
                f"  {c.with_:<20} {c.unread} unread" for c in conversations
            )
        case Users(users=users):
            return _users_lines(users)
        case Sent(to=to):
            return "sent to everyone" if to == EVERYONE else f"sent to {to}"
        case Pong():
            return "pong"
        case Bye(reason=reason):
            return f"bye: {printable(reason)}" if reason else "bye"
        case Error(code=code, message=message):
            if code == ErrorCode.NOT_REGISTERED:
                message = "send your username first"
            # Messages quote what the user sent with repr(); the rule holds here all the same.
            return f"error: {printable(message)}"
