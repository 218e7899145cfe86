"""One client connection: a reader loop (the connection's own thread) and a writer thread.

The reader turns bytes into requests through the connection's codec and hands them to the
commands; replies and deliveries are encoded and queued in the outbox, which only the writer
(or the shared flusher, see outbox.py) drains into the socket. Every wait has a wake-up path:
the hello deadline bounds the reader's first wait, shutting down the socket's read side wakes a
blocked recv(), and closing the outbox wakes the writer.

Three orderings are kept here:
- A send is answered by the store's thread once its message is committed and delivered; the
  reader goes on with the next request meanwhile, and any other reply waits for the sends
  before it, so replies come in the order of the requests.
- While a hello registers (and, for a resume, replays what the session missed), deliveries
  from others are held, then released after the welcome and the replay.
- A message already sent by the replay is never delivered again (`_replayed_upto`).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import select
import socket
import struct
import termios
import threading
import time
from collections.abc import Callable, Iterable, Sequence

from tcp_server.commands import Commands, Session
from tcp_server.config import ServerConfig
from tcp_server.dialects import DEFAULT_CODEC, Codec, choose_codec, skip_blank
from tcp_server.flusher import Flusher
from tcp_server.lograte import held_back
from tcp_server.outbox import Outbox
from tcp_server.protocol import (
    Bye,
    ErrorCode,
    Event,
    Exit,
    Hello,
    ProtocolError,
    Request,
)
from tcp_server.ratelimit import TokenBucket
from tcp_server.registry import Envelope
from tcp_server.store import StoredMessage

log = logging.getLogger(__name__)

RECV_BYTES = 65_536
REPLIES_UNREAD = "send queue full: not reading replies"
LINGER_POLL_S = 0.005
LINGER_MAX_READS = 16  # unread input dropped before closing: at most 1 MiB, then a reset


def _unacknowledged_bytes(sock: socket.socket) -> int:
    """Bytes we sent that the peer has not acknowledged yet (Linux's SIOCOUTQ)."""
    try:
        raw = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
    except OSError:
        return 0
    return int(struct.unpack("i", raw)[0])


class Connection:
    def __init__(
        self,
        sock: socket.socket,
        address: tuple[str, int],
        config: ServerConfig,
        commands: Commands,
        flusher: Flusher | None = None,
        logged: int | None = 0,
    ) -> None:
        """`logged`: None keeps this connection's coming and going out of the log (a flood
        from its address); a count says how many were held back before it."""
        self._logged = logged
        self._sock = sock
        self._sock_lock = threading.Lock()  # serializes shutdown() against close()
        self._config = config
        self._commands = commands
        # Chosen by the reader from the first byte the client sends; until then the default
        # speaks for it (a shutdown or hello-deadline bye). Read by other threads: one
        # reference assignment, no lock needed.
        self._codec: Codec | None = None
        self._outbox = Outbox(
            config.max_outbox_bytes,
            try_send=self._try_send,
            schedule=flusher.schedule if flusher else None,
        )
        self._bucket = TokenBucket(config.rate_limit, config.rate_burst)
        self.session = Session(
            ip=address[0], port=address[1], deliver=self.deliver, close=self.close,
            logged=logged is not None,
        )
        # While registering (see _register), deliveries wait here, so that the welcome and the
        # replay come first; _held_lock makes the switch to direct delivery atomic.
        self._held_lock = threading.Lock()
        self._held: list[Envelope] | None = None
        self._held_bytes = 0
        # Messages with a seq up to this one were sent by the replay: a late live delivery of
        # one of them is skipped. Written by the reader before it ends the hold.
        self._replayed_upto = 0
        self._delivered_seq = 0  # the highest seq queued for the client (the deliverers')
        # Sends handed to the store and not yet answered. The store's thread answers them in
        # order (_answer_send); any other reply waits until they are, so replies keep the
        # order of the requests. _sends_lock guards the count; _sends_answered is notified
        # when it drops to 0 while the reader waits.
        self._sends_lock = threading.Lock()
        self._sends_answered = threading.Condition(self._sends_lock)
        self._sends_in_flight = 0
        self._waiting_for_sends = False
        # Server shutdown comes in two steps (see ChatServer._close_all): stop_reading() makes
        # the reader finish the request in hand and set _quiet; close() then queues the bye
        # and sets _released. Between the two, every delivery in flight has reached its
        # recipients' outboxes, so each "sent" the server gave is honoured.
        self._stop_requested = False
        self._flush_deadline: float | None = None  # set by close() during a shutdown
        self._quiet = threading.Event()
        self._released = threading.Event()
        self._writer = threading.Thread(
            target=self._write_loop, name=f"writer-{self.session.peer}"
        )

    @property
    def peer(self) -> str:
        return self.session.peer

    # --- called from any thread -------------------------------------------------------------

    def deliver(self, envelope: Envelope) -> None:
        """Queue an event for this client without blocking; drop the client if it is full."""
        if self._held is not None:
            with self._held_lock:
                if self._held is not None:
                    self._held.append(envelope)
                    self._held_bytes += len(envelope.encoded(self._encoder))
                    if self._held_bytes > self._config.max_outbox_bytes:
                        self._drop(self._full_reason)
                    return
        seq = envelope.seq
        if seq:
            if seq <= self._replayed_upto:
                return
            self._delivered_seq = seq
        if not self._outbox.put(envelope.encoded(self._encoder)):
            self._drop(self._full_reason)

    @property
    def _full_reason(self) -> str:
        return f"send queue full ({self._config.max_outbox_bytes} bytes): not reading"

    def stop_reading(self) -> None:
        """Handle no further request; the reader then waits for close(). Idempotent."""
        self._stop_requested = True
        self._shutdown(socket.SHUT_RD)  # wakes a reader blocked in recv() or poll()

    def wait_quiet(self, timeout: float) -> bool:
        """After stop_reading(): wait until the reader has finished its last request."""
        return self._quiet.wait(timeout)

    def close(self, reason: str, flush_deadline: float | None = None) -> None:
        """End the connection after what is queued, with a bye. Idempotent.

        `flush_deadline` (time.monotonic()) bounds the flush instead of close_timeout: a
        server shutdown gives every connection the same end.
        """
        self._flush_deadline = flush_deadline
        if self._outbox.close(self._encoder.encode(Bye(reason=reason))):
            self._shutdown(socket.SHUT_RD)  # wakes the reader, which finishes the connection
        self._released.set()

    # --- the reader thread --------------------------------------------------------------------

    def run(self) -> None:
        if self._logged is not None:
            log.info("%s connected%s", self.peer,
                     held_back(self._logged, "connections from this address"))
        self._writer.start()
        try:
            self._read_loop()
        except OSError as error:
            log.info("%s connection error: %s", self.peer, error)
        except Exception:
            log.exception("%s unexpected error; closing this connection", self.peer)
        finally:
            if self._sends_in_flight:  # the bye and the close come after their answers
                self._wait_for_sends()
            self._quiet.set()
            if self._stop_requested:  # the server closes us, with a bye, once all are quiet
                self._released.wait(self._config.shutdown_timeout)
            self._finish()

    @property
    def _encoder(self) -> Codec:
        return self._codec or DEFAULT_CODEC

    def _read_loop(self) -> None:
        poller = select.poll()
        poller.register(self._sock, select.POLLIN)
        hello_deadline = time.monotonic() + self._config.hello_timeout
        while not self._outbox.closed and not self._stop_requested:
            # Checked before every read, not only once the socket is quiet: a client that keeps
            # sending would otherwise outlive the deadline.
            if self.session.member is None and time.monotonic() >= hello_deadline:
                if self._logged is not None:
                    log.info("%s sent no hello in time", self.peer)
                timeout = self._config.hello_timeout
                self._reply(Bye(reason=f"no hello with a name within {timeout:g} s"))
                return
            wait_s = self._wait_limit(hello_deadline)
            if wait_s is not None and not poller.poll(max(0.0, wait_s) * 1000):
                if self._codec and not self._handle_frames(self._codec, self._codec.flush()):
                    return
                continue
            data = self._sock.recv(RECV_BYTES)
            if not data:
                return
            if self._codec is None:
                data = skip_blank(data)
                if not data:
                    continue
                self._codec = choose_codec(data, self._config)
            if not self._handle_frames(self._codec, self._codec.feed(data)):
                return

    def _wait_limit(self, hello_deadline: float) -> float | None:
        limits = [self._codec.flush_timeout() if self._codec else None]
        if self.session.member is None:
            limits.append(hello_deadline - time.monotonic())
        present = [limit for limit in limits if limit is not None]
        return min(present) if present else None

    def _handle_frames(self, codec: Codec, frames: Sequence[bytes | ProtocolError]) -> bool:
        """Parse and handle frames in order; False when the connection is to close.

        Each frame is parsed only after the one before it was handled: in the plain-text
        dialect the first line means a name and later ones commands.
        """
        return self._handle_each(codec, frames)

    def _handle_each(self, codec: Codec, frames: Sequence[bytes | ProtocolError]) -> bool:
        for frame in frames:
            if self._outbox.closed or self._stop_requested:  # dropped or stopping
                return False
            try:
                if isinstance(frame, ProtocolError):
                    raise frame
                parsed = codec.parse(frame, registered=self.session.member is not None)
            except ProtocolError as error:
                self._reply(error.to_event())
                if error.code.closes_connection:
                    return False
                continue
            if parsed is None:
                continue
            if isinstance(parsed, bytes):
                self._put(parsed)
            elif not self._handle(parsed):
                return False
        return True

    def _handle(self, request: Request) -> bool:
        if not isinstance(request, Exit) and not self._bucket.take():
            self._reply(
                ProtocolError(
                    ErrorCode.RATE_LIMITED,
                    f"slow down: at most {self._config.rate_limit:g} requests a second",
                    request.id,
                ).to_event()
            )
            return True
        registering = isinstance(request, Hello) and self.session.member is None
        if registering:
            # Others deliver to a new member as soon as the room lists it: hold their events
            # until the welcome and the replay are queued, so that those always come first.
            with self._held_lock:
                self._held, self._held_bytes = [], 0
        try:
            outcome = self._commands.handle(self.session, request)
            if outcome.pending is not None:
                with self._sends_lock:
                    self._sends_in_flight += 1
                outcome.pending.submit(self._answer_send)
                return True
            replies = b"".join(self._encoder.encode(reply) for reply in outcome.replies)
            if replies:
                self._put(replies)
            self._replay(outcome.replay)
            for event in outcome.after_replay:
                self._reply(event)
        finally:
            if registering:
                self._release_held()
        return not outcome.close

    def _replay(self, pages: Iterable[list[StoredMessage]]) -> None:
        """Queue what the session missed, a page at a time, as fast as the client reads."""
        budget = self._config.max_outbox_bytes
        chunk: list[bytes] = []
        size = last_seq = 0
        for page in pages:
            for message in page:
                line = self._encoder.encode(message.event())
                if chunk and size + len(line) > budget // 2:
                    if not self._queue_replayed(chunk, size, last_seq):
                        return
                    chunk, size = [], 0
                chunk.append(line)
                size += len(line)
                last_seq = message.seq
        if chunk:
            self._queue_replayed(chunk, size, last_seq)

    def _queue_replayed(self, chunk: list[bytes], size: int, last_seq: int) -> bool:
        """Queue replayed lines once they fit the send queue; False if the client does not
        read them in time (then it is dropped, and may resume again)."""
        budget = self._config.max_outbox_bytes
        if not self._outbox.wait_for_room(size, budget, self._config.hello_timeout):
            self._drop(REPLIES_UNREAD)
            return False
        self._put(b"".join(chunk))
        self._replayed_upto = self._delivered_seq = last_seq
        return True

    def _release_held(self) -> None:
        with self._held_lock:
            held, self._held = self._held or [], None
            for envelope in held:
                self.deliver(envelope)  # in order, before any delivery that waits for the lock

    def _reply(self, event: Event) -> None:
        self._put(self._encoder.encode(event))

    def _put(self, data: bytes) -> None:
        """Queue a reply, after the replies still owed to earlier sends."""
        if self._sends_in_flight:
            self._wait_for_sends()
        if not self._outbox.put(data):
            self._drop(REPLIES_UNREAD)

    def _answer_send(self, replies: list[Event]) -> None:
        """The store's thread: a send is stored and delivered; queue its replies."""
        self._put_from_store(b"".join(self._encoder.encode(reply) for reply in replies))

    def _put_from_store(self, data: bytes) -> None:
        if not self._outbox.put(data):
            self._drop(REPLIES_UNREAD)
        with self._sends_lock:
            self._sends_in_flight -= 1
            if not self._sends_in_flight and self._waiting_for_sends:
                self._sends_answered.notify()

    def _wait_for_sends(self) -> None:
        """Until every send in hand is answered (the store answers each within its commit)."""
        with self._sends_lock:
            self._waiting_for_sends = True
            while self._sends_in_flight:
                self._sends_answered.wait()
            self._waiting_for_sends = False

    def _finish(self) -> None:
        self._commands.disconnect(self.session, self._delivered_seq)
        self._outbox.close()
        deadline = self._flush_deadline
        if deadline is None:
            deadline = time.monotonic() + self._config.close_timeout
        # The writer may never have started: start() fails at the system's thread limit.
        if self._writer.ident is None or self._join_writer(deadline):
            self._linger(deadline)
        with self._sock_lock:
            self._sock.close()
        if self._logged is not None:
            log.info("%s disconnected", self.peer)

    def _join_writer(self, deadline: float) -> bool:
        """Wait for the writer to send everything; False if it had to be cut off."""
        self._writer.join(max(0.0, deadline - time.monotonic()))
        if not self._writer.is_alive():
            return True
        self._shutdown(socket.SHUT_RDWR)  # the peer does not take our last bytes: cut it off
        self._writer.join(self._config.close_timeout)
        if self._writer.is_alive():
            log.error("%s writer did not stop", self.peer)
        return False

    def _linger(self, deadline: float) -> None:
        """Let the peer receive all we sent before the socket is closed.

        Closing a socket that still has unread input (a client that keeps sending) makes the
        kernel answer with a reset and throw away what it has not yet delivered of our output,
        the bye among it. So: end our side (a FIN after the data), wait until the peer has
        acknowledged everything, then drop the unread input. No event reports "acknowledged":
        this waits in short sleeps, once per connection, bounded by the deadline.
        """
        self._shutdown(socket.SHUT_WR)
        while _unacknowledged_bytes(self._sock) > 0 and time.monotonic() < deadline:
            time.sleep(LINGER_POLL_S)
        for _ in range(LINGER_MAX_READS):
            try:
                if not self._sock.recv(RECV_BYTES, socket.MSG_DONTWAIT):
                    return
            except OSError:  # nothing more to read now (EAGAIN), or the peer is gone
                return

    # --- the writer thread --------------------------------------------------------------------

    def _write_loop(self) -> None:
        try:
            while (batch := self._outbox.take()) is not None:
                self._sock.sendall(batch)
        except OSError as error:
            log.debug("%s write failed: %s", self.peer, error)
            self._abort()
        except Exception:
            log.exception("%s writer failed; closing this connection", self.peer)
            self._abort()

    # --- helpers ----------------------------------------------------------------------------

    def _drop(self, reason: str) -> None:
        if self._outbox.close(self._encoder.encode(Bye(reason=reason)), discard=True):
            log.warning("%s dropped: %s", self.peer, reason)
            self._shutdown(socket.SHUT_RD)

    def _try_send(self, data: bytes) -> int:
        """Write what the socket takes without blocking (the flusher's write, see outbox.py).

        Under _sock_lock so that it never meets a closed socket whose number was reused.
        """
        with self._sock_lock:
            return self._sock.send(data, socket.MSG_DONTWAIT)

    def _abort(self) -> None:
        self._outbox.close(discard=True)
        self._shutdown(socket.SHUT_RD)

    def _shutdown(self, how: int) -> None:
        # OSError: already disconnected or closed, so there is nothing left to wake.
        with self._sock_lock, contextlib.suppress(OSError):
            self._sock.shutdown(how)


def run_connection(connection: Connection, on_done: Callable[[Connection], None]) -> None:
    """Thread body: serve the connection, then tell its owner it is gone."""
    try:
        connection.run()
    finally:
        on_done(connection)
