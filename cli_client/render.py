"""What the terminal client shows: protocol events and replies turned into text lines.

Pure functions, no I/O: the clock and the time zone come in as arguments, so that every line the
client prints can be unit-tested byte for byte. Everything a peer controls (names, texts, bye
reasons) goes through `printable()` first: a chat message must never be able to move the
cursor, clear the screen or retitle the terminal of the person reading it.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, tzinfo
from typing import Final

from tcp_server.display import VIA_LABELS, YOU_MARK, display_text
from tcp_server.protocol import (
    EVERYONE,
    Away,
    Back,
    Bye,
    Error,
    Event,
    HistoryPage,
    Joined,
    Left,
    Message,
    Results,
    UserInfo,
    name_key,
)

MENU: Final = (
    "1. List: View all connected users.",
    "2. Send: Send a message to a user.",
    "3. Exit: Exit the program.",
)
CHOICE_PROMPT: Final = "Enter your choice (1/2/3): "
NAME_PROMPT: Final = "Enter your username: "
RECIPIENT_PROMPT: Final = "Send to (a username, or * for everyone): "
TEXT_PROMPT: Final = "Message: "
EDIT_HINT: Final = "Edit the message and press Enter to send it, or clear it to cancel."
TAB_WIDTH: Final = 4

def printable(text: str, keep_newlines: bool = False) -> str:
    """`text` by the display rule (tcp_server/display.py): control and bidi characters shown
    as escapes (\\x1b, \\u202e) instead of obeyed.

    Tabs become spaces; line breaks ("\\n", "\\r\\n", a lone "\\r") are kept as "\\n" only when
    `keep_newlines` is true, and escaped otherwise.
    """
    return display_text(text, line_break="\n" if keep_newlines else None, tab=" " * TAB_WIDTH)


def format_time(ts: float, tz: tzinfo | None = None) -> str:
    """HH:MM:SS of an epoch timestamp, in `tz` (None: the local time zone)."""
    return datetime.fromtimestamp(ts, tz).strftime("%H:%M:%S")


def _with_body(header: str, text: str) -> str:
    """`header` then `text`; continuation lines of a multi-line text are indented under it."""
    lines = printable(text, keep_newlines=True).split("\n")
    indent = " " * len(header)
    return "\n".join([header + lines[0], *(indent + line for line in lines[1:])])


def render_message(message: Message, tz: tzinfo | None = None) -> str:
    """An incoming message: time, sender, whether it went to everyone or to you, the text."""
    scope = "to everyone" if message.to == EVERYONE else "to you"
    sender = printable(message.sender)
    return _with_body(f"[{format_time(message.ts, tz)}] {sender} ({scope}): ", message.text)


def render_joined(event: Joined, now: float, tz: tzinfo | None = None) -> str:
    return f"[{format_time(now, tz)}] * {printable(event.name)} joined the chat"


def render_left(event: Left, now: float, tz: tzinfo | None = None) -> str:
    return f"[{format_time(now, tz)}] * {printable(event.name)} left the chat"


def render_away(event: Away, now: float, tz: tzinfo | None = None) -> str:
    """A user whose connection ended without an exit: the session waits for them a while."""
    return f"[{format_time(now, tz)}] * {printable(event.name)} is away"


def render_back(event: Back, now: float, tz: tzinfo | None = None) -> str:
    return f"[{format_time(now, tz)}] * {printable(event.name)} is back"


def render_stored(
    message: Message, me: str, tz: tzinfo | None = None, mine_after: int = 0
) -> str:
    """A message from the server's store (history, search): time, sender, recipient, text.

    Unlike a live message it may be one the user sent, so both ends are named, "you" for the
    user. Only messages after seq `mine_after` (where this session started) can be the user's:
    one before it under the same name was an earlier holder's of that name.
    """

    def who(name: str) -> str:
        if message.seq > mine_after and name_key(name) == name_key(me):
            return "you"
        return printable(name)

    to = "everyone" if message.to == EVERYONE else who(message.to)
    return _with_body(f"[{format_time(message.ts, tz)}] {who(message.sender)} -> {to}: ",
                      message.text)


def render_earlier(
    messages: Sequence[Message], me: str, tz: tzinfo | None = None, mine_after: int = 0
) -> str | None:
    """The recent messages to everyone shown on joining, oldest first; None when there are none."""
    if not messages:
        return None
    heading = f"Earlier messages to everyone (the last {len(messages)}):"
    return _stored_block(heading, messages, me, tz, mine_after)


def _stored_block(heading: str, messages: Sequence[Message], me: str,
                  tz: tzinfo | None, mine_after: int) -> str:
    return "\n".join([heading, *("  " + render_stored(m, me, tz, mine_after)
                                 .replace("\n", "\n  ") for m in messages)])


def render_history(
    page: HistoryPage, me: str, tz: tzinfo | None = None, mine_after: int = 0
) -> str:
    """The answer to `history` / `history NAME`: a heading, then the messages oldest first."""
    who = printable(page.with_)
    about = "to everyone" if page.with_ == EVERYONE else f"between you and {who}"
    if not page.messages:
        return f"No messages {about} yet."
    count = len(page.messages)
    older = ", older ones not shown" if page.more else ""
    heading = f"Messages {about} (the last {count}{older}):"
    return _stored_block(heading, page.messages, me, tz, mine_after)


def render_results(
    results: Results, me: str, tz: tzinfo | None = None, mine_after: int = 0
) -> str:
    """The answer to `search WORDS`: a heading, then the matches newest first."""
    query = printable(results.q)
    if not results.messages:
        return f"No messages match '{query}'."
    count = len(results.messages)
    heading = f"{count} message{'' if count == 1 else 's'} match '{query}' (newest first):"
    return _stored_block(heading, results.messages, me, tz, mine_after)


def render_bye(event: Bye) -> str:
    """A bye the server sent on its own: it is about to close the connection."""
    if event.reason:
        return f"The server is closing the connection: {printable(event.reason)}"
    return "The server is closing the connection."


def render_error(event: Error) -> str:
    """An error reply, in the server's own words (its `message` is meant for people)."""
    return f"Server error: {printable(event.message)}"


def render_event(event: Event, now: float, tz: tzinfo | None = None) -> str | None:
    """The line to show for an unsolicited event, or None for one that shows nothing.

    `now` stamps events that carry no time of their own (joins and leaves).
    """
    match event:
        case Message():
            return render_message(event, tz)
        case Joined():
            return render_joined(event, now, tz)
        case Left():
            return render_left(event, now, tz)
        case Away():
            return render_away(event, now, tz)
        case Back():
            return render_back(event, now, tz)
        case Bye():
            return render_bye(event)
        case Error():
            return render_error(event)
        case _:
            # Replies that arrive after their request gave up waiting: nothing to show.
            return None


def render_users(users: Sequence[UserInfo], me: str) -> list[str]:
    """The List answer: an aligned table of name, IP, port, client and status (online or
    away), marking the caller."""
    header = ("NAME", "IP", "PORT", "CLIENT", "STATUS")
    rows = [
        (
            printable(user.name),
            printable(user.ip),
            str(user.port),
            VIA_LABELS.get(user.via, printable(user.via)),
            printable(user.status),
        )
        for user in users
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    count = len(users)
    lines = [f"{count} user{'' if count == 1 else 's'} online:"]
    for index, row in enumerate([header, *rows]):
        cells = [row[0].ljust(widths[0]), row[1].ljust(widths[1]),
                 row[2].rjust(widths[2]), row[3].ljust(widths[3]), row[4].ljust(widths[4])]
        line = "  " + "  ".join(cells)
        if index > 0 and users[index - 1].name == me:
            line += f"  {YOU_MARK}"
        lines.append(line.rstrip())
    return lines


def render_sent(to: str) -> str:
    """Confirmation of a message the server accepted."""
    if to == EVERYONE:
        return "Message sent to everyone."
    return f"Message sent to {printable(to)}."


def render_not_online(name: str) -> str:
    """A recipient who is not in the server's list of users online."""
    return f"No user named '{printable(name)}' is online."


def render_not_sent(error: Error) -> str:
    """A refused message, with the server's reason in plain words."""
    return f"Message not sent: {printable(error.message)}."
