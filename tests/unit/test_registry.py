from __future__ import annotations

import pytest

from tcp_server.protocol import Event, Joined, Left, Message, UserInfo, encode_event
from tcp_server.registry import Envelope, LocalRoom, Member, NameTakenError


class Inbox:
    def __init__(self, name: str) -> None:
        self.events: list[Event] = []
        self.member = Member(UserInfo(name, "127.0.0.1", 1000, "tcp"), self.deliver)

    def deliver(self, envelope: Envelope) -> None:
        self.events.append(envelope.event)


def test_join_tells_the_others_but_not_the_newcomer() -> None:
    room, alice, bob = LocalRoom(), Inbox("alice"), Inbox("bob")
    room.join(alice.member)
    room.join(bob.member)
    assert alice.events == [Joined("bob")]
    assert bob.events == []


def test_names_collide_case_insensitively() -> None:
    room = LocalRoom()
    room.join(Inbox("Alice").member)
    with pytest.raises(NameTakenError):
        room.join(Inbox("aLICE").member)


def test_users_are_sorted_by_name_case_insensitively() -> None:
    room = LocalRoom()
    for name in ["carol", "Bob", "alice"]:
        room.join(Inbox(name).member)
    assert [u.name for u in room.users()] == ["alice", "Bob", "carol"]


def test_direct_message_reaches_the_recipient_under_its_registered_name() -> None:
    room, alice, bob = LocalRoom(), Inbox("alice"), Inbox("Bob")
    room.join(alice.member)
    room.join(bob.member)
    assert room.send("alice", "BOB", "hi", 1.5) == "Bob"
    assert bob.events == [Message("alice", "Bob", "hi", 1.5)]


def test_message_to_everyone_skips_the_sender() -> None:
    room, alice, bob, carol = LocalRoom(), Inbox("alice"), Inbox("bob"), Inbox("carol")
    for inbox in (alice, bob, carol):
        room.join(inbox.member)
    assert room.send("alice", "*", "hey", 2.0) == "*"
    assert Message("alice", "*", "hey", 2.0) in bob.events
    assert Message("alice", "*", "hey", 2.0) in carol.events
    assert all(not isinstance(e, Message) for e in alice.events)


def test_message_to_nobody_online_returns_none() -> None:
    room = LocalRoom()
    room.join(Inbox("alice").member)
    assert room.send("alice", "ghost", "hi", 1.0) is None


def test_leave_tells_the_others_once_and_frees_the_name() -> None:
    room, alice, bob = LocalRoom(), Inbox("alice"), Inbox("bob")
    room.join(alice.member)
    room.join(bob.member)
    room.leave(bob.member)
    room.leave(bob.member)
    assert alice.events == [Joined("bob"), Left("bob")]
    room.join(Inbox("BOB").member)
    assert len(room) == 2


def test_leave_of_a_stale_member_does_not_remove_the_new_holder_of_the_name() -> None:
    room, old, new = LocalRoom(), Inbox("bob"), Inbox("bob")
    room.join(old.member)
    room.leave(old.member)
    room.join(new.member)
    room.leave(old.member)
    assert [u.name for u in room.users()] == ["bob"]


def test_envelope_encodes_once_per_codec_class() -> None:
    calls = []

    class Codec:
        def encode(self, event: Event) -> bytes:
            calls.append(event)
            return encode_event(event)

    envelope = Envelope(Joined("x"))
    first, second = envelope.encoded(Codec()), envelope.encoded(Codec())
    assert first == second == b'{"type":"joined","name":"x"}\n'
    assert len(calls) == 1


def test_after_shutdown_members_leave_without_announcements() -> None:
    room, alice, bob = LocalRoom(), Inbox("alice"), Inbox("bob")
    room.join(alice.member)
    room.join(bob.member)
    room.shutdown()
    room.leave(bob.member)
    assert alice.events == [Joined("bob")]
    assert room.users() == ()
