"""One browser's websocket relayed to one core connection, each frame written by the thread
that has it in hand.

Threads of one relay (N is the relay's number):

- simple-websocket's reader thread (`WebSocketThread`) decodes the browser's frames and, as
  the listener of its `WebSocketEvent`, hands each batch to the relay at once: the frames are
  checked (web_gateway.frames) and written to the core in one non-blocking send, or answered
  with the gateway's own error object;
- the server's request thread runs `Relay.run()`: it starts the relay and waits for the
  websocket to end, then ends the core connection and joins the relay's threads;
- `relay-core-N` reads the core socket, splits it into lines with the core's LineBuffer and
  writes every line of one read, one text frame each, to the browser in one non-blocking send;
- `relay-up-N` and `relay-down-N` are the fallback writers: they write only what a socket did
  not take at once (a peer slow to read), with blocking sends, and `relay-down-N` sends the
  websocket's ending (error object and close frame). `relay-down-N` also pings the browser
  every `ping_interval` and drops a browser that answered no ping for `pong_timeout` (a
  vanished peer, docs/history-and-sessions.md "Dead peers"); the pongs are read by
  simple-websocket's reader thread, which sets the websocket's `pong_received`.

So on the fast path a message crosses no thread of the relay. Each direction has a lock under
which bytes go out in order and from one thread at a time (flask-sock's websocket is not safe
for concurrent senders, flask-sock#85): frames are written directly only while nothing is
queued for that direction's fallback writer or being written by it; otherwise they queue.

Nobody blocks on a full queue: a browser that does not read what it is sent is dropped (like
the core drops a TCP client that does not read), and so is one whose core stops reading; each
socket's kernel send buffer is capped at the same budget. Every wait has a wake-up path:
closing a queue wakes its consumer, shutting down a socket wakes its reader and writer, and
the websocket's own thread ends when the browser answers our close (or when we cut the
socket after `close_timeout`).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Final, Protocol

from simple_websocket import ConnectionClosed
from wsproto import WSConnection
from wsproto.events import Ping, TextMessage
from wsproto.utilities import LocalProtocolError

from tcp_server.outbox import Outbox
from tcp_server.protocol import (
    LineBuffer,
    ProtocolError,
    Proxy,
    encode_request,
    format_address,
)
from web_gateway.frames import UNAVAILABLE, error_frame, frame_to_line

log = logging.getLogger(__name__)

RECV_BYTES: Final = 65_536
# Lines from the core may be longer than a request line: a users list of 1,000 users is about
# 100 KB. This only bounds memory against a broken core; no real line comes near it.
MAX_CORE_LINE_BYTES: Final = 16 * 1_048_576

# Websocket close codes (RFC 6455, section 7.4.1) the gateway uses.
CLOSE_NORMAL: Final = 1000  # the browser sent exit and the core said bye
CLOSE_GOING_AWAY: Final = 1001  # the core closed the connection, or the gateway is stopping
CLOSE_POLICY: Final = 1008  # the browser did not read what it was sent
CLOSE_TRY_LATER: Final = 1013  # the core is unreachable or not keeping up, or the gateway full


class WebSocket(Protocol):
    """The part of simple_websocket.Server (what flask-sock hands a route) the relay uses."""

    sock: socket.socket
    thread: threading.Thread
    event: WebSocketEvent
    input_buffer: list[str | bytes]  # the messages received and not yet taken
    ws: WSConnection  # the frame codec: the relay encodes its frames for its direct writes
    connected: bool
    pong_received: bool  # set by the reader thread when a pong arrives; the relay clears it

    def send(self, data: str) -> None: ...

    def receive(self, timeout: float | None = None) -> str | bytes | None: ...

    def close(self, reason: int | None = None, message: str | None = None) -> None: ...


class WebSocketThread(threading.Thread):
    """simple-websocket's own reader thread (SOCK_SERVER_OPTIONS thread_class), made safe.

    When that thread stops after a frame over max_message_size or a protocol error, it sets
    its event before it marks the websocket closed, so a receive() that wakes in between
    waits again, for ever. Marking it closed and setting the event once more when the
    thread ends gives receive() its wake-up path in every case.
    """

    def __init__(self, *, target: Callable[[], object]) -> None:
        super().__init__(target=target, name="ws-reader")
        self._websocket = getattr(target, "__self__", None)  # the simple_websocket.Server

    def run(self) -> None:
        try:
            super().run()
        finally:
            if self._websocket is not None:
                self._websocket.connected = False
                self._websocket.event.set()


class WebSocketEvent(threading.Event):
    """simple-websocket's "received" event (SOCK_SERVER_OPTIONS event_class), with a listener.

    simple-websocket's reader thread sets it after each message it adds to the websocket's
    input_buffer, and when the websocket ends. A listener is called first, in that thread:
    the relay takes the frames there, where they were decoded, instead of waking a thread
    of its own for each (a GIL hand-over per frame).
    """

    def __init__(self) -> None:
        super().__init__()
        self._listener: Callable[[], None] | None = None

    def listen(self, listener: Callable[[], None]) -> None:
        """Call `listener` (which must not raise or block) on every set() from now on."""
        self._listener = listener

    def set(self) -> None:
        """Call the listener, then wake whoever waits (receive() when no listener takes
        the messages)."""
        if (listener := self._listener) is not None:
            listener()
        super().set()


@dataclass(frozen=True, slots=True)
class Close:
    """The last item of a frame queue: close the websocket with this code and reason."""

    code: int
    reason: str  # at most 123 bytes of UTF-8 (RFC 6455); keep it short


@dataclass(frozen=True, slots=True)
class Ending:
    """How a relay ends for the browser: an optional error object, then a close frame."""

    close: Close
    error: str | None = None  # the message of an "unavailable" error object

    def frames(self) -> list[str | Close]:
        first: list[str | Close] = [] if self.error is None else [
            error_frame(UNAVAILABLE, self.error)
        ]
        return [*first, self.close]


BYE = Ending(Close(CLOSE_NORMAL, "bye"))
CORE_CLOSED = Ending(
    Close(CLOSE_GOING_AWAY, "the chat server closed the connection"),
    "the chat server closed the connection",
)
GATEWAY_STOPPING = Ending(
    Close(CLOSE_GOING_AWAY, "the web gateway is shutting down"),
    "the web gateway is shutting down",
)
CORE_STALLED = Ending(
    Close(CLOSE_TRY_LATER, "the chat server is not keeping up"),
    "the chat server is not keeping up; try again later",
)


CORE_UNREACHABLE = Ending(
    Close(CLOSE_TRY_LATER, "the chat server is unreachable"),
    "the chat server is unreachable; try again later",
)


def end_websocket(ws: WebSocket, ending: Ending, close_timeout: float) -> None:
    """Tell the browser why and close, from the thread that is the websocket's only writer.

    Waits at most `close_timeout` for the browser to answer the close frame, then cuts the
    socket, so that the websocket's own reader thread always ends.
    """
    try:
        for item in ending.frames():
            if isinstance(item, Close):
                ws.close(reason=item.code, message=item.reason)
            else:
                ws.send(item)
    except (ConnectionClosed, OSError) as error:
        log.debug("websocket ended before its close: %r", error)
    ws.thread.join(close_timeout)
    if ws.thread.is_alive():
        with contextlib.suppress(OSError):  # closed by the websocket's own thread meanwhile
            ws.sock.shutdown(socket.SHUT_RDWR)


class Idle(Enum):
    """What FrameQueue.take() gives when its timeout passed with nothing to take."""

    IDLE = "idle"


class FrameQueue:
    """Frames for one websocket, bounded in bytes; one consumer takes them one at a time.

    Like tcp_server.outbox.Outbox, but it keeps frames apart (each is one websocket message)
    and ends with a Close item. A bytes item is wire data already encoded (the rest of a frame
    that the socket did not take at once).
    """

    def __init__(self, max_bytes: int) -> None:
        self._max_bytes = max_bytes
        # _ready guards everything below; put() and close() notify it, take() waits on it.
        self._ready = threading.Condition(threading.Lock())
        self._items: deque[tuple[str | bytes | Close, int]] = deque()  # (item, its size in bytes)
        self._queued_bytes = 0
        self._closed = False

    def put(self, frame: str | bytes, size: int) -> bool:
        """Queue a frame of `size` bytes without blocking. False: the queue is full.

        A frame larger than the whole budget is still taken when the queue is empty, so that
        no single line can wedge a reader. After close() frames are discarded (True).
        """
        with self._ready:
            if self._closed:
                return True
            if self._items and self._queued_bytes + size > self._max_bytes:
                return False
            self._items.append((frame, size))
            self._queued_bytes += size
            self._ready.notify()
            return True

    def close(self, final: list[str | Close] | None = None, *, discard: bool = False) -> bool:
        """Accept nothing more, then `final`; the first close wins (False for later ones).

        `discard` drops what is still queued, even when the queue was closed already.
        """
        with self._ready:
            if discard:
                self._items.clear()
                self._queued_bytes = 0
            if self._closed:
                return False
            self._closed = True
            self._items.extend((item, 0) for item in final or ())
            self._ready.notify()
            return True

    def take(self, timeout: float | None = None) -> str | bytes | Close | Idle | None:
        """Wait for the next item; None once closed and empty. close() always comes.

        With a `timeout`, Idle.IDLE when it passed with nothing to take.
        """
        with self._ready:
            if not self._items and not self._closed:
                self._ready.wait_for(lambda: self._items or self._closed, timeout)
            if not self._items:
                return None if self._closed else Idle.IDLE
            item, size = self._items.popleft()
            self._queued_bytes -= size
            return item


def peer_name(address: tuple[str, int]) -> str:
    return format_address(*address)


class Relay:
    """Relays one websocket to one already connected core socket; run() until both end."""

    def __init__(
        self,
        ws: WebSocket,
        core: socket.socket,
        *,
        browser: tuple[str, int],
        secret: str,
        number: int,
        max_queue_bytes: int,
        close_timeout: float,
        ping_interval: float = 0.0,
        pong_timeout: float = 0.0,
    ) -> None:
        """`ping_interval` 0: no pings (then `pong_timeout` does not matter)."""
        self._ws = ws
        self._core = core
        self.browser = browser
        self.number = number
        self._close_timeout = close_timeout
        self._ping_interval = ping_interval
        self._pong_timeout = pong_timeout
        # Used by relay-down-N only: when the next ping is due, and since when pings go
        # unanswered (None: the last one was answered).
        self._next_ping: float | None = None
        self._unanswered_since: float | None = None
        self._up = Outbox(max_queue_bytes)
        self._down = FrameQueue(max_queue_bytes)
        # _lock guards the three flags below and the sockets' shutdown() against close().
        self._lock = threading.Lock()
        self._exit_sent = False  # the browser sent exit: the core's close is the normal end
        self._browser_gone = False  # run() has seen the websocket end
        self._core_closed = False  # the core socket is closed (shutdown would fail)
        self._receive_lock = threading.Lock()  # one _take_frames() at a time
        # _up_lock guards the core socket's writes by _take_frames() and the two fields below: while
        # anything is queued for relay-up-N or being written by it, frames queue behind it.
        self._up_lock = threading.Lock()
        self._up_pending = 0  # bytes put in _up and not yet written by relay-up-N
        self._up_direct = True  # False once the up direction ended (closed, failed)
        # _down_lock likewise guards the browser socket's direct writes and these two fields.
        self._down_lock = threading.Lock()
        self._down_pending = 0  # items put in _down and not yet handled by relay-down-N
        self._down_direct = True  # False once the down queue is closed
        # Direct writes leave what a peer does not read in the kernel's send buffer, which
        # Linux grows to megabytes by itself: capping it at the same budget keeps a peer that
        # does not read from holding more than about twice max_queue_bytes (kernel + queue).
        for sock in (core, ws.sock):
            with contextlib.suppress(OSError):  # a browser gone already: run() notices
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, max_queue_bytes)
        self._threads = [
            threading.Thread(target=self._pump_up, name=f"relay-up-{number}"),
            threading.Thread(target=self._pump_core, name=f"relay-core-{number}"),
            threading.Thread(target=self._pump_down, name=f"relay-down-{number}"),
        ]
        # The proxy request goes first, before anything the browser sends: relay-up-N writes
        # it, and until it has, the browser's frames queue behind it.
        proxy = encode_request(Proxy(secret=secret, ip=browser[0], port=browser[1]))
        self._up.put(proxy)
        self._up_pending = len(proxy)

    @property
    def peer(self) -> str:
        return peer_name(self.browser)

    # --- called from any thread -------------------------------------------------------------

    def stop(self, ending: Ending = GATEWAY_STOPPING) -> None:
        """End the relay: the browser gets `ending` after what is queued. Idempotent.

        Safe from a signal handler: it takes only this relay's locks (held by others only
        for non-blocking sends) and blocks on no I/O.
        """
        self._close_down(ending.frames())
        self._shutdown_core()

    def abort(self, reason: str) -> None:
        """Cut both connections now (for a browser that cannot even be told). Idempotent."""
        self._drop(reason)

    # --- the request thread -----------------------------------------------------------------

    def run(self) -> None:
        """Relay until the browser and the core are both done; every thread is joined."""
        log.info("websocket %d from %s relayed", self.number, self.peer)
        try:
            for thread in self._threads:
                thread.start()  # RuntimeError when the system has no thread to spare
            self._ws.event.listen(self._take_frames)
            self._take_frames()  # what came before the listener
            # The websocket's reader thread relays the browser's frames from now on; it ends
            # when the websocket does (the browser's close, or a shutdown of its socket).
            self._ws.thread.join()
        except Exception:
            log.exception("websocket %d from %s: unexpected error", self.number, self.peer)
            self._drop("internal error")
        finally:
            self._finish()
        log.info("websocket %d from %s closed", self.number, self.peer)

    def _take_frames(self) -> None:
        """Relay the frames the websocket has buffered: called by simple-websocket's reader
        thread right after it decoded them (WebSocketEvent), so no other thread wakes up for
        them. It never blocks: the core gets them without waiting, or they are queued."""
        try:
            with self._receive_lock:  # run()'s first call may meet the reader thread's
                buffered = self._ws.input_buffer
                frames = buffered[:]
                del buffered[: len(frames)]  # what the reader appends meanwhile stays
                if frames:
                    self._relay_frames(frames)
        except Exception:  # never into simple-websocket's thread: it would stop reading
            log.exception("websocket %d from %s: unexpected error", self.number, self.peer)
            self._drop("internal error")

    def _relay_frames(self, frames: list[str | bytes]) -> None:
        lines: list[bytes] = []
        for frame in frames:
            try:
                upstream = frame_to_line(frame)
            except ProtocolError as error:
                log.debug("websocket %d from %s: refused %s: %s",
                          self.number, self.peer, error.code, error.message)
                reply = error_frame(error.code, error.message)
                self._to_browser([(reply, len(reply))])
                continue
            if upstream.type == "exit":
                with self._lock:
                    self._exit_sent = True
            lines.append(upstream.line)
        # One write for every frame at hand: a system call per batch instead of per frame.
        if lines and not self._to_core(lines[0] if len(lines) == 1 else b"".join(lines)):
            log.warning("websocket %d from %s: the core is not reading; closing",
                        self.number, self.peer)
            self._end_up()  # what follows is discarded, not refused again
            self.stop(CORE_STALLED)

    def _to_core(self, line: bytes) -> bool:
        """Write a line to the core now, or queue it for relay-up-N. False: the queue is full."""
        with self._up_lock:
            if self._up_direct and not self._up_pending:
                try:
                    sent = self._core.send(line, socket.MSG_DONTWAIT)
                except BlockingIOError:  # the core's receive buffer is full: queue it all
                    sent = 0
                except OSError as error:  # the core connection is gone; relay-core-N sees it
                    log.debug("websocket %d: core write failed: %s", self.number, error)
                    self._up_direct = False
                    self._up.close(discard=True)
                    return True
                if sent == len(line):
                    return True
                line = line[sent:]
            if not self._up.put(line):
                return False
            if self._up_direct:  # after close() put() discards: nothing is pending then
                self._up_pending += len(line)
            return True

    def _end_up(self) -> None:
        with self._up_lock:
            self._up_direct = False
            self._up.close(discard=True)

    def _to_browser(self, frames: list[tuple[str, int]]) -> None:
        """Write frames (text, size in bytes) to the browser now, in one system call, or queue
        them for relay-down-N; drop a browser that has `max_queue_bytes` queued already."""
        drop = False
        with self._down_lock:
            if self._down_direct and not self._down_pending:
                if not self._ws.connected:  # the websocket is closing: nothing more goes out
                    return
                try:
                    codec = self._ws.ws
                    data = b"".join([codec.send(TextMessage(data=text)) for text, _ in frames])
                    sent = self._ws.sock.send(data, socket.MSG_DONTWAIT)
                except BlockingIOError:  # the browser's receive buffer is full: queue it all
                    sent = 0
                except (OSError, LocalProtocolError) as error:  # the browser is gone
                    log.debug("websocket %d: browser write ended: %r", self.number, error)
                    return  # run() sees the websocket end and finishes the relay
                if sent == len(data):
                    return
                # Taken even beyond the budget: the queue is empty (see FrameQueue.put).
                if self._down.put(data[sent:], len(data) - sent):
                    self._down_pending += 1
                else:  # cannot happen: the queue is empty; be safe
                    drop = True
            else:
                for text, size in frames:
                    if not self._down.put(text, size):
                        drop = True
                        break
                    if self._down_direct:  # after close() put() discards: nothing pending
                        self._down_pending += 1
        if drop:
            self._drop("the browser is not reading what it is sent")

    def _close_down(self, final: list[str | Close] | None = None, *,
                    discard: bool = False) -> bool:
        """Close the down queue (see FrameQueue.close); no direct write to the browser after."""
        with self._down_lock:
            closed = self._down.close(final, discard=discard)
            self._down_direct = False
            return closed

    def _finish(self) -> None:
        with self._lock:
            self._browser_gone = True
        pump_up, pump_core, pump_down = self._threads
        # What the browser sent before leaving still reaches the core (a message, an exit).
        with self._up_lock:
            self._up_direct = False
            self._up.close()
        self._join(pump_up)
        # Then the core connection ends: the core sees it close, and the others see left.
        self._shutdown_core()
        self._join(pump_core)
        self._join(pump_down)
        with self._lock:
            self._core_closed = True
            self._core.close()

    def _join(self, thread: threading.Thread) -> None:
        if thread.ident is None:  # never started
            return
        # Each pump is woken by its queue's close or its socket's shutdown; a second chance
        # after cutting both sockets bounds the wait even if the browser stopped reading.
        thread.join(2 * self._close_timeout)
        if thread.is_alive():
            log.warning("%s is stuck; cutting the connections", thread.name)
            self._drop("stuck")
            thread.join(self._close_timeout)
            if thread.is_alive():
                log.error("%s did not stop", thread.name)

    # --- relay-up-N: writes what the core socket did not take at once ---------------------

    def _pump_up(self) -> None:
        try:
            while (batch := self._up.take()) is not None:
                self._core.sendall(batch)
                with self._up_lock:
                    self._up_pending = max(0, self._up_pending - len(batch))
        except OSError as error:
            log.debug("websocket %d: core write failed: %s", self.number, error)
        except Exception:
            log.exception("websocket %d: core writer failed", self.number)
            self._shutdown_core()
        finally:
            self._end_up()  # later frames are discarded, not "queue full"

    # --- relay-core-N: reads the core, one frame per line --------------------------------

    def _pump_core(self) -> None:
        lines = LineBuffer(MAX_CORE_LINE_BYTES)
        try:
            while data := self._core.recv(RECV_BYTES):
                frames: list[tuple[str, int]] = []
                for line in lines.feed(data):
                    if isinstance(line, ProtocolError):
                        log.error("websocket %d: the core sent an over-long line; skipped",
                                  self.number)
                        continue
                    frames.append((line.decode("utf-8"), len(line)))
                if frames:  # every line of one read in one write
                    self._to_browser(frames)
        except OSError as error:
            log.debug("websocket %d: core read ended: %s", self.number, error)
        except Exception:
            log.exception("websocket %d: core reader failed", self.number)
        finally:
            self._core_ended()

    def _core_ended(self) -> None:
        with self._lock:
            browser_gone, exit_sent = self._browser_gone, self._exit_sent
        if browser_gone:
            self._close_down()
        elif self._close_down((BYE if exit_sent else CORE_CLOSED).frames()):
            log.info("websocket %d from %s: the core closed the connection",
                     self.number, self.peer)

    # --- relay-down-N: what the browser socket did not take at once, and the ending -------

    def _pump_down(self) -> None:
        if self._ping_interval > 0:
            self._next_ping = time.monotonic() + self._ping_interval
        try:
            while (item := self._down.take(self._until_ping())) is not None:
                if item is Idle.IDLE:
                    self._keep_alive()
                    continue
                if isinstance(item, Close):
                    self._ws.close(reason=item.code, message=item.reason)
                    self._await_browser_close()
                    break
                if isinstance(item, bytes):  # the rest of a frame begun by a direct write
                    self._ws.sock.sendall(item)
                else:
                    self._ws.send(item)
                with self._down_lock:
                    self._down_pending = max(0, self._down_pending - 1)
                self._keep_alive()  # due even while the browser is sent a lot
        except (ConnectionClosed, OSError) as error:
            log.debug("websocket %d: browser write ended: %r", self.number, error)
        except Exception:
            log.exception("websocket %d: browser writer failed", self.number)
            self._drop("internal error")
        finally:
            self._close_down(discard=True)

    def _until_ping(self) -> float | None:
        if self._next_ping is None:
            return None
        return max(0.0, self._next_ping - time.monotonic())

    def _keep_alive(self) -> None:
        """When a ping is due: drop a browser silent for pong_timeout, else ping it."""
        now = time.monotonic()
        if self._next_ping is None or now < self._next_ping:
            return
        self._next_ping = now + self._ping_interval
        if self._ws.pong_received:
            self._unanswered_since = None
        elif self._unanswered_since is not None and (
            now - self._unanswered_since >= self._pong_timeout
        ):
            # Gone without a word: the core connection ends without exit, so the core keeps
            # the session and marks the user away (a resume takes it back).
            self._drop(f"no pong for {now - self._unanswered_since:.0f} s")
            return
        if self._unanswered_since is None:
            self._unanswered_since = now
        self._ws.pong_received = False
        self._ping_browser()

    def _ping_browser(self) -> None:
        """Write a ping frame now, or queue it behind the frames queued for the browser."""
        with self._down_lock:
            if not self._down_direct or not self._ws.connected:  # closing: no more pings
                return
            try:
                ping = self._ws.ws.send(Ping())
            except LocalProtocolError as error:  # the websocket is closing
                log.debug("websocket %d: no ping: %r", self.number, error)
                return
            if not self._down_pending:
                try:
                    sent = self._ws.sock.send(ping, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    sent = 0
                except OSError as error:  # the browser is gone: run() sees it
                    log.debug("websocket %d: browser write ended: %r", self.number, error)
                    return
                if sent == len(ping):
                    return
                ping = ping[sent:]
            if self._down.put(ping, len(ping)):
                self._down_pending += 1
                return
        self._drop("the browser is not reading what it is sent")

    def _await_browser_close(self) -> None:
        # The websocket's own reader thread ends when the browser answers our close frame; if
        # it does not, cutting the socket ends it (and so wakes run() in ws.receive()).
        self._ws.thread.join(self._close_timeout)
        if self._ws.thread.is_alive():
            self._shutdown_browser()

    # --- helpers --------------------------------------------------------------------------

    def _drop(self, reason: str) -> None:
        """Cut both connections now, discarding what is queued for the browser."""
        if self._close_down(discard=True):
            log.warning("websocket %d from %s dropped: %s", self.number, self.peer, reason)
        self._shutdown_browser()
        self._shutdown_core()

    def _shutdown_core(self) -> None:
        with self._lock, contextlib.suppress(OSError):  # OSError: not connected any more
            if not self._core_closed:
                self._core.shutdown(socket.SHUT_RDWR)

    def _shutdown_browser(self) -> None:
        with contextlib.suppress(OSError):  # already closed by the websocket's own thread
            self._ws.sock.shutdown(socket.SHUT_RDWR)
