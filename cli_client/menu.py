"""The client's flow: pick a name, then the menu (List, Send, Exit), then goodbye.

Runs on the main thread and talks to the user only through a Console, so the same flow serves a
terminal and a pipe. Incoming events are shown meanwhile by the EventPrinter's thread.
"""

from __future__ import annotations

import contextlib
import logging
import queue
from collections.abc import Callable
from enum import IntEnum
from typing import Final

from cli_client.connection import (
    ConnectionClosed,
    Incoming,
    ReplyTimeout,
    ServerConnection,
)
from cli_client.console import Console, Interrupted
from cli_client.render import (
    CHOICE_PROMPT,
    EDIT_HINT,
    MENU,
    NAME_PROMPT,
    RECIPIENT_PROMPT,
    TEXT_PROMPT,
    printable,
    render_bye,
    render_earlier,
    render_error,
    render_history,
    render_not_online,
    render_not_sent,
    render_results,
    render_sent,
    render_users,
)
from cli_client.session import (
    BYE_TIMEOUT_S,
    NotConnected,
    ReconnectPolicy,
    Session,
    SessionEnded,
)
from tcp_server.protocol import (
    EVERYONE,
    MAX_HISTORY_LIMIT,
    Bye,
    Error,
    ErrorCode,
    Event,
    Exit,
    Hello,
    History,
    HistoryPage,
    ListUsers,
    ProtocolError,
    Results,
    Search,
    Send,
    Sent,
    UserInfo,
    Users,
    Welcome,
    check_text,
    is_valid_name,
    name_key,
)

log = logging.getLogger(__name__)

# Shown on joining: the last few messages to everyone (the plain-text dialect shows as many).
RECENT_MESSAGES: Final = 10
# `history` and `search` show as many as the plain-text dialect does.
HISTORY_SHOWN: Final = 20
# Typed at the menu's prompt; the numbered menu itself keeps the assignment's wording.
MORE_COMMANDS: Final = ("You can also type: history (messages to everyone), history NAME "
                        "(yours with NAME), search WORDS.")
NOT_CONNECTED: Final = ("The connection to the server has not come back yet (still "
                        "reconnecting); nothing was sent. Please try again in a moment.")

CHOICES: Final = {"1": "list", "list": "list", "2": "send", "send": "send", "3": "exit",
                  "exit": "exit"}


class ExitCode(IntEnum):
    OK = 0
    CONNECTION_LOST = 1
    CANNOT_CONNECT = 2
    NAME_REFUSED = 3  # in pipe mode: the server refused the --name given


Connect = Callable[[], ServerConnection]


class _Lost(Exception):
    """The connection ended during registration and could not be made again."""


class _NameRefused(Exception):
    """The name given on the command line was refused, and nobody is there to pick another."""


def run(
    connection: ServerConnection,
    connect: Connect,
    console: Console,
    name: str | None,
    policy: ReconnectPolicy | None = None,
) -> ExitCode:
    """The whole session, from hello to goodbye. Returns the exit code.

    `connect` opens a new connection: should the server close this one during registration,
    and to take the session back whenever the connection is lost later (see session.py).
    """
    client = _Registrar(connection, connect, console)
    try:
        welcome = client.register(name)
    except (EOFError, KeyboardInterrupt):
        return _goodbye_unregistered(client.connection, console)
    except _Lost:
        client.connection.close()
        return ExitCode.CONNECTION_LOST
    except _NameRefused:
        _leave_unregistered(client.connection)
        return ExitCode.NAME_REFUSED
    connection = client.connection
    me = welcome.name
    console.show(f"Welcome, {printable(me)}! You are connected as {welcome.ip}:{welcome.port}.")
    session = Session(connection, welcome, connect, console, policy)
    try:
        # Before the events thread starts, so that the past comes before what arrives live.
        show_recent(connection, console, welcome)
        session.start()
        menu_loop(session, console, me)
    except (EOFError, KeyboardInterrupt):
        pass  # Ctrl-D, Ctrl-C and the end of piped input all mean Exit
    except (Interrupted, SessionEnded):
        # The events thread has said why the session is over.
        session.close()
        return ExitCode.CONNECTION_LOST
    except BaseException:
        session.close()
        raise
    return goodbye(session, console)


def show_recent(connection: ServerConnection, console: Console, welcome: Welcome) -> None:
    """The last few messages to everyone from before the welcome, marked as earlier ones.

    Only those up to the welcome's seq: what came after arrives live. A core without history
    (an error reply) or a lost connection shows nothing here; the events thread handles a loss.
    """
    if welcome.seq <= 0:
        return
    try:
        reply = connection.request(
            History(with_=EVERYONE, before=welcome.seq + 1, limit=RECENT_MESSAGES)
        )
    except (ConnectionClosed, ReplyTimeout) as error:
        log.debug("no recent messages: %r", error)
        return
    # None of them is the user's, even under the same name: they came before the welcome.
    if isinstance(reply, HistoryPage) and (text := render_earlier(
            reply.messages, welcome.name, mine_after=welcome.seq)):
        console.show(text)


NAME_ERRORS: Final = frozenset({ErrorCode.BAD_NAME, ErrorCode.NAME_TAKEN})
# Limits of the client's address (or of its sign-ins): another name would not help.
ADDRESS_ERRORS: Final = frozenset({ErrorCode.TOO_MANY_FROM_ADDRESS, ErrorCode.RATE_LIMITED})


class _Registrar:
    """Says hello until the server welcomes a name; owns the connection meanwhile."""

    def __init__(self, connection: ServerConnection, connect: Connect, console: Console) -> None:
        self._connect = connect
        self._console = console
        self.connection = connection

    def register(self, name: str | None) -> Welcome:
        """Register `name`, or names asked for, until one is welcomed.

        A refused `name` (from the command line) is final through a pipe (_NameRefused): the
        lines that follow are the script's menu answers, not names to try.
        The server closes a connection that stays unregistered for a while (its hello
        timeout): if that happened while the user was thinking of a name, connect once more.
        """
        final = name is not None and not self._console.interactive
        while True:
            if name is None:
                name = self._console.ask(NAME_PROMPT).strip()
                if not name:
                    continue
            reply = self._hello_once_more_if_closed(name)
            if isinstance(reply, Welcome):
                return reply
            if isinstance(reply, Error) and reply.code in NAME_ERRORS:
                refusal = f"That name cannot be used: {printable(reply.message)}."
                again = " Please choose another one."
            elif isinstance(reply, Error) and reply.code in ADDRESS_ERRORS:  # not the name's
                refusal = f"The server did not let you in: {printable(reply.message)}."
                again = " Enter a name to try again."
            elif isinstance(reply, Error):
                refusal = f"The server refused: {printable(reply.message)}."
                again = " Enter a name to try again."
            else:
                refusal = f"Unexpected answer from the server: {type(reply).__name__}."
                again = " Please choose another one."
            if final:
                self._console.show(refusal)
                raise _NameRefused
            self._console.show(refusal + again)
            name = None

    def _hello_once_more_if_closed(self, name: str) -> Event:
        try:
            return self._hello(name)
        except ConnectionClosed:
            old = self.connection
            old.close()
        try:
            self.connection = self._connect()
        except OSError:
            self._show_last_words(old)
            raise _Lost from None
        try:
            return self._hello(name)
        except ConnectionClosed:
            self._show_last_words(self.connection)
            raise _Lost from None

    def _hello(self, name: str) -> Event:
        try:
            return self.connection.request(Hello(name=name))
        except ReplyTimeout:
            # An unregistered connection that gets no answer is no use: start afresh.
            raise ConnectionClosed from None

    def _show_last_words(self, connection: ServerConnection) -> None:
        """Show what a closed connection said before its end (a bye's reason, server_full)."""
        connection.close()  # joins the receiver: everything it read is on the queue now
        while (item := _next_or_none(connection.events)) is not None:
            if isinstance(item, Bye):
                self._console.show(render_bye(item))
            elif isinstance(item, Error):
                self._console.show(render_error(item))
        self._console.show("Connection to the server lost.")


def _next_or_none(events: queue.Queue[Incoming | None]) -> Incoming | None:
    try:
        return events.get_nowait()
    except queue.Empty:
        return None


def menu_loop(session: Session, console: Console, me: str) -> None:
    """Show the menu and do what is chosen, until Exit (returns) or EOF/Ctrl-C (raises).

    Besides 1, 2 and 3, `history`, `history NAME` and `search WORDS` are understood.
    """
    while True:
        console.show("\n" + "\n".join(MENU))
        line = console.ask(CHOICE_PROMPT).strip()
        answer = line.lower()
        choice = CHOICES.get(answer)
        command, _, argument = line.partition(" ")
        try:
            if choice == "list":
                list_users(session, console, me)
            elif choice == "send":
                send_message(session, console)
            elif choice == "exit":
                return
            elif command.lower() == "history":
                show_history(session, console, me, argument.strip() or EVERYONE)
            elif command.lower() == "search" and argument.strip():
                search_messages(session, console, me, argument.strip())
            elif answer:
                console.show("Please enter 1, 2 or 3. " + MORE_COMMANDS)
        except ReplyTimeout:
            console.show("The server did not answer in time; please try again.")
        except NotConnected:
            console.show(NOT_CONNECTED)


def show_history(session: Session, console: Console, me: str, with_: str) -> None:
    """`history` (messages to everyone) or `history NAME` (yours with NAME), oldest first."""
    if with_ != EVERYONE and not is_valid_name(with_):
        console.show(f"'{printable(with_)}' is not a username.")
        return
    reply = session.request(History(with_=with_, limit=HISTORY_SHOWN))
    if isinstance(reply, HistoryPage):
        console.show(render_history(reply, me, mine_after=session.started_seq))
    elif isinstance(reply, Error):
        console.show(render_error(reply))


def search_messages(session: Session, console: Console, me: str, words: str) -> None:
    """`search WORDS`: the newest messages (to everyone, or yours) holding every word."""
    reply = session.request(Search(q=words, limit=HISTORY_SHOWN))
    if isinstance(reply, Results):
        console.show(render_results(reply, me, mine_after=session.started_seq))
    elif isinstance(reply, Error):
        console.show(render_error(reply))


def room_users(session: Session) -> tuple[UserInfo, ...] | Error | None:
    """Everyone connected (online or away): the list this connection keeps from events, or,
    the first time on a connection, the server's answer to `list` (which starts that list)."""
    known = session.known_users()
    if known is not None:
        return known
    reply = session.request(ListUsers())
    if isinstance(reply, Users):
        return reply.users
    return reply if isinstance(reply, Error) else None


def list_users(session: Session, console: Console, me: str) -> None:
    """Menu 1: show everyone connected (online or away) as a table."""
    users = room_users(session)
    if isinstance(users, Error):
        console.show(render_error(users))
    elif users is not None:
        console.show("\n".join(render_users(users, me)))


def send_message(session: Session, console: Console) -> None:
    """Menu 2: ask for a recipient and a text, send it, and say whether it went.

    A recipient who is not online is said before the text is asked for. The server checks
    again when the text is sent (the recipient may have left meanwhile). While the client is
    reconnecting, both wait for the connection to come back (a bounded time).
    """
    to = console.ask(RECIPIENT_PROMPT).strip()
    if not to:
        console.show("No recipient given; nothing was sent.")
        return
    try:
        online = is_online(session, to)
    except NotConnected:
        online = None
    if not online:
        refusal = NOT_CONNECTED if online is None else render_not_online(to)
        if console.interactive:
            console.show(refusal)
            return
        # The script's next line is the message it wrote for this recipient: read and drop
        # it, so that it is not taken for a menu answer.
        console.show(refusal.removesuffix(".") + "; the message line that follows is skipped.")
        console.ask(TEXT_PROMPT)
        return
    text = console.ask(TEXT_PROMPT)
    while (problem := text_problem(text)) is not None:
        console.show(render_not_sent(problem))
        if not (console.interactive and text):
            return  # piped: the script goes on with its next answer
        # Rather than make the user type it all again: the text, back in the prompt.
        console.show(EDIT_HINT)
        text = console.ask(TEXT_PROMPT, default=text)
    floor = session.sent_floor()
    try:
        # Not sent again by itself: if the connection ended after the text went out, the
        # server may have taken it, and sending it twice would show it twice.
        reply = session.request(Send(to=to, text=text), resend=False)
    except SessionEnded:
        raise
    except ConnectionClosed:
        console.show("The connection was lost before the server confirmed the message; "
                     "checking whether it arrived...")
        console.show(check_lost_send(session, to, text, floor))
        return
    if isinstance(reply, Sent):
        console.show(render_sent(reply.to))
    elif isinstance(reply, Error):
        console.show(render_not_sent(reply))


def check_lost_send(session: Session, to: str, text: str, floor: int) -> str:
    """Whether a message whose `sent` was cut off by a lost connection was taken: the answer
    to show. Looks, once the session is back, for a message from this session to `to` with
    this text and a seq above `floor` (session.sent_floor() from before sending) in the
    conversation's history: the server stores a message before it answers `sent`.
    """
    try:
        reply = session.request(History(with_=to, limit=MAX_HISTORY_LIMIT))
    except SessionEnded:
        raise
    except (NotConnected, ConnectionClosed, ReplyTimeout):
        reply = None
    if not isinstance(reply, HistoryPage):
        return ("Could not check with the server: the message may or may not have been "
                "sent.")
    me = name_key(session.name)
    for message in reply.messages:
        if (message.seq > floor and name_key(message.sender) == me
                and name_key(message.to) == name_key(to) and message.text == text):
            return render_sent(to).removesuffix(".") + " (confirmed after reconnecting)."
    if reply.more and (not reply.messages or reply.messages[0].seq > floor):
        # Too much happened since to see it all: no answer either way.
        return ("Could not check with the server: the message may or may not have been "
                "sent.")
    return ("Message not sent: the connection was lost before the server took it. Please "
            "send it again.")


def text_problem(text: str) -> Error | None:
    """Why the server would refuse `text` (too long, empty), or None when it is fine.

    The shared codec's own rule, so that an oversized text is refused here in the server's
    words rather than as an over-long line, and before it is lost.
    """
    try:
        check_text(text)
    except ProtocolError as error:
        return Error(code=error.code, message=error.message)
    return None


def is_online(session: Session, to: str) -> bool:
    """Whether `to` is `*` or a user in the room's list (online or away: the server keeps
    messages for a user who is away).

    True as well when the list cannot be had (an error reply): the server's own check when the
    text is sent decides then.
    """
    if to == EVERYONE:
        return True
    users = room_users(session)
    if not isinstance(users, tuple):
        return True
    return name_key(to) in {name_key(user.name) for user in users}


def goodbye(session: Session, console: Console) -> ExitCode:
    """Menu 3 (and Ctrl-C, Ctrl-D, end of input): say exit, wait for bye, close."""
    said_bye = session.end()
    if not said_bye or session.lost:
        console.show("The connection ended before the server said goodbye.")
        return ExitCode.CONNECTION_LOST
    console.show("Goodbye!")
    return ExitCode.OK


def _goodbye_unregistered(connection: ServerConnection, console: Console) -> ExitCode:
    _leave_unregistered(connection)
    console.show("Goodbye!")
    return ExitCode.OK


def _leave_unregistered(connection: ServerConnection) -> None:
    with contextlib.suppress(ConnectionClosed, ReplyTimeout, KeyboardInterrupt):
        connection.request(Exit(), timeout=BYE_TIMEOUT_S)
    connection.close()
