"""One browser's websocket relayed to one core connection.

Each direction is a `Pipe`: a bounded queue (the core's Outbox) and its socket's writing. The
relay has two, used the same way:

- up: lines for the core. The request thread reads the browser
  (web_gateway.websocket.BrowserSocket), checks each frame (web_gateway.frames) and queues
  its line, or queues the gateway's error object for the browser instead;
- down: websocket frames for the browser. `relay-core-N` reads the core, splits it into lines
  with the core's LineBuffer and queues one text frame per line; pongs, pings (RelayRegistry's
  pinger) and the closing frames go the same way.

Whoever queues writes the socket at once while it takes everything (a non-blocking send: no
hand-over, no switch); a writer (`relay-up-N`, `relay-down-N`) runs only while the socket
would block, until it has taken what is queued. So every socket has exactly one writer at any
moment, and no reader ever blocks on a write: a put() that does not fit the budget
(`max_queue_bytes`) while the socket takes nothing means the peer stopped reading, and the
relay drops it: a browser that does not read what it is sent is cut (its user shows away),
and a core that does not read the browser's requests ends the websocket with `unavailable`.
A browser that reads is never dropped: its socket keeps taking what is queued.

The error objects a browser earns, the gateway's refusals of its frames (up) and the core's
errors for its requests (down), are counted against its `ErrorBudget`: past it the browser gets
`unavailable` and 1008, its core connection ends, and nothing more it sends goes anywhere.

Under gunicorn's gevent worker these threads are greenlets (the worker monkey-patches
`threading` and `socket`), so an open websocket costs two greenlets (its request's and its
core reader) and no system thread; in the tests' threaded werkzeug server the same code runs
on threads.

Every wait has a wake-up path: shutting down a socket wakes its reader and its writer, a
writer gives up what the socket has not taken within `close_timeout` of the close, and a close
frame the browser does not answer within `close_timeout` is followed by a shutdown of its
socket.
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from tcp_server.addresses import address_group
from tcp_server.lograte import LogRate, held_back
from tcp_server.outbox import Flushed, Outbox, Writing
from tcp_server.protocol import (
    LineBuffer,
    ProtocolError,
    Proxy,
    encode_request,
    format_address,
)
from web_gateway.budget import ErrorBudget
from web_gateway.frames import (
    CORE_REFUSED_SECRET,
    CORE_WELCOME_START,
    UNAVAILABLE,
    browser_errors,
    error_frame,
    frame_to_line,
)
from web_gateway.sockets import NoWaitSocket, SocketReader
from web_gateway.websocket import BrowserSocket, close_frame, ping_frame, text_frame

log = logging.getLogger(__name__)

RECV_BYTES: Final = 65_536
NEWLINE: Final = 0x0A
# Lines from the core may be longer than a request line: a users list of 1,000 users is about
# 100 KB. This only bounds memory against a broken core; no real line comes near it.
MAX_CORE_LINE_BYTES: Final = 16 * 1_048_576
# A read of 64 KB can hold 10,000 tiny frames, 60 ms of checking them (bad ones, each with
# its error object): the reader lets the others run after this many (about 2 ms; see
# turn_taker), so that a flood of them from one browser does not stall every other one.
FRAMES_PER_TURN: Final = 256

# Websocket close codes (RFC 6455, section 7.4.1) the gateway uses.
CLOSE_NORMAL: Final = 1000  # the browser sent exit and the core said bye
CLOSE_GOING_AWAY: Final = 1001  # the core closed the connection, or the gateway is stopping
CLOSE_POLICY: Final = 1008  # too many websockets from its address, or too many errors
CLOSE_TRY_LATER: Final = 1013  # the core is unreachable or not keeping up, or the gateway full

# Connection lines ("relayed", "closed") per browser address: a few at once, then one a
# second, so that a connect flood from one address cannot fill the disk.
CONNECTION_LOG_RATE: Final = LogRate(every=1.0, burst=5)
# The core refusing the gateway's proxy request: every websocket would be refused alike (a
# CHAT_GATEWAY_SECRET that is not the core's), so said once a minute, for the whole gateway.
REFUSED_SECRET_LOG_RATE: Final = LogRate(every=60.0)
BROWSER_NOT_READING: Final = "the browser is not reading what it is sent"


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
TOO_MANY_ERRORS = Ending(CLOSE_POLICY, "too many refused requests",
                         "too many refused requests in a short time; reload the page")
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
    """One direction of a relay: a bounded queue (the core's Outbox) and its socket's writing.

    Whoever queues writes at once, with a non-blocking send, while the socket takes
    everything: no hand-over to another thread, no switch. Only when the socket would block
    does a writer (`relay-up-N`, `relay-down-N`: a greenlet under gevent) take over, waiting
    until the socket has room and writing again, and it ends once the queue is empty. The
    Outbox's state says who writes (its DUE state is held by one party at a time), so the
    socket has one writer at any moment. put() never blocks and refuses data over the budget
    only while the socket is not taking any (the peer stopped reading).
    """

    __slots__ = ("_close_timeout", "_lock", "_outbox", "_sock", "_writer", "name")

    def __init__(self, name: str, sock: socket.socket, max_bytes: int,
                 close_timeout: float, on_overflow: Callable[[], None] | None = None) -> None:
        """`close_timeout`: after close(), how long what is unsent may wait for room.
        `on_overflow`: called when the socket stops taking data with more than `max_bytes`
        queued (the peer does not read), also when nothing more is put after that."""
        self.name = name
        self._sock = sock
        self._close_timeout = close_timeout
        self._outbox = Outbox(max_bytes, NoWaitSocket(sock), self, on_overflow=on_overflow)
        # _lock guards _writer, the thread that writes while the socket would block (if any).
        self._lock = threading.Lock()
        self._writer: threading.Thread | None = None

    def put(self, data: bytes) -> bool:
        """Queue `data` and write it if the socket takes it. False: over the budget while the
        socket takes nothing (the peer does not read); not queued."""
        return self._outbox.put(data)

    def close(self, final: bytes | None = None, *, discard: bool = False) -> bool:
        """Write what is queued, then `final`, then end; what the socket has not taken
        within close_timeout is cut off. `discard`: drop what is queued, and if the socket
        takes nothing, cut it off now (shut down, which also wakes its reader). The first
        close wins: False for later ones."""
        deadline = time.monotonic() + (0.0 if discard else self._close_timeout)
        if not self._outbox.close(final, discard=discard, deadline=deadline):
            return False
        if discard and self._outbox.state is Writing.BLOCKED:
            self._outbox.cut_off()  # the waiting writer wakes to the shutdown and ends
        return True

    def join(self, timeout: float) -> bool:
        """Wait for the writer, if one is running; False if it is still running."""
        with self._lock:
            writer = self._writer
        if writer is None:
            return True
        writer.join(timeout)
        return not writer.is_alive()

    # --- the Outbox's Scheduler: called by put() and close(), outside the Outbox's lock -------

    def schedule(self, outbox: Outbox) -> bool:
        if self._flush() is Flushed.BLOCKED:
            # Started under the lock: join() must never see a writer not started yet (under
            # gevent start() switches to other greenlets, a relay's _finish() among them).
            with self._lock:
                if self._writer is not None:  # it is waiting for room, and sees the change
                    return True
                writer = threading.Thread(target=self._write, name=self.name)
                try:
                    writer.start()
                except RuntimeError:  # the system has no thread to spare: nothing will write
                    self._outbox.cut_off()
                    raise
                self._writer = writer
        return True

    def lag(self, change: int) -> None:
        """Over the budget with a socket that takes data: the one party writing it (another
        thread, in the threaded test server) empties the queue at once; nothing to do."""

    # --- helpers ------------------------------------------------------------------------------

    def _flush(self) -> Flushed:
        while (result := self._outbox.flush()) is Flushed.AGAIN:
            pass
        return result

    def _write(self) -> None:
        """The writer while the socket would block: wait for room, write, until it is empty."""
        try:
            while True:
                if self._wait_for_room():
                    self._outbox.writable()
                    if self._flush() is Flushed.BLOCKED:
                        continue
                elif self._outbox.closed and time.monotonic() >= self._outbox.deadline:
                    self._outbox.cut_off()  # shuts the socket down: its reader sees the end
                with self._lock:  # a put() that blocks from now on starts another writer
                    if self._outbox.state is not Writing.BLOCKED:
                        self._writer = None
                        return
        except Exception:
            log.exception("%s failed", self.name)
            self._outbox.cut_off()
            with self._lock:
                self._writer = None

    def _wait_for_room(self) -> bool:
        """Wait until the socket can take data, at most until the close deadline (or
        close_timeout, to look at the deadline of a close that came meanwhile)."""
        timeout = self._close_timeout
        if self._outbox.closed:
            timeout = max(0.0, self._outbox.deadline - time.monotonic())
        poller = select.poll()  # gevent's under gevent: waits in the event loop
        try:
            poller.register(self._sock.fileno(), select.POLLOUT)
        except (OSError, ValueError):  # closed meanwhile (ValueError: fd -1)
            return True  # the send fails and ends the outbox
        return bool(poller.poll(timeout * 1000))


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
        errors: ErrorBudget,
        on_signed_in: Callable[[], None] | None = None,
    ) -> None:
        """`errors`: the error objects (the gateway's and the core's) the browser may earn
        before its websocket is closed (1008); `on_signed_in`: called (by the core's reader)
        when the core first welcomes the browser."""
        self._browser = browser
        self._core = core
        self.browser = peer
        self.number = number
        self._close_timeout = close_timeout
        self._errors = errors
        self._on_signed_in = on_signed_in  # None once called
        # _lock guards _sockets_closed against the shutdowns other threads do (stop, drop):
        # a closed socket's descriptor may be reused at once, so no shutdown after close.
        self._lock = threading.Lock()
        self._sockets_closed = False
        self._exit_sent = False  # the browser sent exit: the core's close is the normal end
        self._browser_done = threading.Event()  # the request thread stopped reading it
        # Keep-alive, used by the registry's pinger only (and _pong_seen set by the reader).
        self._pong_seen = True
        self._unanswered_since: float | None = None
        # A put over the budget is accepted while the socket still takes data (the peer may be
        # reading): the writer that then finds it full drops the peer, even if nothing more
        # is put (a browser sent 200 KB at once, then nothing, kept it until the next ping).
        self._up = Pipe(f"relay-up-{number}", core, max_queue_bytes, close_timeout,
                        on_overflow=self._core_not_reading)
        self._down = Pipe(f"relay-down-{number}", browser.sock, max_queue_bytes, close_timeout,
                          on_overflow=lambda: self.abort(BROWSER_NOT_READING))
        self._core_reader = threading.Thread(target=self._read_core, name=f"relay-core-{number}")
        self._take_turn = turn_taker()
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
            self.abort(BROWSER_NOT_READING)

    # --- the request thread: reads the browser ---------------------------------------------

    def run(self) -> None:
        """Relay until the browser and the core are both done; every thread is joined."""
        if CONNECTION_LOG_RATE.allow(address_group(self.browser[0])) is not None:
            log.info("websocket %d from %s relayed", self.number, self.peer)
        try:
            self._core_reader.start()  # RuntimeError when the system has no thread to spare
            self._read_browser()
        except Exception:
            log.exception("websocket %d from %s: unexpected error", self.number, self.peer)
            self.abort("internal error")
        finally:
            self._finish()
        if CONNECTION_LOG_RATE.allow(address_group(self.browser[0])) is not None:
            log.info("websocket %d from %s closed", self.number, self.peer)

    def _read_browser(self) -> None:
        while True:
            try:
                got = self._browser.read()
            except OSError as error:
                log.debug("websocket %d: browser read ended: %r", self.number, error)
                return
            # Every pong of a read in one put: one write, not one per ping of a flood.
            if got.replies and not self._down.put(b"".join(got.replies)):
                self.abort(BROWSER_NOT_READING)
            if got.pong:
                self._pong_seen = True
            self._relay_frames(got.messages)
            if got.closing:
                if got.close_reply is not None:
                    self._browser.note_close_sent()
                    self._down.close(got.close_reply)
                if got.drain:  # until the browser closes too, at most close_timeout
                    try:
                        self._browser.drain(self._close_timeout)
                    except OSError as error:
                        log.debug("websocket %d: browser drain ended: %r", self.number, error)
                return
            if self._browser.filled:
                self._take_turn()

    def _relay_frames(self, frames: list[str | bytes]) -> None:
        lines: list[bytes] = []
        refusals: list[bytes] = []
        over_budget = False
        for index, frame in enumerate(frames, 1):
            if not index % FRAMES_PER_TURN:  # a read of thousands of tiny frames: share
                self._take_turn()
            try:
                upstream = frame_to_line(frame)
            except ProtocolError as error:
                log.debug("websocket %d from %s: refused %s: %s",
                          self.number, self.peer, error.code, error.message)
                if not self._errors.spend(1):
                    over_budget = True  # nothing after it is relayed or answered
                    break
                reply = error_frame(error.code, error.message).encode("utf-8")
                refusals.append(text_frame(reply))
                continue
            if upstream.type == "exit":
                self._exit_sent = True
            lines.append(upstream.line)
        # The errors of a read in one put too: a flood of bad frames costs one write a read.
        if refusals and not self._down.put(b"".join(refusals)):
            self.abort(BROWSER_NOT_READING)
        # One write for every frame at hand: a system call per batch instead of per frame.
        if lines and not self._up.put(lines[0] if len(lines) == 1 else b"".join(lines)):
            self._core_not_reading()
        if over_budget:
            self._over_error_budget()

    def _core_not_reading(self) -> None:
        """The core took nothing with more than the budget queued for it: end the websocket."""
        log.warning("websocket %d from %s: the core is not reading; closing",
                    self.number, self.peer)
        self.stop(CORE_STALLED)  # first: the browser is told why before the core ends
        self._up.close(discard=True)

    def _finish(self) -> None:
        self._browser_done.set()
        self._browser.detach()
        # What the browser sent before leaving still reaches the core (a message, an exit);
        # then the core connection ends, and the others see the user away or left.
        self._up.close()
        self._join(self._up)
        self._shutdown(self._core)
        self._join(self._core_reader)
        # The browser's last frames (an ending, a close reply) go out before its socket is
        # shut: a queued ending is written first, and a stuck writer is cut by _join().
        self._down.close(discard=True)  # a no-op when an ending was queued before
        self._join(self._down)
        self._shutdown(self._browser.sock)
        with self._lock:
            self._sockets_closed = True
            self._core.close()

    def _join(self, waited: threading.Thread | Pipe) -> None:
        """Wait for the core reader, or for a pipe's writer if one is running."""
        # Each is woken by its queue's close deadline or its socket's shutdown; a second
        # chance after cutting both sockets bounds the wait even if a peer stopped reading.
        if _joined(waited, 2 * self._close_timeout):
            return
        log.warning("websocket %d: %s is stuck; cutting the connections", self.number,
                    waited.name)
        self.abort("stuck")
        if not _joined(waited, self._close_timeout):
            log.error("websocket %d: %s did not stop", self.number, waited.name)

    # --- relay-core-N: reads the core, one frame per line --------------------------------

    def _read_core(self) -> None:
        buffer = LineBuffer(MAX_CORE_LINE_BYTES)
        reader = SocketReader(self._core, RECV_BYTES)
        try:
            while data := reader.recv():
                if data[-1] == NEWLINE and not buffer.in_line and b"\r" not in data:
                    # The usual read: whole lines, none over the limit (a read is far
                    # shorter), so the LineBuffer would return them as they are.
                    lines = data[:-1].split(b"\n")
                    errors = browser_errors(data)
                else:
                    lines = self._whole_lines(buffer.feed(data))
                    errors = sum(browser_errors(line) for line in lines)
                if errors and any(line.startswith(CORE_REFUSED_SECRET) for line in lines):
                    self._log_refused_secret()
                if self._on_signed_in is not None and any(
                        line.startswith(CORE_WELCOME_START) for line in lines):
                    self._on_signed_in()
                    self._on_signed_in = None
                over_budget = False
                if errors and (within := self._errors.spend(errors)) < errors:
                    # The browser is told the errors its budget covers, then why it is closed.
                    lines = lines[:_error_line(lines, within)]
                    over_budget = True
                # Every line of one read in one put: one write to the browser for them all.
                frames = [text_frame(line) for line in lines]  # the core's lines are UTF-8
                if frames and not self._down.put(
                        frames[0] if len(frames) == 1 else b"".join(frames)):
                    self.abort(BROWSER_NOT_READING)
                    return
                if over_budget:
                    self._over_error_budget()  # the core connection ends: so does this loop
                if reader.filled:
                    self._take_turn()
        except OSError as error:
            log.debug("websocket %d: core read ended: %r", self.number, error)
        except Exception:
            log.exception("websocket %d: core reader failed", self.number)
        finally:
            self._core_ended()

    def _whole_lines(self, lines: list[bytes | ProtocolError]) -> list[bytes]:
        whole = []
        for line in lines:
            if isinstance(line, ProtocolError):
                log.error("websocket %d: the core sent an over-long line; skipped", self.number)
                continue
            whole.append(line)
        return whole

    def _core_ended(self) -> None:
        if self._browser_done.is_set():
            self._down.close()
            return
        if self._close_browser(BYE if self._exit_sent else CORE_CLOSED):
            log.info("websocket %d from %s: the core closed the connection",
                     self.number, self.peer)
        # The browser has been sent its ending (here, or by stop() or abort(), which also
        # ended the core connection): it answers with its close frame, which ends the request
        # thread's reading; one that does not answer within close_timeout is cut.
        if not self._browser_done.wait(self._close_timeout):
            self._shutdown(self._browser.sock)

    # --- helpers --------------------------------------------------------------------------

    def _log_refused_secret(self) -> None:
        held = REFUSED_SECRET_LOG_RATE.allow("")
        if held is not None:
            log.error("the core refuses this gateway's secret, so every browser is refused: "
                      "CHAT_GATEWAY_SECRET must be the same for chat-web and chat-server%s",
                      held_back(held, "refused websockets"))

    def _over_error_budget(self) -> None:
        """The browser earned more errors than its budget: close its websocket (1008) and
        its core connection. What it sends meanwhile is read but goes nowhere: the core
        connection is shut and the browser's queue closed, until its close answer, or its
        cut after close_timeout."""
        if self._close_browser(TOO_MANY_ERRORS) and CONNECTION_LOG_RATE.allow(
                address_group(self.browser[0])) is not None:
            log.warning("websocket %d from %s closed: too many refused requests",
                        self.number, self.peer)
        self._shutdown(self._core)

    def _close_browser(self, ending: Ending) -> bool:
        """Queue `ending` after what the browser is sent; False if it was ending already."""
        self._browser.note_close_sent()
        return self._down.close(ending.frames())

    def _shutdown(self, sock: socket.socket) -> None:
        with self._lock, contextlib.suppress(OSError):  # OSError: not connected any more
            if not self._sockets_closed:
                sock.shutdown(socket.SHUT_RDWR)


def turn_taker() -> Callable[[], None]:
    """How a reader whose read filled its buffer lets the others run before reading again.

    A gevent socket's recv() returns at once while data is waiting, without a trip through
    the event loop: a reader whose peer keeps it busy (a flood of pings, pongs or bad frames,
    faster than the gateway decodes them) would never let another greenlet run, and one
    browser would freeze every websocket and page of the worker. A read that filled its
    buffer says that more is waiting; the reader then waits for gevent's event loop to be
    idle (gevent.idle: every other ready greenlet and socket is served first; sleep(0) is
    not enough, it may run the same greenlet again before the loop polls the sockets). With
    threads (the threaded test server) the scheduler shares the time already.
    """
    monkey = sys.modules.get("gevent.monkey")
    if monkey is not None and monkey.is_module_patched("socket"):
        import gevent  # only under gevent's worker: the threaded server has no use for it

        idle: Callable[[], None] = gevent.idle
        return idle
    return _no_turn


def _no_turn() -> None:
    """Threads are preempted: nothing to give up."""


def _error_line(lines: list[bytes], number: int) -> int:
    """The index of the error line after the first `number` ones (that the browser caused)."""
    for index, line in enumerate(lines):
        if browser_errors(line):
            if not number:
                return index
            number -= 1
    return len(lines)


def _joined(waited: threading.Thread | Pipe, timeout: float) -> bool:
    """Wait at most `timeout` for a thread (never started: at once) or a pipe's writer."""
    if isinstance(waited, Pipe):
        return waited.join(timeout)
    if waited.ident is None:
        return True
    waited.join(timeout)
    return not waited.is_alive()
