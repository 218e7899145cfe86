"""Presence and delivery: who is online and where a message goes.

`Room` is the interface the rest of the core uses; `LocalRoom` is the in-process
implementation. Messages reach the room only once they are committed to the store (see
tcp_server/store.py), which calls `publish` in seq order. A room spanning several core nodes
(Redis pub/sub) is a second implementation of the same interface: connections and commands do
not change.

Nothing here does I/O. A member's `deliver` must not block (it queues into the member's
outbox) nor call back into the room, and it is always called outside the room's lock, so a
slow or dead peer can never stall the room.

Presence is announced in combined batches. Each change (joined, back, away, left) is stamped
under the lock, in order, and queued; then one thread at a time delivers everything queued,
each online member getting in one delivery the announcements stamped after it came online.
A lone change is delivered at once, by the thread that made it; under a burst (10,000 clients
resuming after a restart, a crowd joining) a member gets one delivery, and its connection one
send, per batch instead of one per event: the fan-out of N arrivals to N members stays
quadratic in bytes but not in deliveries. A change's caller returns only once its batch was
delivered, so nobody sees a newcomer's message before its `joined`.
"""

from __future__ import annotations

import threading
import time
from bisect import bisect_right
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from tcp_server.addresses import address_group
from tcp_server.protocol import (
    AWAY,
    Away,
    Back,
    Event,
    Joined,
    Left,
    Message,
    UserInfo,
    name_key,
)
from tcp_server.store import SessionId, StoredMessage

# The least time between two presence batches while changes keep coming (see _announce).
BATCH_WINDOW_S = 0.005
BATCH_PAUSES = 4


class Encoder(Protocol):
    def encode(self, event: Event) -> bytes: ...


class Envelope:
    """Events on their way to one or many members, encoded once per codec class.

    Usually one event; a batch of presence announcements, or the messages of one commit for
    one member, is one envelope too (`batch`), so that it is queued and sent at once. `seq` is
    the message's seq, the last one's for a batch of messages (0 for anything else), and
    `first_seq` the first one's: a connection skips a message it has already been sent by a
    resume's replay.
    """

    __slots__ = ("_encoded", "_event", "_parts", "first_seq", "seq")

    def __init__(self, event: Event) -> None:
        self._event = event
        self.seq = self.first_seq = event.seq if isinstance(event, Message) else 0
        self._encoded: dict[type, bytes] = {}
        self._parts: Sequence[Envelope] = ()

    @classmethod
    def batch(cls, parts: Sequence[Envelope]) -> Envelope:
        """Several envelopes as one, in order (messages: in seq order); each part keeps its
        encodings."""
        if len(parts) == 1:
            return parts[0]
        combined = cls.__new__(cls)
        combined._event = parts[0]._event
        combined.seq = parts[-1].seq
        combined.first_seq = parts[0].first_seq
        combined._encoded = {}
        combined._parts = parts
        return combined

    @property
    def events(self) -> tuple[Event, ...]:
        """What it carries, in order (made on demand: a batch is usually only encoded)."""
        if self._parts:
            return tuple([event for part in self._parts for event in part.events])
        return (self._event,)

    def after(self, seq: int) -> Envelope | None:
        """The messages of this envelope with a seq above `seq`; None if there are none."""
        parts = [part for part in self._parts or (self,) if part.seq > seq]
        return Envelope.batch(parts) if parts else None

    def encoded(self, codec: Encoder) -> bytes:
        # Encoding depends only on the codec's class, never on per-connection state.
        kind = type(codec)
        data = self._encoded.get(kind)
        if data is None:
            if self._parts:
                data = b"".join([part.encoded(codec) for part in self._parts])
            else:
                data = codec.encode(self._event)
            self._encoded[kind] = data
        return data


def _nowhere(envelope: Envelope) -> None:
    """The delivery of an away member: what it misses is replayed from the store."""


def _no_connection(reason: str) -> None:
    """The close of an away member: it has no connection."""


@dataclass(frozen=True, slots=True, eq=False)
class Member:
    """A user's session as the room sees it: who, and how to reach its connection.

    An away member (status "away") has no connection: `deliver` and `close` do nothing.
    """

    info: UserInfo
    session: SessionId
    deliver: Callable[[Envelope], None]
    close: Callable[[str], None] = _no_connection

    def gone_away(self) -> Member:
        return Member.away(self.info, self.session)

    @staticmethod
    def away(info: UserInfo, session: SessionId) -> Member:
        """The member of a session without a connection."""
        return Member(replace(info, status=AWAY), session, _nowhere)


class NameTakenError(Exception):
    """The name is already in use (names collide case-insensitively)."""


class AddressFullError(Exception):
    """The member's address already has the most sessions allowed."""


class NotHeldError(Exception):
    """The room does not hold this session (it ended meanwhile)."""


class Room(Protocol):
    """Presence and delivery for one chat room.

    Each name is held by one session at a time, online (with a connection) or away (its
    connection ended without exit, within the grace period).
    """

    def join(self, member: Member, max_per_address: int = 0) -> None:
        """Register a new session and tell everyone else; raise NameTakenError on a clash,
        AddressFullError if its address has max_per_address sessions already (0: no limit)."""

    def resume(self, member: Member, max_per_address: int = 0) -> Member | None:
        """Give an existing session its new connection; returns the member of the connection
        that held it until now, if any (to be closed). Others see back with the new entry
        (whether it was away or held by another connection: its address changed).
        Raises NotHeldError when the room no longer holds the session, AddressFullError when
        it moves to another address group that has max_per_address sessions already."""

    def away(self, member: Member) -> Member | None:
        """The member's connection ended without exit: keep its name, tell the others.
        Returns the away member (for expire), or None if `member` no longer held the name."""

    def leave(self, member: Member) -> bool:
        """End the member's session (exit): free its name, tell everyone else. Idempotent;
        True if it did end the session."""

    def expire(self, away: Member) -> bool:
        """End an away session whose grace has run out, if it is still that away member."""

    def restore(self, away: Member) -> None:
        """Hold a session that was open when the server last stopped, as away, unannounced."""

    def is_taken(self, name: str) -> bool:
        """Whether a session (online or away) holds the name."""

    def sessions_from(self, ip: str) -> int:
        """How many sessions (online or away) were registered from this address's group
        (tcp_server/addresses.py: an IPv6 address counts as its /64)."""

    def recipient(self, name: str) -> tuple[str, SessionId] | None:
        """The registered name and session of `name` (any case), online or away."""

    def users(self) -> tuple[UserInfo, ...]:
        """Everyone online or away, sorted by name. While nobody comes or goes, the same
        tuple again: its encoding is then reused (protocol.encode_event), so a `list` costs
        a copy of bytes, not 1.3 ms of formatting at 1,000 users."""

    def publish(self, messages: list[StoredMessage]) -> None:
        """Deliver committed messages, in the given (seq) order, to their live recipients."""

    def shutdown(self) -> None:
        """This node is stopping: from now on nothing is announced (each member is about to
        get a bye); a room spanning nodes tells the other nodes instead."""


class LocalRoom:
    """The room of a single core process. One private lock guards the two tables."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # Changed only under _lock (entries replaced whole; recipient() reads one without
        # it): the holder of each name (name_key), and the members that have a connection, by
        # session. A member in _online is also _members' entry for its name.
        self._members: dict[str, Member] = {}
        self._online: dict[SessionId, Member] = {}
        # Sessions by address_group(info.ip), for the limit: only _count_in/_count_out change it.
        self._per_address: Counter[str] = Counter()
        # users()'s answer until the next change (None: make it again), and the number of
        # changes made: a list sorted outside the lock is kept only if none came meanwhile.
        self._listed: tuple[UserInfo, ...] | None = None
        self._changes = 0
        self._quiet = False
        # Presence announcements (see the module docstring), also guarded by _lock: the last
        # stamp given, the stamp at which each online member came online, and what is stamped
        # but not delivered yet, in stamp order.
        self._stamp = 0
        self._online_since: dict[SessionId, int] = {}
        self._pending: list[tuple[int, Envelope]] = []
        # Held by the one thread delivering a batch; _announced (guarded by it) is the last
        # stamp delivered.
        self._announcing = threading.Lock()
        self._announced = 0
        self._batch_ended = 0.0  # time.monotonic() at the end of the last batch's delivery
        self._batch_window = BATCH_WINDOW_S

    def join(self, member: Member, max_per_address: int = 0) -> None:
        key = name_key(member.info.name)
        with self._lock:
            if key in self._members:
                raise NameTakenError(member.info.name)
            group = address_group(member.info.ip)
            if max_per_address and self._per_address[group] >= max_per_address:
                raise AddressFullError(member.info.ip)
            self._members[key] = member
            self._online[member.session] = member
            self._count_in(member.info.ip)
            stamp = self._stamp_change(Joined(member.info.name, member.info), online=member.session)
        self._announce(stamp)

    def resume(self, member: Member, max_per_address: int = 0) -> Member | None:
        key = name_key(member.info.name)
        with self._lock:
            holder = self._members.get(key)
            if holder is None or holder.session != member.session:
                raise NotHeldError(member.info.name)
            group = address_group(member.info.ip)
            if (max_per_address and group != address_group(holder.info.ip)
                    and self._per_address[group] >= max_per_address):
                raise AddressFullError(member.info.ip)
            previous = self._online.get(member.session)
            self._members[key] = member
            self._online[member.session] = member
            self._count_out(holder.info.ip)
            self._count_in(member.info.ip)
            # Also when another connection held it: the entry's address has changed.
            stamp = self._stamp_change(Back(member.info.name, member.info), online=member.session)
        self._announce(stamp)
        return previous

    def away(self, member: Member) -> Member | None:
        key = name_key(member.info.name)
        gone = member.gone_away()
        with self._lock:
            if self._online.get(member.session) is not member:
                return None
            del self._online[member.session]
            self._members[key] = gone
            stamp = self._stamp_change(Away(member.info.name), offline=member.session)
        self._announce(stamp)
        return gone

    def leave(self, member: Member) -> bool:
        key = name_key(member.info.name)
        with self._lock:
            holder = self._members.get(key)
            online = self._online.get(member.session)
            if holder is None or holder.session != member.session or online not in (
                member, None
            ):
                return False
            del self._members[key]
            self._online.pop(member.session, None)
            self._count_out(holder.info.ip)
            stamp = self._stamp_change(Left(member.info.name), offline=member.session)
        self._announce(stamp)
        return True

    def expire(self, away: Member) -> bool:
        key = name_key(away.info.name)
        with self._lock:
            if self._members.get(key) is not away:
                return False
            del self._members[key]
            self._count_out(away.info.ip)
            stamp = self._stamp_change(Left(away.info.name))
        self._announce(stamp)
        return True

    def restore(self, away: Member) -> None:
        key = name_key(away.info.name)
        with self._lock:
            if key in self._members:
                raise NameTakenError(away.info.name)
            self._members[key] = away
            self._count_in(away.info.ip)
            self._changed()

    def is_taken(self, name: str) -> bool:
        with self._lock:
            return name_key(name) in self._members

    def sessions_from(self, ip: str) -> int:
        with self._lock:
            return self._per_address[address_group(ip)]

    def recipient(self, name: str) -> tuple[str, SessionId] | None:
        # Without the lock: one lookup of one entry is atomic (changes replace entries whole,
        # under the lock), so this sees the table before or after any change, as it would
        # with it. Taken for every message, the lock made the readers convoy: whenever its
        # holder lost the GIL, every other reader queued on it, and 80% of the core's futex
        # calls under load 1 were this lock's (bench/README.md).
        member = self._members.get(name_key(name))
        return None if member is None else (member.info.name, member.session)

    def users(self) -> tuple[UserInfo, ...]:
        with self._lock:
            if self._listed is not None:
                return self._listed
            changes = self._changes
            infos = [member.info for member in self._members.values()]
        listed = tuple(sorted(infos, key=lambda info: (name_key(info.name), info.name)))
        with self._lock:
            if self._changes == changes:
                self._listed = listed
        return listed

    def shutdown(self) -> None:
        with self._lock:
            self._quiet = True

    def publish(self, messages: list[StoredMessage]) -> None:
        # One look at the tables for the whole batch (the store commits many at once), then
        # every delivery outside the lock: one per member, with all its messages of the batch
        # in seq order (one queued write for its connection, not one per message).
        with self._lock:  # one C-level step: the lock is never held while routing
            online = self._online.copy()
        deliveries: defaultdict[Member, list[Envelope]] = defaultdict(list)
        for message in messages:
            if message.recipient_session is None:
                envelope, sender = Envelope(message.event()), message.sender_session
                for member in online.values():
                    if member.session != sender:
                        deliveries[member].append(envelope)
                continue
            recipient = online.get(message.recipient_session)
            if recipient is not None:  # else away: the store keeps it for a resume
                deliveries[recipient].append(Envelope(message.event()))
        for member, envelopes in deliveries.items():
            member.deliver(Envelope.batch(envelopes))

    def __len__(self) -> int:
        with self._lock:
            return len(self._members)

    def _changed(self) -> None:
        """Someone came, went or changed (under _lock): users() makes its list again."""
        self._changes += 1
        self._listed = None

    def _count_in(self, ip: str) -> None:
        """One session more from `ip`'s group (under _lock)."""
        self._per_address[address_group(ip)] += 1

    def _count_out(self, ip: str) -> None:
        """One session fewer from `ip`'s group (under _lock); no zero entries are kept."""
        group = address_group(ip)
        self._per_address[group] -= 1
        if self._per_address[group] <= 0:
            del self._per_address[group]

    def _stamp_change(
        self, event: Event, online: SessionId | None = None, offline: SessionId | None = None
    ) -> int:
        """Queue a presence announcement (under _lock); its stamp, 0 if nobody is told.

        `online`: the member that came online with it (it is told of what follows, not of
        this); `offline`: the member that went (it is told nothing more).
        """
        self._changed()
        self._stamp += 1
        if online is not None:
            self._online_since[online] = self._stamp
        if offline is not None:
            self._online_since.pop(offline, None)
        if self._quiet:
            return 0
        self._pending.append((self._stamp, Envelope(event)))
        return self._stamp

    def _announce(self, stamp: int) -> None:
        """Return once the announcement `stamp` is delivered: by this thread, with everything
        else queued, or by the thread that was delivering and took it along."""
        if not stamp:
            return
        with self._announcing:
            if self._announced >= stamp:
                return
            # Right after a batch, wait BATCH_PAUSES times as long as it took (at least
            # BATCH_WINDOW_S) so that a burst gathers: delivering presence takes at most a
            # fifth of the time however many arrive (a 10,000-member batch takes some 15 ms:
            # a few dozen ms late is nothing for "joined"), and a lone change after a quiet
            # spell still goes out at once.
            pause = self._batch_ended + self._batch_window - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            started = time.monotonic()
            with self._lock:
                batch, self._pending = self._pending, []
                audience = [(m, self._online_since[s]) for s, m in self._online.items()]
            self._deliver_batch(batch, audience)
            self._announced = batch[-1][0]
            self._batch_ended = time.monotonic()
            self._batch_window = max(BATCH_WINDOW_S,
                                     BATCH_PAUSES * (self._batch_ended - started))

    @staticmethod
    def _deliver_batch(
        batch: list[tuple[int, Envelope]], audience: list[tuple[Member, int]]
    ) -> None:
        """Each member gets, in one delivery, the announcements stamped after it came online."""
        stamps = [stamp for stamp, _ in batch]
        envelopes = [envelope for _, envelope in batch]
        whole = Envelope.batch(envelopes)
        first = stamps[0]
        tails: dict[int, Envelope] = {}  # for members that came online within the batch
        for member, since in audience:
            if since < first:
                member.deliver(whole)
                continue
            start = bisect_right(stamps, since)
            if start == len(stamps):
                continue
            tail = tails.get(start)
            if tail is None:
                tail = tails[start] = Envelope.batch(envelopes[start:])
            member.deliver(tail)
