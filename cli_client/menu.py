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
from cli_client.printer import EventPrinter
from cli_client.render import (
    CHOICE_PROMPT,
    EDIT_HINT,
    MENU,
    NAME_PROMPT,
    RECIPIENT_PROMPT,
    TEXT_PROMPT,
    printable,
    render_bye,
    render_error,
    render_not_online,
    render_not_sent,
    render_sent,
    render_users,
)
from tcp_server.protocol import (
    EVERYONE,
    Bye,
    Error,
    Event,
    Exit,
    Hello,
    ListUsers,
    ProtocolError,
    Send,
    Sent,
    Users,
    Welcome,
    check_text,
    name_key,
)

log = logging.getLogger(__name__)

BYE_TIMEOUT_S: Final = 5.0

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
    connection: ServerConnection, connect: Connect, console: Console, name: str | None
) -> ExitCode:
    """The whole session on `connection`, from hello to goodbye. Returns the exit code.

    `connect` opens a new connection, should the server close this one during registration.
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
    printer = EventPrinter(connection, console)
    printer.start()
    try:
        menu_loop(connection, console, me)
    except (EOFError, KeyboardInterrupt):
        pass  # Ctrl-D, Ctrl-C and the end of piped input all mean Exit
    except (Interrupted, ConnectionClosed):
        # The printer says that the connection is lost, once it has shown what came before.
        connection.close()
        printer.stop()
        return ExitCode.CONNECTION_LOST
    except BaseException:
        connection.close()
        printer.stop()
        raise
    return goodbye(connection, console, printer)


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
            if isinstance(reply, Error):
                refusal = f"That name cannot be used: {printable(reply.message)}."
            else:
                refusal = f"Unexpected answer from the server: {type(reply).__name__}."
            if final:
                self._console.show(refusal)
                raise _NameRefused
            self._console.show(refusal + " Please choose another one.")
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


def menu_loop(connection: ServerConnection, console: Console, me: str) -> None:
    """Show the menu and do what is chosen, until Exit (returns) or EOF/Ctrl-C (raises)."""
    while True:
        console.show("\n" + "\n".join(MENU))
        answer = console.ask(CHOICE_PROMPT).strip().lower()
        choice = CHOICES.get(answer)
        try:
            if choice == "list":
                list_users(connection, console, me)
            elif choice == "send":
                send_message(connection, console)
            elif choice == "exit":
                return
            elif answer:
                console.show("Please enter 1, 2 or 3.")
        except ReplyTimeout:
            console.show("The server did not answer in time; please try again.")


def list_users(connection: ServerConnection, console: Console, me: str) -> None:
    """Menu 1: show everyone online as a table."""
    reply = connection.request(ListUsers())
    if isinstance(reply, Users):
        console.show("\n".join(render_users(reply.users, me)))
    elif isinstance(reply, Error):
        console.show(render_error(reply))


def send_message(connection: ServerConnection, console: Console) -> None:
    """Menu 2: ask for a recipient and a text, send it, and say whether it went.

    A recipient who is not online is said before the text is asked for. The server checks
    again when the text is sent (the recipient may have left meanwhile).
    """
    to = console.ask(RECIPIENT_PROMPT).strip()
    if not to:
        console.show("No recipient given; nothing was sent.")
        return
    if not is_online(connection, to):
        if console.interactive:
            console.show(render_not_online(to))
            return
        # The script's next line is the message it wrote for this recipient: read and drop
        # it, so that it is not taken for a menu answer.
        console.show(render_not_online(to).removesuffix(".")
                     + "; the message line that follows is skipped.")
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
    reply = connection.request(Send(to=to, text=text))
    if isinstance(reply, Sent):
        console.show(render_sent(reply.to))
    elif isinstance(reply, Error):
        console.show(render_not_sent(reply))


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


def is_online(connection: ServerConnection, to: str) -> bool:
    """Whether `to` is `*` or a user in a fresh list from the server.

    True as well when the list cannot be had (an error reply): the server's own check when the
    text is sent decides then.
    """
    if to == EVERYONE:
        return True
    reply = connection.request(ListUsers())
    if not isinstance(reply, Users):
        return True
    return name_key(to) in {name_key(user.name) for user in reply.users}


def goodbye(
    connection: ServerConnection, console: Console, printer: EventPrinter
) -> ExitCode:
    """Menu 3 (and Ctrl-C, Ctrl-D, end of input): say exit, wait for bye, close."""
    printer.expect_close()
    code = ExitCode.OK
    try:
        connection.request(Exit(), timeout=BYE_TIMEOUT_S)
    except (ConnectionClosed, ReplyTimeout, KeyboardInterrupt):
        code = ExitCode.CONNECTION_LOST
    connection.close()
    printer.stop()
    if printer.lost or code != ExitCode.OK:
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


