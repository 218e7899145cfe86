"""The user's session with the core, across connections: it survives a lost connection.

A Session starts from a welcomed connection. Its thread, "events-NAME", shows what arrives (as the
printer did before) and, when the connection ends without the client asking for it (the server
closed it, a reset, a core restart, a ping without pong), says so and takes the session back:
it connects again with a jittered, capped exponential backoff (cli_client/backoff.py) and says
`hello` with `resume` = the session token of the last welcome and `after` = the highest seq it
has shown. The messages missed meanwhile then arrive first, in order; any seq already shown is
skipped, so each appears exactly once (docs/history-and-sessions.md, "Resume").

It gives up, says why and interrupts the menu (the client then exits 1) when the session
cannot be resumed (`session_expired`, the name taken, the session resumed elsewhere), when the
server gives no session token (a core without sessions), or after `reconnect_for_s` seconds
without success.

The main thread makes requests through request(), which waits (a bounded time) for a
reconnection in progress, and ends the session with end(). Who touches what:
- `_lock` guards `_state`, `_connection`, `_attempting` (the connection of a reconnection
  attempt not yet welcomed, which end() and close() abort rather than wait for) and
  `_sent_floor` (see sent_floor()); `_changed`
  (on `_lock`) is notified whenever the state or the connection changes, for request()
  waiting for a reconnection;
- `_seen` and `_token` belong to the events thread (it sets them while the main thread waits
  in request() or end() for it, never at the same time);
- `_stop` is set by end() and close(): it wakes the events thread out of a backoff delay.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from cli_client.backoff import BASE_DELAY_S, MAX_DELAY_S, Backoff
from cli_client.connection import (
    REPLY_TIMEOUT_S,
    BadLine,
    ConnectionClosed,
    ReplyTimeout,
    ServerConnection,
)
from cli_client.console import Console
from cli_client.render import printable, render_bye, render_event
from tcp_server.display import EXPIRED_SESSION
from tcp_server.protocol import (
    Bye,
    Error,
    ErrorCode,
    Event,
    Exit,
    Hello,
    Message,
    Request,
    Sent,
    UserInfo,
    Welcome,
)

log = logging.getLogger(__name__)

RECONNECT_FOR_S: Final = 600.0
# How long a menu request waits for a reconnection in progress before telling the user.
WAIT_FOR_RECONNECT_S: Final = 30.0
BYE_TIMEOUT_S: Final = 5.0
# A reconnection's hello is answered at once by a working core; a later answer means try again.
RESUME_REPLY_TIMEOUT_S: Final = 5.0
# The events thread ends at once when the stream ends; a reconnection attempt under way when
# the user exits takes at most a connect timeout and a resume reply timeout.
JOIN_TIMEOUT_S: Final = 12.0
# The core's bye to a connection whose session another connection took (the protocol's words).
RESUMED_ELSEWHERE: Final = "resumed elsewhere"

Connect = Callable[[], ServerConnection]


class NotConnected(Exception):
    """A request waited for a reconnection in progress, in vain (it goes on meanwhile)."""


class SessionEnded(ConnectionClosed):
    """The session is over: it could not be resumed, or the user ended it."""


class LinkState(enum.Enum):
    CONNECTED = "connected"
    RECONNECTING = "reconnecting"
    ENDING = "ending"  # end() was called: no more reconnecting
    ENDED = "ended"  # given up (lost) or said goodbye


@dataclass(frozen=True, slots=True)
class ReconnectPolicy:
    """How hard to try to take the session back. Times in seconds."""

    reconnect_for_s: float = RECONNECT_FOR_S  # in all, from the moment the connection was lost
    base_delay_s: float = BASE_DELAY_S
    max_delay_s: float = MAX_DELAY_S
    wait_for_reconnect_s: float = WAIT_FOR_RECONNECT_S  # a menu request, see request()


class SeenMessages:
    """The highest message seq shown so far: the resume point, and the filter of repeats.

    A connection delivers messages in increasing seq order and a resume replays only those
    after the seq given, so a message whose seq is not above the highest shown was shown
    already (docs/history-and-sessions.md, "Message ids"). A message without a seq (0, from a
    core that has none) is always new.
    """

    def __init__(self, highest: int = 0) -> None:
        self.highest = highest

    def first_time(self, message: Message) -> bool:
        """Whether `message` is new; if so it counts as seen from now on."""
        if message.seq == 0:
            return True
        if message.seq <= self.highest:
            return False
        self.highest = message.seq
        return True


class Session:
    """The session welcomed on `connection`, kept alive across reconnections."""

    def __init__(
        self,
        connection: ServerConnection,
        welcome: Welcome,
        connect: Connect,
        console: Console,
        policy: ReconnectPolicy | None = None,
        *,
        backoff: Backoff | None = None,
        clock: Callable[[], float] = time.time,
        heartbeat: Callable[[ServerConnection], None] = ServerConnection.start_heartbeat,
    ) -> None:
        self.name = welcome.name
        # Messages up to this seq were not sent by this session (an earlier holder of the
        # name may have sent some).
        self.started_seq = welcome.seq
        self._connect = connect
        self._console = console
        self._policy = policy or ReconnectPolicy()
        self._backoff = backoff or Backoff(self._policy.base_delay_s, self._policy.max_delay_s)
        self._clock = clock
        self._heartbeat = heartbeat
        self._token = welcome.session
        # A new session is owed only what comes after its welcome.
        self._seen = SeenMessages(welcome.seq)
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._state = LinkState.CONNECTED
        self._connection: ServerConnection | None = connection
        self._attempting: ServerConnection | None = None
        self._sent_floor = welcome.seq
        self._lost = False  # guarded by _lock: ended without the user asking
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"events-{self.name}")

    @property
    def lost(self) -> bool:
        """Whether the session ended without the user asking for it."""
        with self._lock:
            return self._lost

    @property
    def state(self) -> LinkState:
        with self._lock:
            return self._state

    def sent_floor(self) -> int:
        """A seq that every message this session sends from now on will be above: the store's
        seq at the last welcome, or the seq of the last message it sent, whichever is higher.
        (Seqs only grow, and a message gets its seq when the server takes it.)"""
        with self._lock:
            return self._sent_floor

    def start(self) -> None:
        """Start the heartbeat of the first connection and the events thread."""
        with self._lock:
            connection = self._connection
        assert connection is not None
        self._heartbeat(connection)
        self._thread.start()

    def request(
        self, request: Request, timeout: float = REPLY_TIMEOUT_S, *, resend: bool = True
    ) -> Event:
        """Send `request` on the current connection and return the reply.

        While a reconnection is under way, waits for it up to the policy's
        wait_for_reconnect_s (NotConnected after that). If the connection ends after the
        request was written, it is sent again on the next connection when `resend` (for
        requests that may safely be done twice); otherwise ConnectionClosed(written=True) says
        that the server may or may not have acted on it. SessionEnded: the session is over.
        """
        dead: ServerConnection | None = None
        while True:
            connection = self._wait_connected(dead)
            try:
                reply = connection.request(request, timeout)
            except ConnectionClosed as error:
                if error.written and not resend:
                    raise
                dead = connection
                continue
            if isinstance(reply, Sent):
                with self._lock:
                    self._sent_floor = max(self._sent_floor, reply.seq)
            return reply

    def known_users(self) -> tuple[UserInfo, ...] | None:
        """Everyone in the room as the current connection knows it from a `users` reply and
        the events since (cli_client/roster.py); None when it has none yet, or while
        reconnecting (then ask with request(ListUsers()), which also fills it in)."""
        with self._lock:
            connection = self._connection if self._state is LinkState.CONNECTED else None
        return None if connection is None else connection.roster.users()

    def end(self) -> bool:
        """Say exit and wait for the server's bye, then close. True when the bye came.

        Called by the main thread for Exit, Ctrl-C, Ctrl-D and the end of piped input. During a
        reconnection, the backoff is cut short and an attempt not yet welcomed is abandoned;
        one attempt is made at once instead, so that the session ends on the server (the others
        see `left`) rather than staying away until its grace runs out. What that connection
        replays before the bye is shown.
        """
        with self._lock:
            ended = self._state is LinkState.ENDED
            if not ended:
                self._state = LinkState.ENDING
            connection = self._connection
            attempting = self._attempting
            self._changed.notify_all()
        self._stop.set()
        if attempting is not None:
            attempting.abort()  # a core that does not answer must not hold up the goodbye
        if ended:
            self._join()
            return False
        undrained = False  # a connection the events thread never read from
        if connection is None or connection.closed:
            dead = connection
            self._join()  # a reconnection under way may still leave its connection behind
            with self._lock:
                connection = self._connection
            if connection is not None and connection is not dead and connection.closed:
                connection.close()
                connection = None
            if connection is None or connection is dead:
                connection = self._resume_once()
            undrained = connection is not None
        said_bye = False
        if connection is not None:
            try:
                said_bye = isinstance(connection.request(Exit(), timeout=BYE_TIMEOUT_S), Bye)
            except (ConnectionClosed, ReplyTimeout, KeyboardInterrupt):
                said_bye = False
            connection.close()
        self._join()
        if connection is not None and undrained:
            # What came on it before the bye (a replay of missed messages) is shown too; the
            # stream has ended, so this returns once it is shown.
            self._show_events(connection)
        with self._lock:
            self._state = LinkState.ENDED
            self._connection = None
            self._changed.notify_all()
        return said_bye

    def close(self) -> None:
        """Stop without a goodbye (the session has ended or the client is failing)."""
        with self._lock:
            if self._state is not LinkState.ENDED:
                self._state = LinkState.ENDING
            connection = self._connection
            attempting = self._attempting
            self._changed.notify_all()
        self._stop.set()
        if attempting is not None:
            attempting.abort()
        if connection is not None:
            connection.close()
        self._join()
        with self._lock:
            self._state = LinkState.ENDED
            self._connection = None
            self._changed.notify_all()

    def _join(self) -> None:
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(JOIN_TIMEOUT_S)
            if self._thread.is_alive():
                log.warning("the events thread did not stop")

    def _wait_connected(self, dead: ServerConnection | None) -> ServerConnection:
        """The current connection, if it is not `dead`; else wait (bounded) for a new one."""
        announced = False
        deadline = time.monotonic() + self._policy.wait_for_reconnect_s
        while True:
            with self._changed:
                if self._state in (LinkState.ENDING, LinkState.ENDED):
                    raise SessionEnded
                connection = self._connection
                if (self._state is LinkState.CONNECTED and connection is not None
                        and connection is not dead):
                    return connection
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise NotConnected
                if announced or self._state is not LinkState.RECONNECTING:
                    self._changed.wait(remaining)
                    continue
            announced = True  # said once, outside the lock
            self._console.show("Waiting for the connection to the server to come back (up to "
                               f"{self._policy.wait_for_reconnect_s:g} s)...")

    def _resume_once(self) -> ServerConnection | None:
        """One immediate attempt to take the session back (the events thread has ended)."""
        outcome = self._attempt(by_events_thread=False)
        return outcome if isinstance(outcome, ServerConnection) else None

    # --- the events thread ------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                with self._lock:
                    connection = self._connection
                assert connection is not None
                bye = self._show_events(connection)
                if self._stop.is_set():
                    return
                if bye is not None:
                    self._console.show(render_bye(bye))
                if bye is not None and bye.reason == RESUMED_ELSEWHERE:
                    self._give_up("This session was taken over by another connection.")
                    return
                if not self._token:
                    self._give_up("Connection to the server lost.")
                    return
                self._console.show("Connection to the server lost; reconnecting...")
                if not self._reconnect(connection):
                    return
        except BrokenPipeError:  # whoever read our output has gone: end the session
            self._give_up(None)
        except Exception:  # a bug must not leave the menu waiting for a session that is gone
            log.exception("the events thread failed")
            self._give_up("Connection to the server lost.")

    def _show_events(self, connection: ServerConnection) -> Bye | None:
        """Show the events of `connection` until its stream ends; the server's own bye, if any,
        is returned rather than shown (it is said together with what follows)."""
        bye: Bye | None = None
        while (item := connection.events.get()) is not None:
            if isinstance(item, BadLine):
                self._console.show(f"Ignored a malformed line from the server: {item.problem}")
                continue
            if isinstance(item, Bye) and item.id is None:
                bye = item
                continue
            if isinstance(item, Message) and not self._seen.first_time(item):
                continue
            text = render_event(item, self._clock())
            if text is not None:
                self._console.show(text)
        return bye

    def _reconnect(self, old: ServerConnection) -> bool:
        """Take the session back on a new connection; False when given up (already said)."""
        with self._changed:
            if self._state is LinkState.CONNECTED:
                self._state = LinkState.RECONNECTING
            self._connection = None
            self._changed.notify_all()
        old.close()
        deadline = time.monotonic() + self._policy.reconnect_for_s
        while True:
            delay = self._backoff.next_delay()
            if time.monotonic() + delay > deadline:
                self._give_up(
                    "Could not reconnect to the server within "
                    f"{self._policy.reconnect_for_s:g} s; giving up."
                )
                return False
            if self._stop.wait(delay):
                return False
            outcome = self._attempt()
            if isinstance(outcome, ServerConnection):
                return self._resumed(outcome)
            if outcome is not None:
                self._give_up(outcome)
                return False

    def _attempt(self, by_events_thread: bool = True) -> ServerConnection | str | None:
        """One reconnection: the new connection; or why the session cannot be resumed; or
        None to try again later. The events thread's attempts are aborted by end() and
        close(); end()'s own last attempt is not."""
        try:
            connection = self._connect()
        except OSError as error:
            log.debug("reconnect: %s", error)
            return None
        with self._lock:
            if by_events_thread:
                self._attempting = connection
            stopping = by_events_thread and self._stop.is_set()
        try:
            if stopping:  # end() or close() came between connecting and here
                connection.abort()
            reply = connection.request(
                Hello(name=self.name, resume=self._token, after=self._seen.highest),
                timeout=RESUME_REPLY_TIMEOUT_S,
            )
        except (ConnectionClosed, ReplyTimeout) as error:
            log.debug("reconnect: no welcome: %r", error)
            connection.close()
            return None
        finally:
            with self._lock:
                self._attempting = None
        if isinstance(reply, Welcome):
            self._token = reply.session or self._token
            with self._lock:
                self._sent_floor = max(self._sent_floor, reply.seq)
            if reply.truncated:
                # Shown before the replay the server sends next (the events thread shows
                # those only after this returns).
                self._console.show("Some of the messages sent while you were away are no "
                                   "longer kept by the server and cannot be shown.")
            return connection
        connection.close()
        if isinstance(reply, Error) and reply.code in (ErrorCode.SESSION_EXPIRED,
                                                       ErrorCode.NAME_TAKEN):
            why = (EXPIRED_SESSION if reply.code == ErrorCode.SESSION_EXPIRED
                   else printable(reply.message))
            return (f"Your session could not be resumed: {why}. "
                    "Start the client again to join afresh.")
        if isinstance(reply, Error):
            log.info("reconnect refused: %s", reply.message)
        return None

    def _resumed(self, connection: ServerConnection) -> bool:
        self._backoff.reset()
        with self._changed:
            self._connection = connection
            if self._state is LinkState.RECONNECTING:
                self._state = LinkState.CONNECTED
            ending = self._state is not LinkState.CONNECTED
            self._changed.notify_all()
        if ending:
            return False  # end() says goodbye on it
        self._heartbeat(connection)
        self._console.show(f"Reconnected as {printable(self.name)}.")
        return True

    def _give_up(self, reason: str | None) -> None:
        with self._changed:
            if self._state in (LinkState.ENDING, LinkState.ENDED):
                return  # the user is ending the session: nothing was lost
            self._state = LinkState.ENDED
            self._lost = True
            self._changed.notify_all()
        if reason is not None:
            self._console.show(reason)
        self._console.interrupt()
