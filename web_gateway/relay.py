"""One browser's websocket relayed to one core connection.

Each direction is a `Pipe`: a bounded queue (the core's Outbox) and the one thread that writes
its socket, taking everything queued as one batch. The relay has two, used the same way:

- up (`relay-up-N`): lines for the core. The request thread reads the browser
  (web_gateway.websocket.BrowserSocket), checks each frame (web_gateway.frames) and queues
  its line, or queues the gateway's error object for the browser instead;
- down (`relay-down-N`): websocket frames for the browser. `relay-core-N` reads the core,
  splits it into lines with the core's LineBuffer and queues one text frame per line; pongs,
  pings (RelayRegistry's pinger) and the closing frames go the same way.

So every socket has exactly one writer, and no reader ever blocks on a write: a put() that
does not fit the budget (`max_queue_bytes`) means the peer stopped reading, and the relay
drops it: a browser that does not read what it is sent is cut (its user shows away), and a
core that does not read the browser's requests ends the websocket with `unavailable`. A
browser that reads is never dropped: its writer keeps emptying the queue.

Under gunicorn's gevent worker these threads are greenlets (the worker monkey-patches
`threading` and `socket`), so an open websocket costs no system thread at all; in the tests'
threaded werkzeug server the same code runs on threads.

Every wait has a wake-up path: closing a queue wakes its writer, shutting down a socket wakes
its reader, and a close frame the browser does not answer within `close_timeout` is followed
by a shutdown of its socket.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from tcp_server.lograte import LogRate
from tcp_server.outbox import Outbox
from tcp_server.protocol import (
    LineBuffer,
    ProtocolError,
    Proxy,
    encode_request,
    format_address,
)
from web_gateway.frames import UNAVAILABLE, error_frame, frame_to_line
from web_gateway.websocket import BrowserSocket, close_frame, ping_frame, text_frame

log = logging.getLogger(__name__)

RECV_BYTES: Final = 65_536
# Lines from the core may be longer than a request line: a users list of 1,000 users is about
# 100 KB. This only bounds memory against a broken core; no real line comes near it.
MAX_CORE_LINE_BYTES: Final = 16 * 1_048_576

# Websocket close codes (RFC 6455, section 7.4.1) the gateway uses.
CLOSE_NORMAL: Final = 1000  # the browser sent exit and the core said bye
CLOSE_GOING_AWAY: Final = 1001  # the core closed the connection, or the gateway is stopping
CLOSE_POLICY: Final = 1008  # too many websockets from the browser's address
CLOSE_TRY_LATER: Final = 1013  # the core is unreachable or not keeping up, or the gateway full

# Connection lines ("relayed", "closed") per browser address: a few at once, then one a
# second, so that a connect flood from one address cannot fill the disk.
CONNECTION_LOG_RATE: Final = LogRate(every=1.0, burst=5)


@dataclass(frozen=True, slots=True)
class Ending:
    """How a websocket ends for the browser: an optional error object, then a close frame."""

    code: int
    reason: str  # the close frame's; at most 123 bytes of UTF-8 (RFC 6455): keep it short
    error: str | None = None  # the message of an "unavailable" error object

    def frames(self) -> bytes:
        first = b"" if self.error is None else text_frame(
            error_frame(UNAVAILABLE, self.error).encode("utf-8"))
        return first + close_frame(self.code, self.reason)


BYE = Ending(CLOSE_NORMAL, "bye")
CORE_CLOSED = Ending(CLOSE_GOING_AWAY, "the chat server closed the connection",
                     "the chat server closed the connection")
GATEWAY_STOPPING = Ending(CLOSE_GOING_AWAY, "the web gateway is shutting down",
                          "the web gateway is shutting down")
CORE_STALLED = Ending(CLOSE_TRY_LATER, "the chat server is not keeping up",
                      "the chat server is not keeping up; try again later")
CORE_UNREACHABLE = Ending(CLOSE_TRY_LATER, "the chat server is unreachable",
                          "the chat server is unreachable; try again later")


def peer_name(address: tuple[str, int]) -> str:
    return format_address(*address)


def end_websocket(browser: BrowserSocket, ending: Ending, close_timeout: float) -> None:
    """Tell a browser that has no relay why, and close: for refusals before relaying.

    Waits at most `close_timeout` for the browser to answer the close frame.
    """
    browser.note_close_sent()
    try:
        browser.sock.settimeout(close_timeout)
        browser.sock.sendall(ending.frames())
        deadline = time.monotonic() + close_timeout
        while time.monotonic() < deadline and not browser.read().closing:
            pass
    except OSError as error:  # gone, or silent (a timeout): it is cut either way
        log.debug("websocket ended before its close: %r", error)
    finally:
        browser.detach()
        with contextlib.suppress(OSError):
            browser.sock.shutdown(socket.SHUT_RDWR)


class Pipe:
    """One direction of a relay: a bounded queue and the thread that is its socket's only
    writer. put() never blocks; the writer sends what is queued in one sendall() per batch."""

    def __init__(self, name: str, sock: socket.socket, max_bytes: int,
                 on_end: Callable[[], None] | None = None) -> None:
        """`on_end` runs in the writer after the last batch (or a failed write)."""
        self._sock = sock
        self._queue = Outbox(max_bytes)
        self._on_end = on_end
        self.thread = threading.Thread(target=self._write, name=name)

    def put(self, data: bytes) -> bool:
        """Queue `data` for the socket. False: the budget is full (the peer does not read)."""
        return self._queue.put(data)

    def close(self, final: bytes | None = None, *, discard: bool = False) -> bool:
        """Write what is queued (or drop it: `discard`), then `final`, then end. The first
        close wins: False for later ones."""
        return self._queue.close(final, discard=discard)

    def _write(self) -> None:
        try:
            while (batch := self._queue.take()) is not None:
                self._sock.sendall(batch)
        except OSError as error:  # the peer is gone: its reader sees it too
            log.debug("%s: write ended: %r", self.thread.name, error)
            self._queue.close(discard=True)
        except Exception:
            log.exception("%s failed", self.thread.name)
            self._queue.close(discard=True)
        finally:
            if self._on_end is not None:
                self._on_end()


class Relay:
    """Relays one websocket to one connected core socket; run() until both have ended."""

    def __init__(
        self,
        browser: BrowserSocket,
        core: socket.socket,
        *,
        peer: tuple[str, int],
        secret: str,
        number: int,
        max_queue_bytes: int,
        close_timeout: float,
    ) -> None:
        self._browser = browser
        self._core = core
        self.browser = peer
        self.number = number
        self._close_timeout = close_timeout
        # _lock guards _sockets_closed against the shutdowns other threads do (stop, drop):
        # a closed socket's descriptor may be reused at once, so no shutdown after close.
        self._lock = threading.Lock()
        self._sockets_closed = False
        self._exit_sent = False  # the browser sent exit: the core's close is the normal end
        self._browser_done = threading.Event()  # the request thread stopped reading it
        # Keep-alive, used by the registry's pinger only (and _pong_seen set by the reader).
        self._pong_seen = True
        self._unanswered_since: float | None = None
        # The core connection ends in _finish(), once the browser is done: up needs no on_end.
        self._up = Pipe(f"relay-up-{number}", core, max_queue_bytes)
        self._down = Pipe(f"relay-down-{number}", browser.sock, max_queue_bytes,
                          self._down_ended)
        self._core_reader = threading.Thread(target=self._read_core, name=f"relay-core-{number}")
        # Kernel send buffers, which Linux grows to megabytes by itself, are capped at the
        # same budget: a peer that does not read holds at most about twice max_queue_bytes.
        for sock in (core, browser.sock):
            with contextlib.suppress(OSError):  # a browser gone already: the reader notices
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, max_queue_bytes)
        # The proxy request goes first, before anything the browser sends.
        self._up.put(encode_request(Proxy(secret=secret, ip=peer[0], port=peer[1])))

    @property
    def peer(self) -> str:
        return peer_name(self.browser)

    # --- called from any thread ------------------------------------------------------------

    def stop(self, ending: Ending = GATEWAY_STOPPING) -> None:
        """End the relay: the browser gets `ending` after what is queued. Idempotent; blocks
        on no I/O (the registry calls it for every websocket at once)."""
        self._close_browser(ending)
        self._shutdown(self._core)

    def abort(self, reason: str) -> None:
        """Cut both connections now, for a browser that cannot even be told. Idempotent."""
        if self._down.close(discard=True):
            log.warning("websocket %d from %s dropped: %s", self.number, self.peer, reason)
        self._shutdown(self._browser.sock)
        self._shutdown(self._core)

    def keep_alive(self, now: float, pong_timeout: float) -> None:
        """The pinger's turn: drop a browser silent for `pong_timeout`, else ping it.

        A browser that vanished without closing (a laptop lid, a lost network) is found this
        way: its core connection then ends without exit, so its user shows away.
        """
        if self._pong_seen:
            self._unanswered_since = None
        elif self._unanswered_since is not None and now - self._unanswered_since >= pong_timeout:
            self.abort(f"no pong for {now - self._unanswered_since:.0f} s")
            return
        if self._unanswered_since is None:
            self._unanswered_since = now
        self._pong_seen = False
        if not self._down.put(ping_frame()):
            self.abort("the browser is not reading what it is sent")

    # --- the request thread: reads the browser ---------------------------------------------

    def run(self) -> None:
        """Relay until the browser and the core are both done; every thread is joined."""
        if CONNECTION_LOG_RATE.allow(self.browser[0]) is not None:
            log.info("websocket %d from %s relayed", self.number, self.peer)
        try:
            for thread in (self._up.thread, self._down.thread, self._core_reader):
                thread.start()  # RuntimeError when the system has no thread to spare
            self._read_browser()
        except Exception:
            log.exception("websocket %d from %s: unexpected error", self.number, self.peer)
            self.abort("internal error")
        finally:
            self._finish()
        if CONNECTION_LOG_RATE.allow(self.browser[0]) is not None:
            log.info("websocket %d from %s closed", self.number, self.peer)

    def _read_browser(self) -> None:
        while True:
            try:
                got = self._browser.read()
            except OSError as error:
                log.debug("websocket %d: browser read ended: %r", self.number, error)
                return
            for reply in got.replies:
                if not self._down.put(reply):
                    self.abort("the browser is not reading what it is sent")
            if got.pong:
                self._pong_seen = True
            self._relay_frames(got.messages)
            if got.closing:
                if got.close_reply is not None:
                    self._browser.note_close_sent()
                    self._down.close(got.close_reply)
                if got.drain:  # until the browser stops, or _down_ended() cuts it
                    try:
                        self._browser.drain()
                    except OSError as error:
                        log.debug("websocket %d: browser drain ended: %r", self.number, error)
                return

    def _relay_frames(self, frames: list[str | bytes]) -> None:
        lines: list[bytes] = []
        for frame in frames:
            try:
                upstream = frame_to_line(frame)
            except ProtocolError as error:
                log.debug("websocket %d from %s: refused %s: %s",
                          self.number, self.peer, error.code, error.message)
                reply = error_frame(error.code, error.message).encode("utf-8")
                if not self._down.put(text_frame(reply)):
                    self.abort("the browser is not reading what it is sent")
                continue
            if upstream.type == "exit":
                self._exit_sent = True
            lines.append(upstream.line)
        # One write for every frame at hand: a system call per batch instead of per frame.
        if lines and not self._up.put(lines[0] if len(lines) == 1 else b"".join(lines)):
            log.warning("websocket %d from %s: the core is not reading; closing",
                        self.number, self.peer)
            self._up.close(discard=True)
            self.stop(CORE_STALLED)

    def _finish(self) -> None:
        self._browser_done.set()
        self._browser.detach()
        # What the browser sent before leaving still reaches the core (a message, an exit);
        # then the core connection ends, and the others see the user away or left.
        self._up.close()
        self._join(self._up.thread)
        self._shutdown(self._core)
        self._join(self._core_reader)
        # The browser's last frames (an ending, a close reply) go out before its socket is
        # shut: a queued ending is written first, and a stuck writer is cut by _join().
        self._down.close(discard=True)  # a no-op when an ending was queued before
        self._join(self._down.thread)
        self._shutdown(self._browser.sock)
        with self._lock:
            self._sockets_closed = True
            self._core.close()

    def _join(self, thread: threading.Thread) -> None:
        if thread.ident is None:  # never started
            return
        # Each thread is woken by its queue's close or its socket's shutdown; a second chance
        # after cutting both sockets bounds the wait even if a peer stopped reading.
        thread.join(2 * self._close_timeout)
        if thread.is_alive():
            log.warning("%s is stuck; cutting the connections", thread.name)
            self.abort("stuck")
            thread.join(self._close_timeout)
            if thread.is_alive():
                log.error("%s did not stop", thread.name)

    # --- relay-core-N: reads the core, one frame per line --------------------------------

    def _read_core(self) -> None:
        lines = LineBuffer(MAX_CORE_LINE_BYTES)
        try:
            while data := self._core.recv(RECV_BYTES):
                frames = []
                for line in lines.feed(data):
                    if isinstance(line, ProtocolError):
                        log.error("websocket %d: the core sent an over-long line; skipped",
                                  self.number)
                        continue
                    frames.append(text_frame(line))  # the core's lines are UTF-8 JSON
                # Every line of one read in one put: one write to the browser for them all.
                if frames and not self._down.put(b"".join(frames)):
                    self.abort("the browser is not reading what it is sent")
                    return
        except OSError as error:
            log.debug("websocket %d: core read ended: %r", self.number, error)
        except Exception:
            log.exception("websocket %d: core reader failed", self.number)
        finally:
            self._core_ended()

    def _core_ended(self) -> None:
        if self._browser_done.is_set():
            self._down.close()
        elif self._close_browser(BYE if self._exit_sent else CORE_CLOSED):
            log.info("websocket %d from %s: the core closed the connection",
                     self.number, self.peer)

    # --- the writers' ends ----------------------------------------------------------------

    def _down_ended(self) -> None:
        # After our close frame the browser answers with its own, which ends the request
        # thread's reading; one that does not answer is cut after close_timeout.
        if not self._browser_done.wait(self._close_timeout):
            self._shutdown(self._browser.sock)

    # --- helpers --------------------------------------------------------------------------

    def _close_browser(self, ending: Ending) -> bool:
        """Queue `ending` after what the browser is sent; False if it was ending already."""
        self._browser.note_close_sent()
        return self._down.close(ending.frames())

    def _shutdown(self, sock: socket.socket) -> None:
        with self._lock, contextlib.suppress(OSError):  # OSError: not connected any more
            if not self._sockets_closed:
                sock.shutdown(socket.SHUT_RDWR)
