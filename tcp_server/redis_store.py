"""The message store kept in Redis: the same `MessageStore` interface as `SqliteStore`, shared
by every core node of one room (docs/operations.md, "Several nodes: Redis").

Sends: one writer thread per node takes the sends waiting and runs the SEND script for each in
one pipeline (one round trip: group commit). The script takes the room-wide seq (INCR), stores
the message (sorted sets by seq) and publishes it in one atomic step, so publications leave
Redis in seq order. The sender is answered once Redis has run the script: `sent` means Redis
accepted the write (how durable that is depends on Redis's persistence settings). Delivery is
NOT done here (no `on_commit`): every node, the sender's included, delivers what it receives
on the events channel (tcp_server/redis_room.py), so each connection sees one order, seq order.

A send carries an id of this node; the script remembers the seq of each id for a minute. When
a pipeline fails (Redis restarting), the writer tries the same sends again for a few seconds:
one that had been stored answers its first seq instead of being stored twice.

Search: Redis 7 without modules has no full-text index, so a search reads the newest
REDIS_SEARCH_SCAN messages of the room, newest first, and keeps those of the session holding
every word (SQLite's store looks through the newest SEARCH_SCAN *matches* instead).
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Final

import redis

from tcp_server import store as store_module
from tcp_server.protocol import EVERYONE, Conversation, name_key, search_words
from tcp_server.redis_keys import (
    MARK_READ,
    OPEN_SESSION,
    RAISE_PRUNED,
    SEND,
    SENT_ID_TTL_S,
    SET_AWAY,
    Keys,
    RedisUnavailable,
    connect,
    database,
    decode_message,
    message_body,
    unavailable_on_failure,
)
from tcp_server.store import (
    MAX_CONVERSATIONS,
    PRUNE_EVERY_S,
    SECONDS_PER_DAY,
    NewMessage,
    Retention,
    SendDone,
    SessionId,
    SessionRecord,
    StoreClosed,
    StoredMessage,
    StoreError,
    token_hash,
)

log = logging.getLogger(__name__)

MAX_SENDS_PER_PIPELINE: Final = 500
SEND_RETRY_FOR_S: Final = 5.0  # a failed pipeline is tried again for this long
REDIS_SEARCH_SCAN: Final = 10_000  # messages read per search, newest first
SCAN_PAGE: Final = 1_000


class _Send:
    __slots__ = ("id", "message", "then")

    def __init__(self, send_id: str, message: NewMessage, then: SendDone) -> None:
        self.id, self.message, self.then = send_id, message, then


class RedisStore:
    """Messages, sessions and read markers in Redis. Thread-safe: the redis client is a pool;
    `_sends` is the writer thread's queue; `_closed` is guarded by `_lock`."""

    def __init__(
        self,
        url: str,
        node_id: str,
        retention: Retention | None = None,
        clock: Callable[[], float] = time.time,
        keys: Keys | None = None,
    ) -> None:
        self._node = node_id
        self._retention = retention or Retention()
        self._clock = clock
        self._redis = connect(url)
        self._keys = keys or Keys(db=database(self._redis))
        self._send_sha: str | None = None  # SEND's digest once loaded (see _run_sends)
        self._open_script = self._redis.register_script(OPEN_SESSION)
        self._away_script = self._redis.register_script(SET_AWAY)
        self._mark_script = self._redis.register_script(MARK_READ)
        self._pruned_script = self._redis.register_script(RAISE_PRUNED)
        # Unique per send across restarts of a node: the node id and the start time.
        self._ids = itertools.count()
        self._id_prefix = f"{node_id}/{time.time_ns()}/"
        self._lock = threading.Lock()
        self._closed = False
        self._sends: queue.SimpleQueue[_Send | None] = queue.SimpleQueue()
        self._next_prune = time.monotonic() + PRUNE_EVERY_S
        self._writer = threading.Thread(target=self._write_loop, name="redis-writer",
                                        daemon=True)
        self._writer.start()

    # --- writing messages -----------------------------------------------------------------

    def submit(self, message: NewMessage, then: SendDone) -> None:
        send = _Send(self._id_prefix + str(next(self._ids)), message, then)
        with self._lock:
            if self._closed:
                raise StoreClosed("the store is closed")
            self._sends.put(send)

    def append(self, message: NewMessage) -> StoredMessage:
        done = threading.Event()
        result: list[StoredMessage | StoreError] = []

        def then(outcomes: list[StoredMessage | StoreError]) -> None:
            result.extend(outcomes)
            done.set()

        self.submit(message, then)
        done.wait()
        if isinstance(result[0], StoreError):
            raise result[0]
        return result[0]

    def _write_loop(self) -> None:
        running = True
        while running:
            try:
                first = self._sends.get(timeout=PRUNE_EVERY_S)
            except queue.Empty:
                first = None if self._is_closed() else _IDLE
            if first is None:
                break
            batch = [] if first is _IDLE else [first]
            while len(batch) < MAX_SENDS_PER_PIPELINE:
                try:
                    send = self._sends.get_nowait()
                except queue.Empty:
                    break
                if send is None:
                    running = False
                    break
                batch.append(send)
            if batch:
                self._store(batch)
            self._maybe_prune()

    def _is_closed(self) -> bool:
        with self._lock:
            return self._closed

    def _store(self, batch: list[_Send]) -> None:
        deadline = time.monotonic() + SEND_RETRY_FOR_S
        delay = 0.05
        while True:
            try:
                seqs = self._run_sends(batch)
                break
            except redis.RedisError as error:
                if time.monotonic() + delay > deadline:
                    log.error("redis: storing %d messages failed: %s", len(batch), error)
                    failure = RedisUnavailable(f"redis: storing the message failed: {error}")
                    for send in batch:
                        _answer(send, failure)
                    return
                log.warning("redis: storing %d messages failed, trying again: %s",
                            len(batch), error)
                time.sleep(delay)
                delay = min(delay * 2, 1.0)
        for send, seq in zip(batch, seqs, strict=True):
            m = send.message
            _answer(send, StoredMessage(seq, m.ts, m.sender, m.sender_session, m.to,
                                        m.recipient_session, m.text))

    def _run_sends(self, batch: list[_Send]) -> list[int]:
        """One pipeline of EVALSHA SEND, one round trip. (redis-py's Script objects would ask
        SCRIPT EXISTS before every pipeline: a second round trip.) When Redis lost its script
        cache (a restart), the script is loaded and the whole batch runs again: the send ids
        make that safe."""
        k = self._keys
        commands = []
        for send in batch:
            m = send.message
            args: list[Any] = [message_body(m), k.events, SENT_ID_TTL_S]
            if m.recipient_session is None:
                keys = [k.seq, k.all, k.sent(send.id), k.everyone, k.mine(m.sender_session)]
            else:
                skey, rkey = name_key(m.sender), name_key(m.to)
                keys = [k.seq, k.all, k.sent(send.id), k.inbox(m.recipient_session),
                        k.dm_out(m.sender_session, rkey), k.dm_in(m.recipient_session, skey),
                        k.peers(m.sender_session), k.peers(m.recipient_session)]
                args += [rkey, skey]
            commands.append((len(keys), *keys, *args))
        for attempt in (1, 2):
            if self._send_sha is None:
                self._send_sha = str(self._redis.script_load(SEND))
            pipe = self._redis.pipeline(transaction=False)
            for command in commands:
                pipe.execute_command("EVALSHA", self._send_sha, *command)
            results = pipe.execute(raise_on_error=False)
            if attempt == 1 and any(isinstance(r, redis.exceptions.NoScriptError)
                                    for r in results):
                self._send_sha = None
                continue
            for result in results:
                if isinstance(result, Exception):
                    raise result
            break
        return [int(seq) for seq in results]

    # --- sessions ---------------------------------------------------------------------------

    def last_seq(self) -> int:
        with unavailable_on_failure("reading the seq"):
            return int(self._redis.get(self._keys.seq) or 0)

    def pruned_upto(self) -> int:
        with unavailable_on_failure("reading the retention mark"):
            return int(self._redis.get(self._keys.pruned) or 0)

    def open_session(
        self, name: str, token: str, ip: str, port: int, via: str
    ) -> SessionRecord:
        self._check_open()
        k = self._keys
        with unavailable_on_failure("opening a session"):
            session, start = self._open_script(
                keys=[k.sid, k.seq, k.token(token_hash(token).hex())],
                args=[k.session(0)[:-1], name, ip, port, via],
            )
        return SessionRecord(int(session), name, ip, port, via, int(start), int(start), None)

    def find_session(self, token: str) -> SessionRecord | None:
        with unavailable_on_failure("finding a session"):
            session = self._redis.get(self._keys.token(token_hash(token).hex()))
            if session is None:
                return None
            fields = self._redis.hgetall(self._keys.session(int(session)))
        if not fields:
            return None
        away = fields.get("away_since", "")
        return SessionRecord(int(session), fields["name"], fields["ip"], int(fields["port"]),
                             fields["via"], int(fields["start_seq"]),
                             int(fields["delivered_seq"]), float(away) if away else None)

    def reconnect_session(self, session: SessionId, ip: str, port: int, via: str) -> None:
        self._check_open()
        with unavailable_on_failure("recording a resume"):
            self._redis.hset(self._keys.session(session), mapping={
                "ip": ip, "port": port, "via": via, "away_since": ""})

    def set_away(self, session: SessionId, since: float, delivered_seq: int) -> None:
        self._check_open()
        with unavailable_on_failure("recording an away session"):
            self._away_script(keys=[self._keys.session(session)], args=[since, delivered_seq])

    def set_away_many(self, sessions: Sequence[tuple[SessionId, float, int]]) -> None:
        self._check_open()
        with unavailable_on_failure("recording away sessions"):
            pipe = self._redis.pipeline(transaction=False)  # one round trip for them all
            for session, since, delivered_seq in sessions:
                self._away_script(keys=[self._keys.session(session)],
                                  args=[since, delivered_seq], client=pipe)
            pipe.execute()

    def end_session(self, session: SessionId) -> None:
        self._check_open()
        k = self._keys
        with unavailable_on_failure("ending a session"):
            peers = self._redis.zrange(k.peers(session), 0, -1)
            token_key = self._redis.hget(k.session(session), "token_key")
            doomed = [k.session(session), k.inbox(session), k.peers(session), k.read(session),
                      k.mine(session), *(k.dm_in(session, peer) for peer in peers),
                      *(k.dm_out(session, peer) for peer in peers)]
            if token_key:
                doomed.append(token_key)
            self._redis.delete(*doomed)

    def open_sessions(self) -> list[SessionRecord]:
        """None: with Redis, sessions outlive any one node; a restarted node takes back its
        own members as away (RedisRoom.start), and other nodes' are theirs."""
        return []

    # --- reading ----------------------------------------------------------------------------

    def _range(self, key: str, after: int, count: int) -> list[StoredMessage]:
        raw = self._redis.zrangebyscore(key, f"({after}", "+inf", start=0, num=count)
        return [decode_message(m) for m in raw]

    def missed(self, session: SessionRecord, after: int) -> Iterator[list[StoredMessage]]:
        everyone_after = max(after, session.start_seq)
        k = self._keys
        page_size = store_module.REPLAY_PAGE  # read at each call (tests make it small)
        unbounded = 2**63
        while True:
            with unavailable_on_failure("reading missed messages"):
                floor = int(self._redis.get(k.pruned) or 0)
                everyone = self._range(k.everyone, max(everyone_after, floor), page_size)
                direct = self._range(k.inbox(session.id), max(after, floor), page_size)
            # Each source is complete up to its last seq when it returned a full page.
            bound = min(
                everyone[-1].seq if len(everyone) == page_size else unbounded,
                direct[-1].seq if len(direct) == page_size else unbounded,
            )
            page = sorted(
                [m for m in everyone if m.sender_session != session.id and m.seq <= bound]
                + [m for m in direct if m.seq <= bound],
                key=lambda m: m.seq,
            )
            if len(page) > page_size:
                page = page[:page_size]
                bound = page[-1].seq
            if page:
                yield page
            if bound == unbounded:
                return
            after = everyone_after = bound

    def history(
        self, session: SessionId, with_: str, before: int | None, limit: int
    ) -> tuple[list[StoredMessage], bool]:
        k = self._keys
        if with_ == EVERYONE:
            sets = [k.everyone]
        else:
            peer = name_key(with_)
            sets = [k.dm_in(session, peer), k.dm_out(session, peer)]
        top = f"({before}" if before is not None else "+inf"
        with unavailable_on_failure("reading history"):
            floor = int(self._redis.get(k.pruned) or 0)
            raw = [m for key in sets
                   for m in self._redis.zrevrangebyscore(key, top, f"({floor}", start=0,
                                                         num=limit + 1)]
        # Each set gave its newest limit + 1: the newest limit + 1 of both are among them.
        found = sorted(map(decode_message, raw), key=lambda m: -m.seq)[:limit + 1]
        return list(reversed(found[:limit])), len(found) > limit

    def search(self, session: SessionId, words: Sequence[str], limit: int) -> list[StoredMessage]:
        wanted = {word.casefold() for word in words}
        if not wanted:
            return []
        # A cheap look at the stored JSON first: an ASCII word that is not in it is not in the
        # text. (JSON escapes other characters, so those words are checked after decoding.)
        plain = [word for word in wanted if word.isascii()]
        found: list[StoredMessage] = []
        for start in range(0, REDIS_SEARCH_SCAN, SCAN_PAGE):
            with unavailable_on_failure("searching"):
                raw = self._redis.zrevrange(self._keys.all, start, start + SCAN_PAGE - 1)
            for entry in raw:
                folded = entry.casefold()
                if not all(word in folded for word in plain):
                    continue
                m = decode_message(entry)
                if (m.recipient_session is None or session in (m.sender_session,
                                                               m.recipient_session)) \
                        and wanted <= {w.casefold() for w in search_words(m.text)}:
                    found.append(m)
                    if len(found) >= limit:
                        return found
            if len(raw) < SCAN_PAGE:
                break
        return found

    def mark_read(self, session: SessionId, with_: str, seq: int) -> int:
        self._check_open()
        k = self._keys
        conversation = name_key(with_)
        with unavailable_on_failure("moving a read marker"):
            floor = 0
            if with_ == EVERYONE:
                floor = int(self._redis.hget(k.session(session), "start_seq") or 0)
            sets = [k.everyone] if with_ == EVERYONE else [
                k.dm_in(session, conversation), k.dm_out(session, conversation)]
            return int(self._mark_script(keys=[k.read(session), *sets],
                                         args=[conversation, seq, floor]))

    def conversations(self, session: SessionRecord) -> list[Conversation]:
        """Counts with ZCOUNT (never reading the messages): unread messages to everyone are
        those after the marker less this session's own (`mine`), unread direct messages those
        received from the peer after its marker."""
        k, me = self._keys, session.id
        with unavailable_on_failure("listing conversations"):
            markers = {c: int(s) for c, s in self._redis.hgetall(k.read(me)).items()}
            newest = self._redis.zrevrange(k.everyone, 0, 0, withscores=True)
            everyone_last = int(newest[0][1]) if newest else 0
            everyone_read = markers.get(EVERYONE, session.start_seq)
            after = f"({everyone_read}"
            everyone_unread = int(self._redis.zcount(k.everyone, after, "+inf")) - int(
                self._redis.zcount(k.mine(me), after, "+inf"))
            found = [Conversation(EVERYONE, everyone_last, min(everyone_read, everyone_last)
                                  if everyone_last else everyone_read, everyone_unread)]
            peers = self._redis.zrevrange(k.peers(me), 0, MAX_CONVERSATIONS - 2,
                                          withscores=True)
            own_key = name_key(session.name)
            for peer_key, last in peers:
                read = markers.get(peer_key, 0)
                unread = 0 if peer_key == own_key else int(
                    self._redis.zcount(k.dm_in(me, peer_key), f"({read}", "+inf"))
                latest = [decode_message(m) for key in (k.dm_in(me, peer_key),
                                                        k.dm_out(me, peer_key))
                          for m in self._redis.zrevrange(key, 0, 0)]
                if not latest:
                    continue  # deleted by retention
                last_m = max(latest, key=lambda m: m.seq)
                peer = last_m.to if last_m.sender_session == me else last_m.sender
                found.append(Conversation(peer, int(last), read, unread))
        return sorted(found, key=lambda c: -c.last)

    # --- retention --------------------------------------------------------------------------

    def _maybe_prune(self) -> None:
        now = time.monotonic()
        if now < self._next_prune:
            return
        self._next_prune = now + PRUNE_EVERY_S
        try:
            self.prune()
        except StoreError as error:
            log.error("redis: pruning failed: %s", error)

    def prune(self) -> int:
        """Apply retention to the room's message sets; returns how many were deleted. Any
        node may run it (the mark only moves forward). A session's direct-message sets are
        read above the mark, and deleted with the session."""
        k = self._keys
        with unavailable_on_failure("pruning"):
            last = int(self._redis.get(k.seq) or 0)
            upto = int(self._redis.get(k.pruned) or 0)
            if self._retention.max_messages:
                upto = max(upto, last - self._retention.max_messages)
            if self._retention.max_days:
                cutoff = self._clock() - self._retention.max_days * SECONDS_PER_DAY
                while True:
                    page = self._range(k.all, upto, SCAN_PAGE)
                    old = [m.seq for m in page if m.ts < cutoff]
                    if old:
                        upto = max(upto, old[-1])
                    if len(old) < len(page) or len(page) < SCAN_PAGE:
                        break
            deleted = int(self._redis.zremrangebyscore(k.all, "-inf", upto))
            self._redis.zremrangebyscore(k.everyone, "-inf", upto)
            self._pruned_script(keys=[k.pruned], args=[upto])
        if deleted:
            log.info("redis: retention deleted %d messages (up to seq %d)", deleted, upto)
        return deleted

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._sends.put(None)
        self._writer.join()
        self._redis.close()

    def _check_open(self) -> None:
        with self._lock:
            if self._closed:
                raise StoreClosed("the store is closed")


_IDLE: Final = _Send("", NewMessage(0.0, "", 0, "", None, ""), lambda results: None)


def _answer(send: _Send, result: StoredMessage | StoreError) -> None:
    try:
        send.then([result])
    except Exception:  # one sender's answer must not stop the writer
        log.exception("redis: answering a sender failed")
