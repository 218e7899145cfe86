"""The assignment's plain-text dialect, a second codec beside protocol v1 (sans-I/O).

The first command is the username; then `list`, `send <name> <message>`, `send * <message>`,
`exit` and `help`, matched case-insensitively. A command ends at a newline, or, for clients
that send one command per send() without a newline, when no byte follows within a short pause.
Everything the server says is one or more readable lines; errors start with "error".
"""

from __future__ import annotations

import time
from typing import Final

from tcp_server.protocol import (
    EVERYONE,
    MAX_LINE_BYTES,
    Bye,
    Error,
    ErrorCode,
    Event,
    Exit,
    Hello,
    Joined,
    Left,
    LineBuffer,
    ListUsers,
    Message,
    Ping,
    Pong,
    ProtocolError,
    Request,
    Send,
    Sent,
    UserInfo,
    Users,
    Welcome,
    check_name,
    check_text,
    format_address,
)

DEFAULT_PAUSE_S: Final = 0.1
SEND_USAGE: Final = "usage: send <name> <message>, or send * <message> for everyone"
COMMANDS: Final = ("list", "send", "exit", "help", "ping")

HELP: Final = (
    b"commands (any case):\n"
    b"  list                    who is online: name, ip:port, terminal or browser\n"
    b"  send <name> <message>   a message to one user\n"
    b"  send * <message>        a message to everyone else\n"
    b"  ping                    the server answers pong\n"
    b"  exit                    leave the chat\n"
    b"  help                    this text\n"
)
HELP_BEFORE_NAME: Final = b"first type your username (1-32 of A-Z a-z 0-9 _ -), then:\n" + HELP

# Control characters from another user must not drive the reader's terminal (escape
# sequences); line breaks become a visible mark so that every event stays on one line.
_LINE_BREAK_MARK: Final = "\u21b5"  # ↵
_SAFE_TEXT: Final = {code: f"\\x{code:02x}" for code in [*range(0x20), *range(0x7F, 0xA0)]}
_SAFE_TEXT.update({0x09: "\t", 0x0A: _LINE_BREAK_MARK, 0x0D: _LINE_BREAK_MARK})


def printable(text: str) -> str:
    """Text on one line, with no control characters left to reach a terminal."""
    return text.replace("\r\n", "\n").translate(_SAFE_TEXT)


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
            if command in COMMANDS:
                raise ProtocolError(ErrorCode.NOT_REGISTERED, "send your username first")
            return Hello(name=check_name(command_line))
        if command == "list":
            return ListUsers()
        if command == "send":
            return _parse_send(rest)
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


def _user_line(user: UserInfo) -> str:
    kind = "browser" if user.via == "web" else "terminal"
    return f"  {user.name:<20} {format_address(user.ip, user.port):<24} {kind}"


def _render(event: Event) -> str:
    match event:
        case Message(sender=sender, to=to, text=text, ts=ts):
            clock = time.strftime("%H:%M:%S", time.localtime(ts))
            audience = "everyone" if to == EVERYONE else "you"
            return f"[{clock}] {sender} -> {audience}: {printable(text)}"
        case Joined(name=name):
            return f"* {name} joined"
        case Left(name=name):
            return f"* {name} left"
        case Welcome(name=name, ip=ip, port=port):
            return (
                f"welcome {name}! you are {format_address(ip, port)}. commands: list, "
                "send <name> <message>, send * <message>, exit, help"
            )
        case Users(users=users):
            heading = f"{len(users)} user{'s' if len(users) != 1 else ''} online:"
            return "\n".join([heading, *map(_user_line, users)])
        case Sent(to=to):
            return "sent to everyone" if to == EVERYONE else f"sent to {to}"
        case Pong():
            return "pong"
        case Bye(reason=reason):
            return f"bye: {reason}" if reason else "bye"
        case Error(code=code, message=message):
            if code == ErrorCode.NOT_REGISTERED:
                message = "send your username first"
            return f"error: {message}"
