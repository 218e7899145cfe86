"""Presence and delivery: who is online and where a message goes.

`Room` is the interface the rest of the core uses; `LocalRoom` is the in-process
implementation. A room spanning several core nodes (Redis pub/sub) is a second implementation
of the same interface: connections and commands do not change.

Nothing here does I/O. A member's `deliver` must not block (it queues into the member's
outbox), and it is always called outside the room's lock, so a slow or dead peer can never
stall the room.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from tcp_server.protocol import EVERYONE, Event, Joined, Left, Message, UserInfo, name_key


class Encoder(Protocol):
    def encode(self, event: Event) -> bytes: ...


class Envelope:
    """One event on its way to one or many members, encoded once per codec class."""

    __slots__ = ("_encoded", "event")

    def __init__(self, event: Event) -> None:
        self.event = event
        self._encoded: dict[type, bytes] = {}

    def encoded(self, codec: Encoder) -> bytes:
        # Encoding depends only on the codec's class, never on per-connection state.
        kind = type(codec)
        data = self._encoded.get(kind)
        if data is None:
            data = self._encoded[kind] = codec.encode(self.event)
        return data


@dataclass(frozen=True, slots=True, eq=False)
class Member:
    """A registered user as the room sees it: who, and how to hand them an event."""

    info: UserInfo
    deliver: Callable[[Envelope], None]


class NameTakenError(Exception):
    """The name is already in use (names collide case-insensitively)."""


class Room(Protocol):
    """Presence and delivery for one chat room."""

    def join(self, member: Member) -> None:
        """Register the member and tell everyone else; raise NameTakenError on a clash."""

    def leave(self, member: Member) -> None:
        """Unregister the member (if it still is) and tell everyone else. Idempotent."""

    def users(self) -> tuple[UserInfo, ...]:
        """Everyone online, sorted by name."""

    def shutdown(self) -> None:
        """This node is stopping: its members go without being announced to one another
        (each is about to get a bye); a room spanning nodes tells the other nodes instead."""

    def send(self, sender: str, to: str, text: str, ts: float) -> str | None:
        """Deliver a message to `to` (a name, any case, or "*" for everyone but the sender).

        Returns the recipient's registered name ("*" for everyone), or None when no such user
        is online.
        """


class LocalRoom:
    """The room of a single core process. One private lock guards the member table."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._members: dict[str, Member] = {}  # name_key(name) -> member; guarded by _lock

    def join(self, member: Member) -> None:
        key = name_key(member.info.name)
        with self._lock:
            if key in self._members:
                raise NameTakenError(member.info.name)
            others = list(self._members.values())
            self._members[key] = member
        _fan_out(others, Envelope(Joined(member.info.name)))

    def leave(self, member: Member) -> None:
        key = name_key(member.info.name)
        with self._lock:
            if self._members.get(key) is not member:
                return
            del self._members[key]
            others = list(self._members.values())
        _fan_out(others, Envelope(Left(member.info.name)))

    def users(self) -> tuple[UserInfo, ...]:
        with self._lock:
            infos = [member.info for member in self._members.values()]
        return tuple(sorted(infos, key=lambda info: (name_key(info.name), info.name)))

    def shutdown(self) -> None:
        with self._lock:
            self._members.clear()

    def send(self, sender: str, to: str, text: str, ts: float) -> str | None:
        if to == EVERYONE:
            sender_key = name_key(sender)
            with self._lock:
                recipients = [m for k, m in self._members.items() if k != sender_key]
            _fan_out(recipients, Envelope(Message(sender=sender, to=EVERYONE, text=text, ts=ts)))
            return EVERYONE
        with self._lock:
            recipient = self._members.get(name_key(to))
        if recipient is None:
            return None
        name = recipient.info.name
        recipient.deliver(Envelope(Message(sender=sender, to=name, text=text, ts=ts)))
        return name

    def __len__(self) -> int:
        with self._lock:
            return len(self._members)


def _fan_out(members: list[Member], envelope: Envelope) -> None:
    for member in members:
        member.deliver(envelope)
