"""The rules of the chat: what each request does and what it answers. No sockets here.

A connection hands every parsed request to `Commands.handle` together with its `Session`;
the result says what to reply, what to replay and whether to close. Deliveries to other users
go through the store (which commits, then hands each message to the room in seq order) and the
room (presence and delivery), never through connection code.
"""

from __future__ import annotations

import hmac
import logging
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from tcp_server.addresses import address_group, describe_group
from tcp_server.admission import Admission
from tcp_server.grace import Deadlines
from tcp_server.lograte import LogRate, held_back
from tcp_server.protocol import (
    EVERYONE,
    WRONG_GATEWAY_SECRET,
    Bye,
    Conversations,
    ErrorCode,
    Event,
    Exit,
    Hello,
    History,
    HistoryPage,
    ListConversations,
    ListUsers,
    MarkRead,
    Message,
    Ping,
    Pong,
    ProtocolError,
    Proxy,
    ReadMarker,
    Request,
    Results,
    Search,
    Send,
    Sent,
    UserInfo,
    Users,
    Welcome,
    format_address,
    name_key,
    query_words,
)
from tcp_server.ratelimit import BucketsByKey, PerMinuteBuckets
from tcp_server.registry import (
    AddressFullError,
    Envelope,
    Member,
    NameTakenError,
    NotHeldError,
    Room,
)
from tcp_server.store import (
    MessageStore,
    NewMessage,
    SendDone,
    SessionId,
    SessionRecord,
    StoredMessage,
    StoreError,
)

log = logging.getLogger(__name__)

TOKEN_BYTES = 24  # 192 bits; 32 URL-safe characters
# Resumes of one session (with --max-joins-per-ip on): a restart or a flapping link takes a
# session back a few times; a loop of resume and reset announces back and away to everyone.
RESUME_BURST = 10
RESUMES_PER_MINUTE = 6
RESUMED_ELSEWHERE = "resumed elsewhere"


@dataclass(slots=True)
class Session:
    """What the core knows about one connection. Owned by that connection's reader thread."""

    ip: str
    port: int
    deliver: Callable[[Envelope], None]
    close: Callable[[str], None] = lambda reason: None
    via: str = "tcp"
    proxied: bool = False
    member: Member | None = None
    record: SessionRecord | None = None
    exited: bool = False
    logged: bool = True  # False: its address floods us, so its comings and goings are not logged
    # The address group charged for this connection at accept (Admission.admit), until it
    # proves itself (registers, or is a gateway's): "" when nothing is charged.
    charged: str = ""

    @property
    def name(self) -> str | None:
        return self.member.info.name if self.member else None

    @property
    def peer(self) -> str:
        return format_address(self.ip, self.port)


# Not frozen (treat it as immutable all the same): one is built for every message, and a
# frozen dataclass is built four times slower (bench/README.md, "The cost per message").
@dataclass(slots=True)
class Outcome:
    replies: list[Event] = field(default_factory=list)
    close: bool = False
    # After the replies: stored messages the connection missed, in pages, oldest first.
    replay: Iterable[list[StoredMessage]] = ()
    after_replay: list[Event] = field(default_factory=list)
    # A send to submit to the store (see PendingSend): the connection answers it when the
    # store is done, and meanwhile handles the next sends (they share a commit).
    pending: PendingSend | None = None


class PendingSend:
    """A send that passed the rules: `store` (or `submit`) hands it to the store, and its
    sender's replies (sent, or unavailable) are `replies(result)` once it is committed and
    delivered."""

    __slots__ = ("_message", "_request", "_store")

    def __init__(self, request: Send, message: NewMessage, store: MessageStore) -> None:
        self._request, self._message, self._store = request, message, store

    def store(self, then: SendDone) -> StoreError | None:
        """Hand the message to the store: `then` gets its result on the store's thread, in
        one list with the results of other sends given the same `then` and committed
        together, in the order they were stored. A store that refuses it at once (closed)
        makes this return the error instead, and `then` is not called for it; one that
        closes as it is queued answers it through `then` (StoreClosed), on this thread."""
        try:
            self._store.submit(self._message, then)
        except StoreError as error:
            return error
        return None

    def replies(self, result: StoredMessage | StoreError) -> list[Event]:
        """What the sender is answered once the store is done with the message."""
        if isinstance(result, StoreError):
            log.error("storing a message failed: %s", result)
            return [ProtocolError(
                ErrorCode.UNAVAILABLE, "the message store failed; try again", self._request.id
            ).to_event()]
        message = self._message
        return [Sent(to=message.to, ts=message.ts, id=self._request.id, seq=result.seq)]

    def submit(self, then: Callable[[list[Event]], None]) -> None:
        """store() for this send alone: `then` gets its replies."""
        error = self.store(lambda results: then(self.replies(results[0])))
        if error is not None:
            then(self.replies(error))


class Commands:
    def __init__(
        self,
        room: Room,
        store: MessageStore,
        gateway_secret: str | None = None,
        resume_grace: float = 120.0,
        clock: Callable[[], float] = time.time,
        max_away: int = 1_000,
        max_per_address: int = 0,
        joins_per_minute: int = 0,
        connects_per_minute: int = 0,
    ) -> None:
        self._room = room
        self._store = store
        self._gateway_secret = gateway_secret.encode() if gateway_secret else None
        self._resume_grace = resume_grace
        self._clock = clock
        self._graces: Deadlines[Member] = Deadlines(self._expire)
        self._secret_failures = LogRate(every=60.0)  # a guesser gets a line a minute
        # Away sessions, oldest first, at most max_away: past it the oldest ends early, so
        # connecting and vanishing in a loop cannot hold names and memory without bound.
        self._max_away = max_away
        self._max_per_address = max_per_address  # sessions registered from one address; 0: any
        # Each new session and each resume is announced to everyone (joined, back; then left,
        # away): a loop of them from one address sent 10.7 MB/s of presence at 990 users.
        # New sessions are counted per address (a burst: everyone an address may hold, at
        # once); resumes per session, so that nobody behind a shared address can spend
        # another user's resumes and cost them their session.
        self._joins = PerMinuteBuckets(joins_per_minute, max_per_address)
        self._resumes = BucketsByKey(RESUMES_PER_MINUTE / 60.0 if joins_per_minute else 0.0,
                                     RESUME_BURST)
        self._joins_refused_log = LogRate(every=60.0)
        self.admission = Admission(connects_per_minute, max_per_address)
        self._away_lock = threading.Lock()
        self._away: OrderedDict[SessionId, Member] = OrderedDict()  # guarded by _away_lock
        # The last seq queued to each away session's ended connection, known here before the
        # room says "away" and before the store has it: a resume that others' `away` prompted
        # (a plain-text client has no `after`) must not replay what that connection had.
        self._delivered_when_away: dict[SessionId, int] = {}  # guarded by _away_lock

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Restore the sessions that were open when the server last stopped, as away."""
        now = self._clock()
        restored = 0
        for record in self._store.open_sessions():
            since = record.away_since if record.away_since is not None else now
            left_s = since + self._resume_grace - now
            info = UserInfo(record.name, record.ip, record.port, record.via)
            away = Member.away(info, record.id)
            if left_s <= 0:
                self._store.end_session(record.id)
                continue
            try:
                self._room.restore(away)
            except NameTakenError:
                self._store.end_session(record.id)
                continue
            self._store.set_away(record.id, since, record.delivered_seq)
            self._graces.schedule(away, time.monotonic() + left_s)
            self._note_away(away)
            restored += 1
        if restored:
            log.info("restored %d sessions as away", restored)
        self._graces.start()

    def stop(self) -> None:
        self._graces.stop()

    # --- requests ---------------------------------------------------------------------------

    def handle(self, session: Session, request: Request) -> Outcome:
        """Apply one request. ProtocolErrors become error replies here, at one boundary."""
        try:
            return self._dispatch(session, request)
        except ProtocolError as error:
            return Outcome([error.to_event()], close=error.code.closes_connection)
        except StoreError as error:
            log.error("%s: %s", session.peer, error)
            unavailable = ProtocolError(
                ErrorCode.UNAVAILABLE, "the message store failed; try again", request.id
            )
            return Outcome([unavailable.to_event()])

    def disconnect(self, session: Session, delivered_seq: int) -> None:
        """The connection is ending. Its session ends (left) after exit or with no grace;
        otherwise it goes away and ends when the grace runs out unless resumed."""
        self.disconnect_many([(session, delivered_seq)])

    def disconnect_many(self, sessions: Sequence[tuple[Session, int]]) -> None:
        """disconnect() for many connections (session, delivered_seq) at once: those going
        away are recorded in one write of the store (a server stopping with 10,000)."""
        going: list[tuple[Session, Member, int]] = []
        for session, delivered_seq in sessions:
            member, record = session.member, session.record
            if member is None or record is None:
                continue
            if session.exited or self._resume_grace <= 0:
                self._leave(session, member, record)
                continue
            with self._away_lock:
                self._delivered_when_away[record.id] = delivered_seq
            away = self._room.away(member)
            if away is None:  # taken over by another connection, or the server is stopping
                with self._away_lock:
                    self._delivered_when_away.pop(record.id, None)
                continue
            going.append((session, away, delivered_seq))
        if not going:
            return
        since = self._clock()
        try:
            self._store.set_away_many([(away.session, since, delivered_seq)
                                       for _, away, delivered_seq in going])
        except StoreError as error:  # a stopping server that could not wait for these
            # They are away all the same; the next start restores them from what is stored.
            log.error("the store did not record %d sessions as away: %s", len(going), error)
        deadline = time.monotonic() + self._resume_grace
        for session, away, _ in going:
            self._graces.schedule(away, deadline)
            if session.logged:
                log.info("%s disconnected; %s is away", session.peer, away.info.name)
            self._note_away(away)

    def _leave(self, session: Session, member: Member, record: SessionRecord) -> None:
        try:
            if self._room.leave(member):
                self._store.end_session(record.id)
                if session.logged:
                    log.info("%s left as %s", session.peer, member.info.name)
        except StoreError as error:
            log.error("%s: the store did not record the end of its session: %s",
                      session.peer, error)

    def _note_away(self, away: Member) -> None:
        with self._away_lock:
            self._away[away.session] = away
            oldest = self._away.popitem(last=False)[1] if len(self._away) > self._max_away else None
            if oldest is not None:
                self._delivered_when_away.pop(oldest.session, None)
        if oldest is not None:
            log.warning("more than %d sessions away: %s's ends early", self._max_away,
                        oldest.info.name)
            self._expire(oldest)

    def _not_away(self, away: Member) -> None:
        with self._away_lock:
            if self._away.get(away.session) is away:
                del self._away[away.session]
                self._delivered_when_away.pop(away.session, None)

    def _expire(self, away: Member) -> None:
        self._not_away(away)
        if self._room.expire(away):
            self._store.end_session(away.session)
            log.info("%s left: the session's grace period ended", away.info.name)

    def _dispatch(self, session: Session, request: Request) -> Outcome:
        match request:
            case Ping(id=rid):
                return Outcome([Pong(id=rid)])
            case Exit(id=rid):
                session.exited = True
                return Outcome([Bye(id=rid)], close=True)
            case Proxy():
                return self._proxy(session, request)
            case Hello():
                return self._hello(session, request)
        if session.member is None or session.record is None:
            raise ProtocolError(
                ErrorCode.NOT_REGISTERED, 'say hello with a name first', request.id
            )
        record = session.record
        match request:
            case ListUsers(id=rid):
                return Outcome([Users(users=self._room.users(), id=rid)])
            case Send():
                return self._send(session.member.info.name, record, request)
            case History():
                return Outcome([self._history(record, request)])
            case Search(q=q, limit=limit, id=rid):
                found = self._store.search(record.id, query_words(q), limit)
                return Outcome([Results(q=q, messages=_events(found), id=rid)])
            case MarkRead(with_=with_, seq=seq, id=rid):
                marker = self._store.mark_read(record.id, with_, seq)
                return Outcome([ReadMarker(with_=with_, seq=marker, id=rid)])
            case ListConversations(id=rid):
                listed = self._store.conversations(record)
                return Outcome([Conversations(conversations=tuple(listed), id=rid)])
        raise AssertionError(f"unhandled request {request!r}")

    def _proved(self, session: Session) -> None:
        """The connection registered or is a gateway's: its charge at accept comes back."""
        self.admission.release(session.charged)
        session.charged = ""

    def _proxy(self, session: Session, request: Proxy) -> Outcome:
        rid = request.id
        if session.member is not None or session.proxied:
            raise ProtocolError(
                ErrorCode.FORBIDDEN, "proxy is only allowed once, before hello", rid
            )
        if self._gateway_secret is None:
            raise ProtocolError(
                ErrorCode.FORBIDDEN, "this server accepts no gateway connections", rid
            )
        # surrogatepass: a JSON "\ud800" in the secret is a wrong secret, not a crash.
        if not hmac.compare_digest(
            request.secret.encode("utf-8", "surrogatepass"), self._gateway_secret
        ):
            held = self._secret_failures.allow(address_group(session.ip))
            if held is not None:
                log.warning("%s sent a proxy request with a wrong secret%s", session.peer,
                            held_back(held, "from this address in the last minute"))
            raise ProtocolError(ErrorCode.FORBIDDEN, WRONG_GATEWAY_SECRET, rid)
        log.info("%s is a gateway for browser %s:%d", session.peer, request.ip, request.port)
        self.admission.gateway_at(session.ip)
        self._proved(session)
        session.ip, session.port, session.via, session.proxied = (
            request.ip, request.port, "web", True
        )
        return Outcome()

    def _taken_message(self, name: str) -> str:
        # Said whoever holds it: a user whose tab closed or whose client was killed finds the
        # name still theirs-but-away, and "taken" alone reads like someone else has it.
        if self._resume_grace <= 0:
            return f"the name {name} is taken"
        return (f"the name {name} is taken (a user whose connection ended keeps the name "
                f"for up to {self._resume_grace:g} s, to resume)")

    def _hello(self, session: Session, request: Hello) -> Outcome:
        if session.member is not None:
            raise ProtocolError(
                ErrorCode.ALREADY_REGISTERED,
                f"you are already registered as {session.member.info.name}",
                request.id,
            )
        if request.resume is not None:
            return self._resume(session, request, request.resume)
        taken = ProtocolError(ErrorCode.NAME_TAKEN, self._taken_message(request.name), request.id)
        if self._room.is_taken(request.name):
            raise taken
        if self._max_per_address and (
            self._room.sessions_from(session.ip) >= self._max_per_address
        ):
            raise self._address_full(session, request)
        group = address_group(session.ip)
        self._take(self._joins, group, session, request, f"too many new users from "
                   f"{describe_group(session.ip)} "
                   f"({self._joins.describe()})")
        try:
            return self._join(session, request, taken)
        except (ProtocolError, StoreError):
            if session.member is None:  # nobody joined: it does not count
                self._joins.give_back(group)
            raise

    def _join(self, session: Session, request: Hello, taken: ProtocolError) -> Outcome:
        token = secrets.token_urlsafe(TOKEN_BYTES)
        record = self._store.open_session(
            request.name, token, session.ip, session.port, session.via
        )
        info = UserInfo(name=request.name, ip=session.ip, port=session.port, via=session.via)
        member = Member(info, record.id, deliver=session.deliver, close=session.close)
        try:  # checked again, atomically: other connections may have registered since
            self._room.join(member, self._max_per_address)
        except NameTakenError:
            self._abandon(record)
            raise taken from None
        except AddressFullError:
            self._abandon(record)
            raise self._address_full(session, request) from None
        except StoreError:  # the room's engine failed (Redis): `unavailable`, nothing kept
            self._abandon(record)
            raise
        session.member, session.record = member, record
        self._proved(session)
        if session.logged:
            log.info("%s registered as %s (via %s)", session.peer, request.name, session.via)
        welcome = Welcome(
            name=info.name, ip=info.ip, port=info.port, id=request.id, session=token,
            seq=record.start_seq, resumed=False,
        )
        # Messages committed between the session's start and its joining the room reached
        # it through neither: the replay (usually empty) closes that gap.
        return Outcome(
            [welcome], replay=self._store.missed(record, record.start_seq),
            after_replay=self._recent(record, request.recent),
        )

    def _abandon(self, record: SessionRecord) -> None:
        """End a session opened for a hello that then failed: nobody holds its token."""
        try:
            self._store.end_session(record.id)
        except StoreError as error:  # the same outage, most likely; the hello fails anyway
            log.warning("could not end the unused session %d: %s", record.id, error)

    def _address_full(self, session: Session, request: Hello) -> ProtocolError:
        return ProtocolError(
            ErrorCode.TOO_MANY_FROM_ADDRESS,
            f"{self._max_per_address} users are already registered from "
            f"{describe_group(session.ip)}; one of them must exit first",
            request.id,
        )

    def _take(self, buckets: BucketsByKey, key: str, session: Session, request: Hello,
              why: str) -> None:
        """Spend a token of `key` for a hello about to be announced, or refuse the hello."""
        if buckets.take(key) is not None:
            return
        held = self._joins_refused_log.allow(address_group(session.ip))
        if held is not None:
            log.warning("%s: hello refused: %s%s", session.peer, why,
                        held_back(held, "refusals from this address in the last minute"))
        raise ProtocolError(
            ErrorCode.RATE_LIMITED, f"slow down: {why}; try again in a few seconds", request.id
        )

    def _resume(self, session: Session, request: Hello, token: str) -> Outcome:
        expired = ProtocolError(
            ErrorCode.SESSION_EXPIRED,
            "that session has ended or does not exist; say hello without resume",
            request.id,
        )
        record = self._store.find_session(token)
        if record is None or name_key(record.name) != name_key(request.name):
            raise expired
        key = str(record.id)
        self._take(self._resumes, key, session, request, f"this session was taken back "
                   f"too often (at most {RESUMES_PER_MINUTE} times a minute after the first "
                   f"{RESUME_BURST})")
        try:
            return self._take_back(session, request, token, record, expired)
        except (ProtocolError, StoreError):
            if session.member is None:  # not resumed (refused, or the room unavailable)
                self._resumes.give_back(key)
            raise

    def _take_back(self, session: Session, request: Hello, token: str, record: SessionRecord,
                   expired: ProtocolError) -> Outcome:
        """The resume itself, once it is counted (see _resume)."""
        info = UserInfo(name=record.name, ip=session.ip, port=session.port, via=session.via)
        member = Member(info, record.id, deliver=session.deliver, close=session.close)
        try:
            previous = self._room.resume(member, self._max_per_address)
        except NotHeldError:
            raise expired from None
        except AddressFullError:
            raise self._address_full(session, request) from None
        if previous is not None:
            previous.close(RESUMED_ELSEWHERE)
        with self._away_lock:
            self._away.pop(record.id, None)
            delivered = max(record.delivered_seq, self._delivered_when_away.pop(record.id, 0))
        session.member, session.record = member, record
        try:
            self._store.reconnect_session(record.id, session.ip, session.port, session.via)
        except StoreError:
            # The room has given the session to this connection and said `back`, but the
            # client is told `unavailable`: the session goes away again (its grace running),
            # rather than stay online for a connection that does not know it holds it.
            self.disconnect(session, delivered)
            session.member = session.record = None
            raise
        self._proved(session)
        after = request.after if request.after is not None else delivered
        if session.logged:
            log.info("%s resumed the session of %s after seq %d", session.peer, record.name, after)
        welcome = Welcome(
            name=record.name, ip=session.ip, port=session.port, id=request.id, session=token,
            seq=self._store.last_seq(), resumed=True,
            truncated=self._store.pruned_upto() > max(after, record.start_seq),
        )
        return Outcome([welcome], replay=self._store.missed(record, after))

    def _recent(self, record: SessionRecord, count: int) -> list[Event]:
        if count <= 0:
            return []
        messages, more = self._store.history(record.id, EVERYONE, None, count)
        return [HistoryPage(with_=EVERYONE, messages=_events(messages), more=more)]

    def _history(self, record: SessionRecord, request: History) -> HistoryPage:
        messages, more = self._store.history(
            record.id, request.with_, request.before, request.limit
        )
        return HistoryPage(
            with_=request.with_, messages=_events(messages), more=more, id=request.id
        )

    def _send(self, sender: str, record: SessionRecord, request: Send) -> Outcome:
        ts = round(self._clock(), 3)
        if request.to == EVERYONE:
            to, recipient_session = EVERYONE, None
        else:
            found = self._room.recipient(request.to)
            if found is None:
                raise ProtocolError(
                    ErrorCode.NO_SUCH_USER,
                    f"no user named {request.to[:40]!r} is online", request.id,
                )
            to, recipient_session = found
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s -> %s: %r", sender, to, request.text)
        message = NewMessage(ts, sender, record.id, to, recipient_session, request.text)
        return Outcome(pending=PendingSend(request, message, self._store))


def _events(messages: list[StoredMessage]) -> tuple[Message, ...]:
    return tuple(message.event() for message in messages)
