"""The event printer: a thread that shows what arrives the moment it arrives.

It drains the connection's event queue into the console while the main thread sits at a prompt
(or waits for a reply), so receiving never waits for the menu. When the queue ends (the socket
closed) without the client having asked for it, it says so and interrupts the prompt.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Final

from cli_client.connection import BadLine, ServerConnection
from cli_client.console import Console
from cli_client.render import render_bye, render_event
from tcp_server.protocol import Bye

log = logging.getLogger(__name__)

# The end of the stream (the sentinel None) is the printer's wake-up path; this timeout is only
# a backstop so that stop() is honoured even if that sentinel were never to come.
IDLE_TIMEOUT_S: Final = 5.0
JOIN_TIMEOUT_S: Final = 5.0


class EventPrinter:
    """Shows the events of `connection` on `console` from a thread named "printer"."""

    def __init__(
        self,
        connection: ServerConnection,
        console: Console,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._connection = connection
        self._console = console
        self._clock = clock
        self._closing = threading.Event()  # the client itself is ending the connection
        self._stop = threading.Event()
        self._lost = threading.Event()
        self._thread = threading.Thread(target=self._run, name="printer")

    @property
    def lost(self) -> bool:
        """Whether the connection ended without the client asking for it."""
        return self._lost.is_set()

    def start(self) -> None:
        self._thread.start()

    def expect_close(self) -> None:
        """The client is saying goodbye: the end of the stream is then not a lost connection."""
        self._closing.set()

    def stop(self) -> None:
        """Wait for the thread to show what is queued and end (the connection must be closed)."""
        self._stop.set()
        self._thread.join(JOIN_TIMEOUT_S)
        if self._thread.is_alive():
            log.warning("the printer thread did not stop")

    def _run(self) -> None:
        try:
            self._drain()
        except BrokenPipeError:  # whoever read our output has gone: end the session
            self._lost.set()
            self._console.interrupt()
        except Exception:  # a bug in rendering must not leave the client without a printer
            log.exception("printer failed")
            self._lost.set()
            self._console.interrupt()

    def _drain(self) -> None:
        bye: Bye | None = None
        while True:
            try:
                item = self._connection.events.get(timeout=IDLE_TIMEOUT_S)
            except queue.Empty:
                if self._stop.is_set():
                    return
                continue
            if item is None:
                break
            if isinstance(item, BadLine):
                self._console.show(f"Ignored a malformed line from the server: {item.problem}")
                continue
            if isinstance(item, Bye) and item.id is None:
                bye = item
                continue  # said below, together with the end of the connection
            text = render_event(item, self._clock())
            if text is not None:
                self._console.show(text)
        if self._closing.is_set():
            return
        self._lost.set()
        if bye is not None:
            self._console.show(render_bye(bye))
        self._console.show("Connection to the server lost.")
        self._console.interrupt()
