"""The two faces of the client: a terminal (prompt_toolkit) and a pipe (plain lines).

Both offer the same three calls, used by the menu on the main thread and by the event printer
on its own thread:

- ask(prompt, default="") -> the user's answer, `default` already typed in it at a terminal
  (for editing); raises EOFError at end of input (Ctrl-D), KeyboardInterrupt on Ctrl-C, and
  Interrupted once interrupt() was called;
- show(text) -> print a line (or several) at once, from any thread, without garbling a prompt
  the user is typing at;
- interrupt() -> from any thread: make the current (or the next) ask() raise Interrupted.
  The printer calls it when the connection is lost, so the menu stops waiting for the user.

and `interactive`, true at a terminal: there a person can be asked again, while through a pipe
each line is an answer the script author wrote for one particular question.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import socket
import sys
import threading
from asyncio import AbstractEventLoop, get_running_loop
from typing import Final, Protocol, TextIO

from prompt_toolkit import PromptSession

STDIN_READ_BYTES: Final = 65_536


class Interrupted(Exception):
    """ask() was interrupted from another thread (the connection was lost)."""


class Console(Protocol):
    @property
    def interactive(self) -> bool:
        """Whether a person answers at a terminal (rather than a script through a pipe)."""
        ...

    def ask(self, prompt: str, default: str = "") -> str:
        """Show `prompt` and return the line the user answers, without its newline.

        At a terminal, the answer starts as `default`, for the user to edit; a pipe's answer
        is the next line as written, whatever `default` is.
        """
        ...

    def show(self, text: str) -> None:
        """Print `text` (one or more lines) at once; safe from any thread."""
        ...

    def interrupt(self) -> None:
        """Make the current or next ask() raise Interrupted; safe from any thread."""
        ...


class TerminalConsole:
    """A terminal: prompt_toolkit line editing and history.

    Use it inside `prompt_toolkit.patch_stdout.patch_stdout()`: then what show() prints from
    another thread appears above the prompt, and the line being typed stays intact below it.
    """

    def __init__(self) -> None:
        self._session: PromptSession[str] = PromptSession()
        self._lock = threading.Lock()
        self._interrupted = False  # guarded by _lock
        self._loop: AbstractEventLoop | None = None  # the running prompt's loop; by _lock

    @property
    def interactive(self) -> bool:
        return True

    def ask(self, prompt: str, default: str = "") -> str:
        try:
            return self._session.prompt(prompt, default=default, pre_run=self._prompt_started)
        finally:
            with self._lock:
                self._loop = None

    def show(self, text: str) -> None:
        print(text, flush=True)

    def interrupt(self) -> None:
        with self._lock:
            self._interrupted = True
            loop = self._loop
        if loop is not None:
            # The prompt may have just finished and closed its loop: then the next ask()
            # sees the flag instead.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._exit_prompt)

    def _prompt_started(self) -> None:
        # Runs inside the prompt's event loop once the application is running, so an
        # interrupt() either sees this loop or was flagged before: none is missed.
        with self._lock:
            self._loop = get_running_loop()
            interrupted = self._interrupted
        if interrupted:
            self._exit_prompt()

    def _exit_prompt(self) -> None:
        app = self._session.app
        if app.is_running and app.future is not None and not app.future.done():
            app.exit(exception=Interrupted())


class PipeConsole:
    """Plain text on stdout, answers read line by line from a file descriptor (stdin).

    Output is flushed line by line so that a program driving the client sees it at once. A
    prompt is printed like input() does; the answer read is echoed after it, so the output
    reads as a transcript. A line printed while a prompt is open goes on a line of its own and
    the prompt is printed again below it.
    """

    def __init__(self, fd: int | None = None, out: TextIO | None = None) -> None:
        self._fd = sys.stdin.fileno() if fd is None else fd
        self._out = out if out is not None else sys.stdout
        self._lock = threading.Lock()
        self._open_prompt: str | None = None  # printed, not yet answered; guarded by _lock
        self._buffer = b""  # read from the fd, not yet returned as a line (main thread only)
        self._eof = False
        self._wake_reader, self._wake_writer = socket.socketpair()
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._wake_reader, selectors.EVENT_READ)
        try:
            self._selector.register(self._fd, selectors.EVENT_READ)
            self._selectable = True
        except (PermissionError, ValueError):
            # A regular file (chat-client < script.txt) cannot be polled, and need not be:
            # reading it never blocks.
            self._selectable = False

    def close(self) -> None:
        self._selector.close()
        self._wake_reader.close()
        self._wake_writer.close()

    @property
    def interactive(self) -> bool:
        return False

    def ask(self, prompt: str, default: str = "") -> str:
        with self._lock:
            self._out.write(prompt)
            self._out.flush()
            self._open_prompt = prompt
        try:
            line = self._readline()
        except BaseException:
            self._close_prompt("\n")
            raise
        self._close_prompt(line + "\n")
        return line

    def show(self, text: str) -> None:
        with self._lock:
            if self._open_prompt is not None:
                self._out.write("\n" + text + "\n" + self._open_prompt)
            else:
                self._out.write(text + "\n")
            self._out.flush()

    def interrupt(self) -> None:
        with contextlib.suppress(OSError):  # closed already: nobody is waiting
            self._wake_writer.send(b"\0")

    def _close_prompt(self, tail: str) -> None:
        with self._lock:
            self._out.write(tail)
            self._out.flush()
            self._open_prompt = None

    def _readline(self) -> str:
        if self._is_interrupted():
            raise Interrupted
        while (newline := self._buffer.find(b"\n")) < 0:
            if self._eof:
                if self._buffer:  # a last line without its newline still counts
                    newline = len(self._buffer)
                    break
                raise EOFError
            self._wait_readable()
            chunk = os.read(self._fd, STDIN_READ_BYTES)
            if chunk:
                self._buffer += chunk
            else:
                self._eof = True
        line, self._buffer = self._buffer[:newline], self._buffer[newline + 1 :]
        return line.decode("utf-8", errors="replace").removesuffix("\r")

    def _wait_readable(self) -> None:
        if not self._selectable:
            if self._is_interrupted():
                raise Interrupted
            return
        # No timeout: the wake-up path is interrupt(), and a Ctrl-C interrupts select().
        ready = self._selector.select()
        if any(key.fileobj is self._wake_reader for key, _ in ready):
            raise Interrupted

    def _is_interrupted(self) -> bool:
        # The wake-up byte is only peeked at, never consumed: once the connection is lost,
        # every later ask() is interrupted too.
        try:
            return bool(self._wake_reader.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
        except BlockingIOError:
            return False
