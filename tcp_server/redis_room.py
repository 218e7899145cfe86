"""The room of several core nodes: presence in Redis, delivery by Redis pub/sub. The same
`Room` interface as `LocalRoom` (tcp_server/registry.py); connections and commands do not
change (docs/operations.md, "Several nodes: Redis").

Presence: `chat:users` holds every member of the room (name, address, via, status, session,
the node holding its connection, and `conn`, an id of the connection or away state that holds
the session). Every change is one Lua script (tcp_server/redis_keys.py) that checks and
changes the member and publishes the event atomically, so a name raced on two nodes is given
once, and a stale connection (one whose session was resumed elsewhere) changes nothing.

Delivery: one subscriber thread per node receives the events channel, messages and presence
in one order (seq order for messages: the SEND script increments, stores and publishes in one
step), and hands each event to the local connections it concerns, through their outboxes.
When the subscription breaks (Redis restarted, network), the thread subscribes again and then
delivers what was stored after the last seq it delivered before taking live ones again
(Centrifugo's recovery), skipping any publication at or below that seq: live clients miss
nothing and get nothing twice. Presence events published while it was cut off are not
replayed (lists are read from Redis whenever asked).

Nodes: a heartbeat thread renews this node's entry in `chat:nodes` every node_timeout / 3 and
sweeps: the members of a node silent for node_timeout are marked away (if online) and adopted
by the sweeping node, which ends each at the end of its grace (unless it was resumed). A node
starting with the id of a node that died takes its own stale members back the same way, and a
node stopping cleanly marks its heartbeat old so that the others adopt its members at once.

Redis unavailable: requests that need it raise RedisUnavailable (answered `unavailable`). When
Redis is back (or when this node learns it was taken for dead), it reconciles: its members
whose connection ended meanwhile go away, and its connections whose session was changed by
another node are closed (their clients resume).
"""

from __future__ import annotations

import itertools
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import redis

from tcp_server.addresses import address_group
from tcp_server.commands import RESUMED_ELSEWHERE
from tcp_server.grace import Deadlines
from tcp_server.protocol import AWAY, ONLINE, Away, Back, Event, Joined, Left, UserInfo, name_key
from tcp_server.redis_keys import (
    AWAY as AWAY_SCRIPT,
)
from tcp_server.redis_keys import (
    BEAT,
    END,
    JOIN,
    RECOUNT_ADDRESSES,
    RESUME,
    RETIRE,
    Keys,
    RedisUnavailable,
    connect,
    database,
    decode_message,
    encode_record,
    unavailable_on_failure,
)
from tcp_server.registry import (
    AddressFullError,
    Envelope,
    Member,
    NameTakenError,
    NotHeldError,
)
from tcp_server.store import SessionId, StoredMessage, StoreError

log = logging.getLogger(__name__)

CATCH_UP_PAGE: Final = 1_000
RETRY_EXPIRE_S: Final = 2.0
MAX_BACKOFF_S: Final = 5.0
INTERRUPTED = "the server lost track of your session; resume it"
_EVENTS: Final[dict[str, type[Joined | Left | Away | Back]]] = {
    "joined": Joined, "left": Left, "away": Away, "back": Back,
}


@dataclass(frozen=True, slots=True)
class _Adopted:
    """An away session whose grace this node runs: from a dead node, or whose end failed."""

    name: str
    session: SessionId
    conn: str


class RedisRoom:
    """Presence and delivery across nodes. `_lock` guards `_online` (this node's connections:
    session -> (member, conn)), `_heard`, `_subscriptions`, `_away` (the away members this
    node made, for expire) and `_quiet`. `_delivered` is the subscriber thread's own."""

    def __init__(
        self,
        url: str,
        node_id: str,
        node_timeout: float = 10.0,
        resume_grace: float = 120.0,
        keys: Keys | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._node = node_id
        self._node_timeout = node_timeout
        self._resume_grace = resume_grace
        self._clock = clock
        self._redis = connect(url)
        self._keys = keys or Keys(db=database(self._redis))
        # The subscriber's client never retries by itself: a broken subscription must be seen,
        # so that what was published meanwhile is caught up from the stored messages.
        self._sub_redis = connect(url, retries=0)
        self._join = self._redis.register_script(JOIN)
        self._resume = self._redis.register_script(RESUME)
        self._away_script = self._redis.register_script(AWAY_SCRIPT)
        self._end = self._redis.register_script(END)
        self._beat = self._redis.register_script(BEAT)
        self._retire = self._redis.register_script(RETIRE)
        self._recount = self._redis.register_script(RECOUNT_ADDRESSES)
        self._lock = threading.Lock()
        self._online: dict[SessionId, tuple[Member, str]] = {}
        # Per session of this node, the conn whose own joined/back the subscriber has passed:
        # presence goes to a connection only after that, so a change published before it
        # registered (its list shows it) never reaches it late. Cleared by away/left events.
        self._heard: dict[SessionId, str] = {}
        self._subscriptions = 0  # subscriptions made so far (see _subscribed_again)
        self._away: dict[SessionId, tuple[Member, str]] = {}
        self._quiet = False
        # The last users() answer and the raw records it was made from (see users()).
        self._last_users: tuple[list[Any], tuple[UserInfo, ...]] | None = None
        self._conns = itertools.count(1)
        self._conn_prefix = f"{node_id}/{time.time_ns()}/"
        self._end_session: Callable[[SessionId], None] = lambda session: None
        self._graces: Deadlines[_Adopted] = Deadlines(self._expire_adopted, name="redis-grace")
        self._stopping = threading.Event()
        self._delivered = -1  # the last seq delivered; -1: not subscribed yet
        self._subscribed = threading.Event()
        self._subscriber = threading.Thread(target=self._subscribe_loop, name="redis-subscriber")
        self._heart = threading.Thread(target=self._heartbeat_loop, name="redis-heartbeat")
        self._lost = False  # heartbeat thread's: Redis failed since the last reconcile

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self, end_session: Callable[[SessionId], None], wait: float = 5.0) -> None:
        """Take back this node id's stale members, then start the threads. `end_session`
        ends a session in the store when a grace this node runs is over."""
        self._end_session = end_session
        self._graces.start()
        try:
            self._sweep(also=self._node)
            self._recount(keys=[self._keys.users, self._keys.addrs])
        except redis.RedisError as error:
            log.error("redis: cannot reach Redis yet (%s); trying again in the background",
                      error)
            self._lost = True
        self._subscriber.start()
        self._heart.start()
        if not self._subscribed.wait(wait):
            log.error("redis: not subscribed after %.0f s; messages wait until it is", wait)

    def close(self) -> None:
        """Stop the threads; the other nodes adopt this node's away members at once."""
        self._stopping.set()
        if self._heart.ident is not None:
            self._heart.join()
        try:
            self._retire(keys=[self._keys.nodes], args=[self._node])
        except redis.RedisError as error:
            log.warning("redis: could not retire node %s (%s): others adopt its members "
                        "after the node timeout", self._node, error)
        if self._subscriber.ident is not None:
            self._subscriber.join()
        self._graces.stop()
        self._redis.close()
        self._sub_redis.close()

    def shutdown(self) -> None:
        with self._lock:
            self._quiet = True

    # --- the Room interface ------------------------------------------------------------------

    def _record(self, info: UserInfo, session: SessionId, conn: str, status: str,
                since: float | None = None) -> dict[str, Any]:
        return {"name": info.name, "ip": info.ip, "group": address_group(info.ip),
                "port": info.port, "via": info.via, "status": status, "session": session,
                "conn": conn, "node": self._node, "since": since}

    def _event(self, kind: str, name: str, session: SessionId, **more: Any) -> str:
        return "p" + encode_record({"k": kind, "name": name, "s": session, **more})

    def _new_conn(self) -> str:
        return self._conn_prefix + str(next(self._conns))

    def _check_subscribed(self) -> None:
        """Members are taken only once this node receives the room's events: a message
        published before the first subscription would reach no one here."""
        if not self._subscribed.is_set():
            raise RedisUnavailable("redis: this node is not receiving the room's events yet")

    def join(self, member: Member, max_per_address: int = 0) -> None:
        self._check_subscribed()
        info, k, conn = member.info, self._keys, self._new_conn()
        with self._lock:
            subscriptions = self._subscriptions
        with unavailable_on_failure("registering a name"):
            result = self._join(keys=[k.users, k.addrs], args=[
                name_key(info.name), encode_record(self._record(info, member.session, conn,
                                                                ONLINE)),
                address_group(info.ip), max_per_address, k.events,
                # The newcomer's details ride along, for events that show them.
                self._event("joined", info.name, member.session, ip=info.ip, port=info.port,
                            via=info.via, conn=conn)])
        if result == "taken":
            raise NameTakenError(info.name)
        if result == "full":
            raise AddressFullError(info.ip)
        with self._lock:
            self._listed(member, conn, subscriptions)

    def resume(self, member: Member, max_per_address: int = 0) -> Member | None:
        self._check_subscribed()
        info, k, conn = member.info, self._keys, self._new_conn()
        with self._lock:
            subscriptions = self._subscriptions
        with unavailable_on_failure("resuming a session"):
            replaced = self._resume(keys=[k.users, k.addrs], args=[
                name_key(info.name), member.session,
                encode_record(self._record(info, member.session, conn, ONLINE)),
                address_group(info.ip), k.events,
                self._event("back", info.name, member.session, ip=info.ip, port=info.port,
                            via=info.via, conn=conn),
                self._event("kick", info.name, member.session, conn=conn), max_per_address])
        if replaced == "full":
            raise AddressFullError(info.ip)
        if not replaced:
            raise NotHeldError(info.name)
        was = json.loads(replaced)
        with self._lock:
            previous = self._online.get(member.session)
            self._listed(member, conn, subscriptions)
            self._away.pop(member.session, None)
        if previous is not None and was["status"] == ONLINE and was["conn"] == previous[1]:
            return previous[0]
        return None

    def away(self, member: Member) -> Member | None:
        with self._lock:
            entry = self._online.get(member.session)
            if entry is None or entry[0] is not member:
                return None
            del self._online[member.session]
        conn = entry[1]
        gone = member.gone_away()
        k = self._keys
        # Raises RedisUnavailable: the member stays online in Redis until the reconcile
        # that follows Redis's return marks it away.
        with unavailable_on_failure("marking a user away"):
            done = self._away_script(keys=[k.users], args=[
                name_key(member.info.name), member.session, conn,
                encode_record(self._record(member.info, member.session, conn, AWAY,
                                           self._clock())),
                k.events, self._event("away", member.info.name, member.session)])
        if not done:
            return None
        with self._lock:
            self._away[member.session] = (gone, conn)
        return gone

    def leave(self, member: Member) -> bool:
        with self._lock:
            entry = self._online.get(member.session)
            if entry is not None and entry[0] is member:
                del self._online[member.session]
            else:
                entry = self._away.get(member.session)
        conn = entry[1] if entry is not None else ""
        done = self._end_member(member.info.name, member.session, conn, "leave")
        if done:
            with self._lock:
                self._away.pop(member.session, None)
        return done

    def expire(self, away: Member) -> bool:
        with self._lock:
            entry = self._away.get(away.session)
            if entry is None or entry[0] is not away:
                return False
            del self._away[away.session]
        try:
            return self._end_member(away.info.name, away.session, entry[1], "expire")
        except RedisUnavailable as error:
            log.warning("%s: %s; this node tries again", away.info.name, error)
            self._graces.schedule(_Adopted(away.info.name, away.session, entry[1]),
                                  time.monotonic() + RETRY_EXPIRE_S)
            return False

    def _end_member(self, name: str, session: SessionId, conn: str, mode: str) -> bool:
        k = self._keys
        with unavailable_on_failure("ending a session"):
            done = self._end(keys=[k.users, k.addrs], args=[
                name_key(name), session, conn, k.events,
                self._event("left", name, session), mode])
        return bool(done)

    def restore(self, away: Member) -> None:
        info, k, conn = away.info, self._keys, self._new_conn()
        with unavailable_on_failure("restoring a session"):
            result = self._join(keys=[k.users, k.addrs], args=[
                name_key(info.name), encode_record(self._record(info, away.session, conn, AWAY,
                                                                self._clock())),
                address_group(info.ip), 0, k.events, ""])
        if result != "ok":
            raise NameTakenError(info.name)
        with self._lock:
            self._away[away.session] = (away, conn)

    def is_taken(self, name: str) -> bool:
        with unavailable_on_failure("looking up a name"):
            return bool(self._redis.hexists(self._keys.users, name_key(name)))

    def sessions_from(self, ip: str) -> int:
        with unavailable_on_failure("counting an address's sessions"):
            return int(self._redis.hget(self._keys.addrs, address_group(ip)) or 0)

    def recipient(self, name: str) -> tuple[str, SessionId] | None:
        with unavailable_on_failure("looking up a user"):
            raw = self._redis.hget(self._keys.users, name_key(name))
        if raw is None:
            return None
        record = json.loads(raw)
        return record["name"], int(record["session"])

    def users(self) -> tuple[UserInfo, ...]:
        with unavailable_on_failure("listing users"):
            raw = self._redis.hvals(self._keys.users)
        # The same records as last time: the same tuple, whose encoding is then reused
        # (Room.users()). Comparing the raw records costs far less than parsing them.
        last = self._last_users
        if last is not None and last[0] == raw:
            return last[1]
        infos = [UserInfo(r["name"], r["ip"], int(r["port"]), r["via"], r["status"])
                 for r in map(json.loads, raw)]
        listed = tuple(sorted(infos, key=lambda info: (name_key(info.name), info.name)))
        self._last_users = (raw, listed)  # replaced whole: no lock needed
        return listed

    def publish(self, messages: list[StoredMessage]) -> None:
        """Deliver messages (in seq order) to this node's connections they are for."""
        with self._lock:
            online = {session: entry[0] for session, entry in self._online.items()}
        for message in messages:
            envelope = Envelope(message.event())
            if message.recipient_session is not None:
                recipient = online.get(message.recipient_session)
                if recipient is not None:
                    recipient.deliver(envelope)
                continue
            for session, member in online.items():
                if session != message.sender_session:
                    member.deliver(envelope)

    def local_count(self) -> int:
        with self._lock:
            return len(self._online)

    # --- the subscriber thread ---------------------------------------------------------------

    def _subscribe_loop(self) -> None:
        delay = 0.1
        while not self._stopping.is_set():
            pubsub = self._sub_redis.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(self._keys.events)
                self._catch_up()
                self._subscribed_again()
                self._subscribed.set()
                delay = 0.1
                while not self._stopping.is_set():
                    event = pubsub.get_message(timeout=0.5)
                    if event is not None:
                        self._on_event(event["data"])
            except redis.RedisError as error:
                if not self._stopping.is_set():
                    log.warning("redis: subscription lost (%s); subscribing again", error)
            except Exception:  # a bad event must not end delivery for the whole node
                log.exception("redis: delivering an event failed")
            finally:
                try:
                    pubsub.close()
                except redis.RedisError as error:
                    log.debug("redis: closing the subscription: %s", error)
            self._stopping.wait(delay)
            delay = min(delay * 2, MAX_BACKOFF_S)

    def _subscribed_again(self) -> None:
        """What was published while the subscription was broken is lost to all alike: every
        connection listed now, or listed by a join or resume whose script ran before this,
        counts as having passed its own joined/back (_heard)."""
        with self._lock:
            self._heard = {s: conn for s, (_, conn) in self._online.items()}
            self._subscriptions += 1

    def _listed(self, member: Member, conn: str, subscriptions: int) -> None:
        """List a connection whose join or resume script ran, holding _lock; `subscriptions`
        is what _subscriptions was before the script: if the subscription was renewed since,
        its own joined/back may be among the events lost meanwhile."""
        self._online[member.session] = (member, conn)
        if self._subscriptions != subscriptions:
            self._heard[member.session] = conn

    def _catch_up(self) -> None:
        """Just subscribed: deliver what was stored after the last seq delivered. (The first
        time, nobody is here yet: joins wait for the subscription, see _check_subscribed.)"""
        current = int(self._sub_redis.get(self._keys.seq) or 0)
        if self._delivered < 0:
            self._delivered = current
            return
        if current < self._delivered:
            log.error("redis: the room's seq went back from %d to %d: Redis lost data (was it "
                      "restarted without persistence?)", self._delivered, current)
            self._delivered = current
            return
        self._fill(current)

    def _fill(self, upto: int) -> None:
        """Deliver the stored messages with seq in (_delivered, upto]."""
        while self._delivered < upto:
            raw = self._sub_redis.zrangebyscore(self._keys.all, f"({self._delivered}", upto,
                                                start=0, num=CATCH_UP_PAGE)
            messages = [decode_message(m) for m in raw]
            if messages:
                self.publish(messages)
            if len(messages) < CATCH_UP_PAGE:
                self._delivered = upto  # the rest was deleted by retention
                return
            self._delivered = messages[-1].seq

    def _on_event(self, data: str) -> None:
        kind, body = data[:1], data[1:]
        if kind == "m":
            message = decode_message(body)
            if message.seq <= self._delivered:
                return  # delivered already by a catch-up
            if message.seq > self._delivered + 1:
                self._fill(message.seq - 1)
            self.publish([message])
            self._delivered = message.seq
        elif kind == "p":
            self._on_presence(json.loads(body))

    def _on_presence(self, event: dict[str, Any]) -> None:
        session = int(event["s"])
        if event["k"] == "kick":  # resumed on another connection: close this one
            with self._lock:
                entry = self._online.get(session)
            if entry is not None and entry[1] != event["conn"]:
                entry[0].close(RESUMED_ELSEWHERE)
            return
        kind = _EVENTS.get(event["k"])
        if kind is None:
            log.warning("redis: unknown presence event %r", event["k"])
            return
        conn = event.get("conn", "")
        with self._lock:
            if kind is Joined or kind is Back:
                if conn.startswith(self._conn_prefix):
                    self._heard[session] = conn  # its own event: what follows is news to it
            else:
                self._heard.pop(session, None)
            if self._quiet:
                return
            heard = self._heard
            others = [member for s, (member, c) in self._online.items()
                      if s != session and heard.get(s) == c]
        envelope = Envelope(_presence_event(kind, event))
        for member in others:
            member.deliver(envelope)

    # --- the heartbeat thread ----------------------------------------------------------------

    def _heartbeat_loop(self) -> None:
        interval = self._node_timeout / 3
        failing = False
        while not self._stopping.wait(interval):
            try:
                swept = self._sweep()
                if self._lost or swept:
                    self._reconcile()
                    self._lost = False
                if failing:
                    log.info("redis: reachable again")
                failing = False
            except redis.RedisError as error:
                if not failing:
                    log.error("redis: heartbeat failed: %s", error)
                failing = self._lost = True
            except Exception:  # the heartbeat must go on
                log.exception("redis: heartbeat failed")

    def _sweep(self, also: str = "") -> bool:
        """Beat and adopt the members of dead nodes. True if this node had been taken for
        dead (then its connections must be checked against Redis)."""
        k = self._keys
        result = self._beat(keys=[k.nodes, k.users], args=[
            self._node, int(self._node_timeout * 1000), k.events, self._clock(), also])
        listed, adopted = result[0], result[1:]
        for raw in adopted:
            self._adopt(json.loads(raw))
        if adopted:
            log.info("redis: adopted %d away members of dead nodes", len(adopted))
        return listed == "0" and not also

    def _adopt(self, record: dict[str, Any]) -> None:
        since = record["since"] if record["since"] is not None else self._clock()
        left_s = max(0.0, float(since) + self._resume_grace - self._clock())
        self._graces.schedule(_Adopted(record["name"], int(record["session"]), record["conn"]),
                              time.monotonic() + left_s)

    def _expire_adopted(self, adopted: _Adopted) -> None:
        try:
            if not self._end_member(adopted.name, adopted.session, adopted.conn, "expire"):
                return  # resumed, or ended, meanwhile
            self._end_session(adopted.session)
        except StoreError as error:
            if self._stopping.is_set():
                return  # another node adopts it
            log.warning("%s: ending its session failed (%s); trying again", adopted.name,
                        error)
            self._graces.schedule(adopted, time.monotonic() + RETRY_EXPIRE_S)
            return
        log.info("%s left: the session's grace period ended", adopted.name)

    def _reconcile(self) -> None:
        """After Redis failed or this node was taken for dead: make Redis and this node's
        connections agree again."""
        k = self._keys
        records = [json.loads(raw) for raw in self._redis.hvals(k.users)]
        by_session = {int(r["session"]): r for r in records}
        with self._lock:
            local = dict(self._online)
        for r in records:
            session = int(r["session"])
            entry = local.get(session)
            if r["node"] != self._node or r["status"] != ONLINE or (
                entry is not None and entry[1] == r["conn"]
            ):
                continue
            # Its connection ended while Redis could not be told: it goes away now.
            info = UserInfo(r["name"], r["ip"], int(r["port"]), r["via"])
            away = self._record(info, session, r["conn"], AWAY, self._clock())
            if self._away_script(keys=[k.users], args=[
                name_key(r["name"]), session, r["conn"], encode_record(away), k.events,
                self._event("away", r["name"], session),
            ]):
                self._adopt(away)
        stale = [member for session, (member, conn) in local.items()
                 if (r := by_session.get(session)) is None or r["conn"] != conn
                 or r["status"] != ONLINE]
        if stale:
            log.warning("redis: closing %d connections whose sessions changed while this node "
                        "was cut off (their clients resume)", len(stale))
        for member in stale:
            member.close(INTERRUPTED)


def _presence_event(kind: type[Joined | Left | Away | Back], event: dict[str, Any]) -> Event:
    """The event for clients; joined and back carry the user's entry, as on one node."""
    name = event["name"]
    if kind is Joined or kind is Back:
        return kind(name, UserInfo(name, event["ip"], int(event["port"]), event["via"], ONLINE))
    return kind(name)
