"""The client's connection to the core: a socket, a receiver thread and a queue of events.

The receiver thread is the only reader of the socket. It frames and decodes every line with the
shared codec (`tcp_server.protocol`) and routes it: a reply that carries the id of a request
still waiting goes to that request; everything else (messages, joins, leaves, a bye the server
sends on its own, stray replies) goes on `events`, a `queue.Queue` that the user interface
drains. When the socket closes, for whatever reason, every waiting request is woken and `events`
ends with the sentinel None: that is how the rest of the client learns the connection is gone.
Every line also goes, in order, to `roster` (cli_client/roster.py): the users list kept from
one `users` reply and the events after it.

Two threads write the socket: the main thread (the user's requests) and, once started, the
heartbeat thread (pings). `_send_lock` makes each request's sendall whole, so lines never
interleave.

The heartbeat finds a server that vanished without closing (a lost network, a suspended
machine): when nothing has come from the server for `ping_interval_s` it sends `ping`, and when
no `pong` comes within `pong_timeout_s` it aborts the connection, which then ends like any other.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import queue
import socket
import threading
import time
from dataclasses import dataclass
from typing import Final

from cli_client.roster import Roster
from tcp_server.protocol import (
    MAX_LINE_BYTES,
    ErrorCode,
    Event,
    LineBuffer,
    Ping,
    ProtocolError,
    Request,
    encode_request,
    parse_event,
)

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S: Final = 5.0
# The core answers at once; a reply this late means it is stuck, not slow.
REPLY_TIMEOUT_S: Final = 10.0
RECEIVER_JOIN_TIMEOUT_S: Final = 5.0
RECV_BYTES: Final = 65_536
# docs/history-and-sessions.md, "Dead peers": ping after 10 s of silence, and a pong must come
# within 10 s, so a vanished server is found within about 20 s.
PING_INTERVAL_S: Final = 10.0
PONG_TIMEOUT_S: Final = 10.0


class ConnectionClosed(Exception):
    """The connection ended (the server closed it, or the network failed).

    `written` says whether the request had been written to the socket first: then the server
    may have acted on it (a message may have been sent) without its reply arriving.
    """

    def __init__(self, written: bool = False) -> None:
        super().__init__("the connection ended" + (" after the request was written" if written
                                                   else ""))
        self.written = written


class ReplyTimeout(Exception):
    """The server did not answer a request in time."""


@dataclass(frozen=True, slots=True)
class BadLine:
    """A line from the server that the codec refused; shown to the user, then skipped."""

    problem: str


Incoming = Event | BadLine


class ServerConnection:
    """A connection to the core. open() connects; request() sends and waits for the reply.

    Unsolicited events are put on `events`, which ends with None once the socket has closed.
    close() is idempotent and joins the receiver thread.
    """

    def __init__(self, sock: socket.socket, peer: str) -> None:
        self.peer = peer
        self.events: queue.Queue[Incoming | None] = queue.Queue()
        self.roster = Roster()  # who is in the room, kept by the receiver thread
        self._sock = sock
        self._ids = itertools.count(1)
        self._send_lock = threading.Lock()  # held for one request's sendall, nothing else
        self._lock = threading.Lock()
        # Guarded by _lock: requests waiting for their reply (each slot gets one item: the
        # reply, or None when the connection closed first), whether the socket is done, and
        # when the receiver last read anything (time.monotonic()).
        self._pending: dict[int, queue.Queue[Event | None]] = {}
        self._closed = False
        self._last_heard = time.monotonic()
        self._ended = threading.Event()  # set with _closed: the heartbeat's wake-up path
        self._heartbeat: threading.Thread | None = None  # main thread only
        self._receiver = threading.Thread(target=self._receive, name=f"receiver-{peer}")
        self._receiver.start()

    @classmethod
    def open(
        cls, host: str, port: int, timeout: float = CONNECT_TIMEOUT_S
    ) -> ServerConnection:
        """Connect to the core; raises OSError when it cannot be reached."""
        sock = socket.create_connection((host, port), timeout=timeout)
        # The receiver blocks in recv() with no timeout: its wake-up path is close(), which
        # shuts the socket down.
        sock.settimeout(None)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(sock, f"{host}:{port}")

    @property
    def closed(self) -> bool:
        with self._lock:
            return self._closed

    def start_heartbeat(
        self, interval_s: float = PING_INTERVAL_S, timeout_s: float = PONG_TIMEOUT_S
    ) -> None:
        """Ping the server whenever it has been silent for `interval_s`; abort the connection
        when a ping gets no pong within `timeout_s`. Call once; close() joins the thread."""
        assert self._heartbeat is None, "the heartbeat runs already"
        self._heartbeat = threading.Thread(
            target=self._beat, args=(interval_s, timeout_s), name=f"heartbeat-{self.peer}"
        )
        self._heartbeat.start()

    def request(self, request: Request, timeout: float = REPLY_TIMEOUT_S) -> Event:
        """Send `request` with a fresh id and return the server's reply to it.

        Raises ConnectionClosed when the connection ends first (its `written` says whether the
        request had gone out), ReplyTimeout when no reply comes within `timeout` seconds.
        """
        slot: queue.Queue[Event | None] = queue.Queue(maxsize=1)
        with self._lock:
            if self._closed:
                raise ConnectionClosed
            request_id = next(self._ids)
            self._pending[request_id] = slot
        try:
            # Blocking sendall: lines are small and the core always reads, so this returns at
            # once; a Ctrl-C interrupts it should the kernel's buffers ever be full.
            # A line cut short by a failed sendall has no newline: the server never takes it
            # for a request, so "not written" is safe to send again.
            with self._send_lock:
                self._sock.sendall(encode_request(dataclasses.replace(request, id=request_id)))
        except OSError as error:
            log.debug("send failed: %s", error)
            self._forget(request_id)
            raise ConnectionClosed from error
        try:
            reply = slot.get(timeout=timeout)
        except queue.Empty:
            self._forget(request_id)
            raise ReplyTimeout from None
        if reply is None:
            raise ConnectionClosed(written=True)
        return reply

    def abort(self) -> None:
        """End the connection from any thread without waiting: the receiver then ends the
        event stream as for any closed connection. close() is still needed afterwards."""
        with contextlib.suppress(OSError):  # already shut down or reset by the peer
            self._sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        """Close the connection and join its threads. Safe to call more than once."""
        self.abort()
        current = threading.current_thread()
        for thread in (self._receiver, self._heartbeat):
            if thread is not None and thread is not current:
                thread.join(RECEIVER_JOIN_TIMEOUT_S)
                if thread.is_alive():
                    log.warning("the %s thread did not stop", thread.name)
        self._sock.close()

    def _beat(self, interval_s: float, timeout_s: float) -> None:
        try:
            while True:
                with self._lock:
                    quiet_s = time.monotonic() - self._last_heard
                if quiet_s < interval_s:
                    if self._ended.wait(interval_s - quiet_s):
                        return
                    continue
                try:
                    self.request(Ping(), timeout=timeout_s)
                except ConnectionClosed:
                    return
                except ReplyTimeout:
                    log.warning("no answer from the server to a ping within %s s; "
                                "taking the connection for lost", timeout_s)
                    self.abort()
                    return
        except Exception:  # a bug here must not go unnoticed, nor keep the connection open
            log.exception("heartbeat failed")
            self.abort()

    def _forget(self, request_id: int) -> None:
        with self._lock:
            self._pending.pop(request_id, None)

    def _receive(self) -> None:
        lines = LineBuffer(MAX_LINE_BYTES)
        try:
            while data := self._sock.recv(RECV_BYTES):
                with self._lock:
                    self._last_heard = time.monotonic()
                for line in lines.feed(data):
                    self._dispatch(line)
        except OSError as error:  # reset by the peer, or shut down by close()
            log.debug("receive ended: %s", error)
        except Exception:  # a bug here must still end the stream below, not hang the client
            log.exception("receiver failed")
        finally:
            self._end()

    def _dispatch(self, line: bytes | ProtocolError) -> None:
        if isinstance(line, ProtocolError):
            self.events.put(BadLine(line.message))
            return
        if not line.strip(b" \t"):
            return
        try:
            event = parse_event(line)
        except ProtocolError as error:
            if error.code == ErrorCode.UNKNOWN_TYPE:
                # A later protocol version may add events: skip them, as the protocol says.
                log.debug("skipped: %s", error.message)
            else:
                self.events.put(BadLine(error.message))
            return
        # In the order of the stream, before a reply wakes its request: a `users` reply is
        # then already the roster when List reads it.
        self.roster.apply(event)
        request_id = getattr(event, "id", None)
        slot = None
        if isinstance(request_id, int):
            with self._lock:
                slot = self._pending.pop(request_id, None)
        if slot is not None:
            slot.put(event)
        else:
            self.events.put(event)

    def _end(self) -> None:
        with self._lock:
            self._closed = True
            waiting = list(self._pending.values())
            self._pending.clear()
        self._ended.set()
        for slot in waiting:
            slot.put(None)
        self.events.put(None)
