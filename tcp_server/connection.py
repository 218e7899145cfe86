"""One client connection: a reader loop, the connection's one and only thread.

The reader turns bytes into requests through the connection's codec and hands them to the
commands; replies and deliveries are encoded and queued in the outbox, which the shared flusher
(tcp_server/flusher.py) writes to the socket without blocking: see tcp_server/outbox.py for who
writes a socket when. The reader never writes. Every wait has a wake-up path: the hello
deadline bounds the reader's first wait, and shutting down the socket's read side wakes a
blocked recv().

The connection's lifecycle is one enum, `Lifecycle`:

    HELLO ---hello done (the reader)------------> REGISTERED
    HELLO/REGISTERED ---stop_reading() (server)---> STOPPING  (finish the request in hand; the
                                                             server queues the bye later)
    HELLO/REGISTERED/STOPPING ---close()/drop-----> CLOSING   (a bye is queued)
    any ---the reader ends, releases the socket---> CLOSED    (the flusher closes it after the
                                                             last bytes or at the deadline)

Three orderings are kept here:
- A send is answered by the store's thread once its message is committed and delivered; the
  reader goes on with the next request meanwhile, and any other reply waits for the sends
  before it, so replies come in the order of the requests.
- While a hello registers (and, for a resume, replays what the session missed), messages
  from others are held, then released after the welcome and the replay; presence changes
  before the welcome is queued are not delivered (the client asks `list` after its welcome),
  those after it are held too. While a `list` is answered, everything from others is held
  until the `users` reply is queued.
- A message already sent by the replay is never delivered again (`_replayed_upto`).
"""

from __future__ import annotations

import enum
import logging
import select
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence

from tcp_server.commands import Commands, PendingSend, Session
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
    ListUsers,
    ProtocolError,
    Request,
    request_cost,
)
from tcp_server.ratelimit import TokenBucket
from tcp_server.registry import Envelope
from tcp_server.store import StoredMessage, StoreError

log = logging.getLogger(__name__)

RECV_BYTES = 65_536
REPLIES_UNREAD = "send queue full: not reading replies"


class Lifecycle(enum.IntEnum):
    HELLO = 0
    REGISTERED = 1
    STOPPING = 2
    CLOSING = 3
    CLOSED = 4


class ShutdownGate:
    """A server shutdown's meeting point, one for all connections.

    The server marks the connections stopping and wakes their readers a batch at a time: in
    CPython, thousands of threads woken at once hand the GIL around in O(n²) (5,000 readers
    woken together: 13 s to end; in batches of 64: 0.2 s). Each reader finishes the request in
    hand, arrives here and ends its thread at once: it does not wait, so readers never queue
    up for one lock or one condition. Once all have arrived (or the deadline passed), the
    server open()s the gate and ends the sessions of those that arrived, with a few threads of
    its own: every message a sender was told "sent" reached its recipients live before any of
    them went away. A reader arriving after open() ends its session itself.
    """

    def __init__(self) -> None:
        # _lock guards _arrived, _expected and _open; _all_arrived (its condition) is
        # notified once, when the last expected reader arrives: only the server waits on it.
        self._lock = threading.Lock()
        self._all_arrived = threading.Condition(self._lock)
        self._arrived: list[Connection] = []
        self._expected: int | None = None
        self._open = False

    def arrive(self, connection: Connection) -> bool:
        """A stopping reader is done; True if the server ends its session, False if the
        gate is open already (the reader ends it itself)."""
        with self._lock:
            if self._open:
                return False
            self._arrived.append(connection)
            if self._expected is not None and len(self._arrived) >= self._expected:
                self._all_arrived.notify()
            return True

    def wait_for(self, count: int, timeout: float) -> bool:
        """Until `count` readers have arrived (True) or the timeout passed (False)."""
        with self._lock:
            self._expected = count
            return self._all_arrived.wait_for(lambda: len(self._arrived) >= count, timeout)

    def open(self) -> list[Connection]:
        """Let later readers end their own sessions; returns those that arrived before."""
        with self._lock:
            self._open = True
            arrived, self._arrived = self._arrived, []
            return arrived


class Connection:
    __slots__ = (
        "__weakref__", "_bucket", "_codec", "_commands", "_config", "_delivered_seq",
        "_flusher", "_gate", "_held", "_held_bytes", "_lock", "_logged", "_outbox", "_poller",
        "_read_more", "_registering", "_replayed_upto", "_sends", "_sends_in_flight",
        "_sends_waiter", "_session_over", "_sock", "_state", "session",
    )

    def __init__(
        self,
        sock: socket.socket,
        address: tuple[str, int],
        config: ServerConfig,
        commands: Commands,
        flusher: Flusher,
        gate: ShutdownGate,
        logged: int | None = 0,
        charged: str = "",
    ) -> None:
        """`logged`: None keeps this connection's coming and going out of the log (a flood
        from its address); a count says how many were held back before it. `gate`: where
        the reader waits at a server shutdown (see ShutdownGate). `charged`: see
        Admission.admit."""
        self._logged = logged
        self._gate = gate
        self._poller: select.poll | None = None  # the reader's wait for its socket
        self._read_more = True  # the last read filled its buffer: read again before waiting
        self._sock = sock
        self._config = config
        self._commands = commands
        self._flusher = flusher
        # Chosen by the reader from the first byte the client sends; until then the default
        # speaks for it (a shutdown or hello-deadline bye). Read by other threads: one
        # reference assignment, no lock needed.
        self._codec: Codec | None = None
        self._outbox = Outbox(
            config.max_outbox_bytes, sock, flusher, on_overflow=self._overflowed,
        )
        self._bucket = TokenBucket(config.rate_limit, config.rate_burst)
        self.session = Session(
            ip=address[0], port=address[1], deliver=self.deliver, close=self.close,
            logged=logged is not None, charged=charged,
        )
        # _lock guards _state, the held deliveries and the count of sends in flight. Reentrant:
        # a delivery released from the hold may drop the client, which moves _state.
        self._lock = threading.RLock()
        self._state = Lifecycle.HELLO
        self._session_over = False  # end_session() has run (guarded by _lock)
        # While registering (see _handle), deliveries wait in _held, so that the welcome and
        # the replay come first; the lock makes the switch to direct delivery atomic.
        self._held: list[Envelope] | None = None
        self._held_bytes = 0
        # Holding for a hello until its welcome is queued: presence is dropped, not held.
        self._registering = False
        # Messages with a seq up to this one were sent by the replay: a late live delivery of
        # one of them is skipped. Written by the reader before it ends the hold.
        self._replayed_upto = 0
        self._delivered_seq = 0  # the highest seq queued for the client (the deliverers')
        # Sends handed to the store and not yet answered. The store's thread answers them in
        # order, those of one commit at once (_answer_sends); any other reply waits until
        # they are, so replies keep the order of the requests. The reader waiting for them
        # blocks on _sends_waiter (a lock made for that wait only), released when the count
        # drops to 0. _sends holds them oldest first: the reader appends (and takes back one
        # the store refused at once), the store's thread takes from the left (a deque's
        # append and popleft are atomic).
        self._sends: deque[PendingSend] = deque()
        self._sends_in_flight = 0
        self._sends_waiter: threading.Lock | None = None

    @property
    def peer(self) -> str:
        return self.session.peer

    @property
    def state(self) -> Lifecycle:
        return self._state

    # --- called from any thread -------------------------------------------------------------

    def deliver(self, envelope: Envelope) -> None:
        """Queue an event for this client without blocking; drop the client if it is full."""
        if self._held is not None:
            with self._lock:
                if self._held is not None:
                    if not envelope.seq and self._registering:
                        # Presence from before the welcome: the client learns the room from
                        # `list` after it (docs/protocol.md). Held, 10,000 clients resuming
                        # at once owed each registering client ~1 MB of `back` lines.
                        return
                    self._held.append(envelope)
                    self._held_bytes += len(envelope.encoded(self._encoder))
                    if self._held_bytes > self._config.max_outbox_bytes:
                        self._drop(self._full_reason)
                    return
        seq = envelope.seq
        if seq:
            replayed = self._replayed_upto
            if envelope.first_seq <= replayed:
                if seq <= replayed:
                    return
                rest = envelope.after(replayed)
                assert rest is not None  # its last seq is above `replayed`
                envelope = rest
            self._delivered_seq = seq
        if not self._outbox.put(envelope.encoded(self._encoder)):
            self._drop(self._full_reason)

    @property
    def _full_reason(self) -> str:
        return f"send queue full ({self._config.max_outbox_bytes} bytes): not reading"

    def _overflowed(self) -> None:
        """The flusher: the socket stopped taking data with more than the budget queued."""
        self._drop(self._full_reason)

    def stop_reading(self) -> None:
        """Server shutdown: handle no further request; the reader finishes the one in hand
        and ends, leaving the bye to the server's close(). Idempotent. The server calls this
        for a few connections at a time (see ChatServer._close_all)."""
        if self._advance(Lifecycle.STOPPING):
            self._outbox.shutdown_read()  # wakes a reader waiting in poll()

    def close(self, reason: str, flush_deadline: float | None = None) -> None:
        """End the connection after what is queued, with a bye. Idempotent.

        `flush_deadline` (time.monotonic()) bounds the flush instead of close_timeout: a
        server shutdown gives every connection the same end.
        """
        if flush_deadline is None:
            flush_deadline = time.monotonic() + self._config.close_timeout
        bye = self._encoder.encode(Bye(reason=reason))
        if self._outbox.close(bye, deadline=flush_deadline) and self._advance(Lifecycle.CLOSING):
            self._outbox.shutdown_read()  # wakes the reader, which finishes the connection

    # --- the reader thread --------------------------------------------------------------------

    def run(self) -> None:
        if self._logged is not None:
            log.info("%s connected%s", self.peer,
                     held_back(self._logged, "connections from this address"))
        try:
            self._read_loop()
        except OSError as error:
            log.info("%s connection error: %s", self.peer, error)
        except StoreError as error:  # the store failed in the middle of a resume's replay
            log.warning("%s closed during a replay: %s", self.peer, error)
            # What was not replayed yet comes with the client's next resume (its `after`).
            self._reply(Bye(reason="the message store is unavailable; resume later"))
        except Exception:
            log.exception("%s unexpected error; closing this connection", self.peer)
        finally:
            self._finish()

    @property
    def _encoder(self) -> Codec:
        return self._codec or DEFAULT_CODEC

    @property
    def _reading(self) -> bool:
        return self._state <= Lifecycle.REGISTERED

    def _read_loop(self) -> None:
        hello_deadline = time.monotonic() + self._config.hello_timeout
        while self._reading:
            data = self._receive(self._wait_limit(hello_deadline))
            if data is None:  # a deadline passed, or the server woke every reader to stop
                if not self._reading:
                    return
                if self._codec and not self._handle_frames(self._codec, self._codec.flush()):
                    return
            elif not data or not self._handle_data(data):  # its end, or a close
                return
            # Checked after every read, not only once the socket is quiet (a client that keeps
            # sending would outlive it), and after what arrived was handled: a hello already
            # waiting when a starved reader gets its turn (10,000 clients reconnecting at once
            # after a restart) counts.
            if self.session.member is None and time.monotonic() >= hello_deadline:
                if self._logged is not None:
                    log.info("%s sent no hello in time", self.peer)
                timeout = self._config.hello_timeout
                self._reply(Bye(reason=f"no hello with a name within {timeout:g} s"))
                return

    def _handle_data(self, data: bytes) -> bool:
        """Handle what one read brought; False when the connection is to close."""
        # Backpressure: while the flusher is behind, a sender's next requests wait (and with
        # them its TCP window), instead of a reading recipient being dropped.
        flusher = self._flusher
        while flusher.lagging and self._reading:
            flusher.wait_caught_up()
        if self._codec is None:
            data = skip_blank(data)
            if not data:
                return True
            self._codec = choose_codec(data, self._config)
        return self._handle_frames(self._codec, self._codec.feed(data))

    def _receive(self, timeout_s: float | None) -> bytes | None:
        """What the client sent (b"" at its end); None if the wait ended without data (the
        timeout passed) or the connection is stopping.

        After a read that filled the buffer more is likely there: it is taken at once (one
        syscall). Otherwise the socket is most likely empty (a client sending a request at a
        time), and the reader waits in poll() first instead of failing a recv (a syscall and an
        exception per request) -- and never in recv(65536), which allocates its 64 KiB result
        before it blocks: 10,000 idle readers would hold 640 MB between them.
        """
        sock = self._sock
        if self._read_more:
            try:
                data = sock.recv(RECV_BYTES, socket.MSG_DONTWAIT)
            except BlockingIOError:
                pass
            else:
                self._read_more = len(data) == RECV_BYTES
                return data
        if self._poller is None:
            self._poller = select.poll()
            self._poller.register(sock, select.POLLIN)
        if not self._poller.poll(None if timeout_s is None else max(0.0, timeout_s) * 1000):
            return None
        if not self._reading:
            return None
        try:
            data = sock.recv(RECV_BYTES, socket.MSG_DONTWAIT)
        except BlockingIOError:  # woken, but the data went (cannot happen: only we read)
            return None
        self._read_more = len(data) == RECV_BYTES
        return data

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
        for frame in frames:
            if not self._reading:  # dropped, closed or stopping
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
        if not isinstance(request, Exit):
            cost = request_cost(request)
            if not self._bucket.take(cost):
                counts_as = f" (this one counts as {cost})" if cost > 1 else ""
                self._reply(
                    ProtocolError(
                        ErrorCode.RATE_LIMITED,
                        f"slow down: at most {self._config.rate_limit:g} requests a "
                        f"second{counts_as}",
                        request.id,
                    ).to_event()
                )
                return True
        registering = isinstance(request, Hello) and self.session.member is None
        # Others deliver to a new member as soon as the room lists it: hold their events until
        # the welcome and the replay are queued, so that those always come first. While a list
        # is answered, too: a change made after its snapshot must not reach the client before
        # the list does (a client keeping the list from events would lose it).
        holding = registering or isinstance(request, ListUsers)
        if holding:
            with self._lock:
                self._held, self._held_bytes, self._registering = [], 0, registering
        try:
            outcome = self._commands.handle(self.session, request)
            if outcome.pending is not None:
                self._store_send(outcome.pending)
                return True
            if outcome.close and self.session.exited:
                # exit ends the session before its bye goes out (after the answers to the
                # sends before it): a client that has its bye can take its name, or its
                # address's place, again at once.
                if self._sends_in_flight:
                    self._wait_for_sends()
                self.end_session()
            replies = b"".join(self._encoder.encode(reply) for reply in outcome.replies)
            if replies:
                self._put(replies)
            if registering:
                # The welcome is queued: presence from now on comes after it (held until the
                # replay is out), since the client may read its welcome and see others join
                # before this hello's handling ends.
                with self._lock:
                    self._registering = False
            self._replay(outcome.replay)
            for event in outcome.after_replay:
                self._reply(event)
        finally:
            if holding:
                self._release_held()
            if registering and self.session.member is not None:
                self._advance(Lifecycle.REGISTERED)
        return not outcome.close

    def _replay(self, pages: Iterable[list[StoredMessage]]) -> None:
        """Queue what the session missed, a page at a time, as fast as the client reads."""
        budget = self._config.max_outbox_bytes
        chunk: list[bytes] = []
        size = last_seq = 0
        try:
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
        except StoreError:  # what was read goes out first; the rest with the next resume
            if chunk:
                self._queue_replayed(chunk, size, last_seq)
            raise
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
        with self._lock:
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

    def _store_send(self, pending: PendingSend) -> None:
        with self._lock:
            self._sends_in_flight += 1
        self._sends.append(pending)
        error = pending.store(self._answer_sends)
        if error is not None:  # refused at once: the store never answers it
            self._sends.pop()
            self._answered(pending.replies(error), 1)

    def _answer_sends(self, results: list[StoredMessage | StoreError]) -> None:
        """The store's thread: the oldest sends in flight are stored and delivered."""
        sends = self._sends
        self._answered([reply for result in results
                        for reply in sends.popleft().replies(result)], len(results))

    def _answered(self, replies: list[Event], count: int) -> None:
        """Queue the replies to `count` sends at once, then count them as answered."""
        encode = self._encoder.encode
        data = b"".join([encode(reply) for reply in replies])
        if not self._outbox.put(data):
            self._drop(REPLIES_UNREAD)
        with self._lock:
            self._sends_in_flight -= count
            if not self._sends_in_flight and self._sends_waiter is not None:
                self._sends_waiter.release()
                self._sends_waiter = None

    def _wait_for_sends(self) -> None:
        """Until every send in hand is answered (the store answers each within its commit)."""
        with self._lock:
            if not self._sends_in_flight:
                return
            waiter = self._sends_waiter = threading.Lock()
            waiter.acquire()
        waiter.acquire()  # released by _answered

    def _finish(self) -> None:
        """The reader's last act: end the session, hand the socket to the flusher."""
        if self._sends_in_flight:  # the bye and the close come after their answers
            self._wait_for_sends()
        if self._state is not Lifecycle.STOPPING or not self._gate.arrive(self):
            self.end_session()
        if self._state is not Lifecycle.STOPPING:  # stopping: the server sends the bye
            self._outbox.close(deadline=time.monotonic() + self._config.close_timeout)
        self._advance(Lifecycle.CLOSED)
        self._outbox.release()
        if self._logged is not None:
            log.info("%s disconnected", self.peer)

    def end_session(self) -> None:
        """The connection is over: the session ends, or goes away (resumable). Called by the
        reader (at exit, or at its end); only the first call (of this and take_session)
        does anything."""
        taken = self.take_session()
        if taken is not None:
            self._commands.disconnect(*taken)

    def take_session(self) -> tuple[Session, int] | None:
        """The session and the last seq queued for it, for the server to end with many others
        at once (Commands.disconnect_many) when the reader arrived at the ShutdownGate; None
        if it was taken or ended already."""
        with self._lock:
            if self._session_over:
                return None
            self._session_over = True
        return self.session, self._delivered_seq

    # --- helpers ----------------------------------------------------------------------------

    def _advance(self, state: Lifecycle) -> bool:
        """Move the lifecycle forward (never back); True if it moved."""
        with self._lock:
            if state <= self._state:
                return False
            self._state = state
            return True

    def _drop(self, reason: str) -> None:
        deadline = time.monotonic() + self._config.close_timeout
        bye = self._encoder.encode(Bye(reason=reason))
        if self._outbox.close(bye, discard=True, deadline=deadline):
            log.warning("%s dropped: %s", self.peer, reason)
            self._advance(Lifecycle.CLOSING)
            self._outbox.shutdown_read()


def run_connection(connection: Connection, on_done: Callable[[Connection], None]) -> None:
    """Thread body: serve the connection, then tell its owner it is gone."""
    try:
        connection.run()
    finally:
        on_done(connection)
