"""`python -m cli_client` / `chat-client`: the chatroom's terminal client.

At a terminal (stdin and stdout both ttys) it prompts with prompt_toolkit, and incoming
messages appear above the prompt while the user types (patch_stdout). Otherwise (a pipe, a file,
a test driving it) it reads the same answers line by line and prints plain, flushed lines; the
end of input means Exit.

A lost connection is taken back (cli_client/session.py): the client reconnects with a jittered
backoff and resumes its session, and what was missed meanwhile appears, once and in order.

Exit codes: 0 after a goodbye, 1 when the connection was lost and the session could not be
taken back, 2 when the server could not be reached (or the arguments are wrong), 3 when the
server refused the --name given and stdin is not a terminal (at a terminal another name is
asked for).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import sys
from collections.abc import Sequence

from prompt_toolkit.patch_stdout import patch_stdout

from cli_client.connection import ServerConnection
from cli_client.console import Console, PipeConsole, TerminalConsole
from cli_client.menu import ExitCode, run
from cli_client.servers import RoundRobin, parse_hosts
from cli_client.session import RECONNECT_FOR_S, ReconnectPolicy

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 9000


def _port(text: str) -> int:
    port = int(text)
    if not 1 <= port <= 65_535:
        raise argparse.ArgumentTypeError(f"must be 1-65535: {text}")
    return port


def _seconds(text: str) -> float:
    seconds = float(text)
    if not 0 <= seconds < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number of seconds, 0 or more: {text}")
    return seconds


def build_parser() -> argparse.ArgumentParser:
    """The command line of chat-client."""
    parser = argparse.ArgumentParser(
        prog="chat-client",
        description="Chat with everyone connected to a chatroom server.",
        epilog="When stdin is not a terminal, the menu answers are read from it line by line "
        "and the end of input means Exit; a --name the server refuses then ends the client "
        "(exit code 3) instead of taking the next line for a name. "
        "A lost connection is taken back: the client reconnects and resumes the session, "
        "and the messages missed meanwhile appear. "
        "Exit codes: 0 after a goodbye, 1 connection lost (the session could not be "
        "resumed), 2 server not reachable or bad arguments, 3 name refused (or "
        "registration refused otherwise: too many users or sign-ins from this address, or "
        "the server unavailable).",
    )
    parser.add_argument("--host", action="append", metavar="HOST[:PORT][,HOST[:PORT]...]",
                        help="the chat server's address (default "
                        f"{DEFAULT_HOST}); several (comma-separated or repeated): nodes of one "
                        "room, the first that answers is used and a lost connection is "
                        "resumed on the next")
    parser.add_argument("--port", type=_port, default=DEFAULT_PORT,
                        help=f"the chat server's port (default {DEFAULT_PORT})")
    parser.add_argument("--name", help="your username (asked for when not given or, at a "
                        "terminal, when refused)")
    parser.add_argument("--reconnect-for", type=_seconds, default=RECONNECT_FOR_S,
                        metavar="SECONDS",
                        help="after losing the connection, how long to keep trying to "
                        f"reconnect before giving up (default {RECONNECT_FOR_S:g})")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the client; returns its exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        addresses = parse_hosts(args.host or [DEFAULT_HOST], args.port)
    except ValueError as error:
        parser.error(f"--host: {error}")
    connect = RoundRobin(addresses, ServerConnection.open)
    try:
        connection = connect()
    except OSError as error:
        reason = error.strerror or str(error) or type(error).__name__
        where = ", ".join(f"{host}:{port}" for host, port in addresses)
        print(f"chat-client: cannot connect to the chat server at {where}: "
              f"{reason}", file=sys.stderr)
        return ExitCode.CANNOT_CONNECT
    interactive = sys.stdin.isatty() and sys.stdout.isatty()
    if isinstance(sys.stdout, io.TextIOWrapper):
        # A text from another user must not crash a client whose terminal or pipe cannot
        # encode some of its characters: show a replacement character instead.
        sys.stdout.reconfigure(errors="replace")
    with contextlib.ExitStack() as stack:
        console: Console
        if interactive:
            # Everything printed from now on, by any thread, appears above the prompt.
            stack.enter_context(patch_stdout())
            console = TerminalConsole()
        else:
            pipe_console = PipeConsole()
            stack.callback(pipe_console.close)
            console = pipe_console
        # Configured here so that log lines, too, go through patch_stdout's stderr.
        logging.basicConfig(level=logging.WARNING, format="chat-client: %(message)s")
        try:
            code = run(connection, connect, console, args.name,
                       ReconnectPolicy(reconnect_for_s=args.reconnect_for))
        except BrokenPipeError:
            # Whoever read our output has gone; there is nobody left to tell.
            code = ExitCode.CONNECTION_LOST
    return code

if __name__ == "__main__":
    sys.exit(main())
