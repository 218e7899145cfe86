from __future__ import annotations

import itertools
import threading
import time
from typing import Any

import pytest

from tcp_server import registry
from tcp_server.protocol import (
    AWAY,
    ONLINE,
    Away,
    Back,
    Event,
    Joined,
    JsonLinesCodec,
    Left,
    Message,
    UserInfo,
    encode_event,
)
from tcp_server.registry import (
    AddressFullError,
    Envelope,
    LocalRoom,
    Member,
    NameTakenError,
    NotHeldError,
)
from tcp_server.store import StoredMessage

_sessions = itertools.count(1)
WAIT_S = 5.0


class Inbox:
    """One connection as the room sees it: what it was delivered, and whether it was closed."""

    def __init__(self, name: str, session: int | None = None, port: int = 1000) -> None:
        self.events: list[Event] = []
        self.seqs: list[int] = []  # the envelope seqs of the messages among them
        self.closed: list[str] = []
        self.deliveries = 0
        self.session = next(_sessions) if session is None else session
        self.member = Member(
            UserInfo(name, "127.0.0.1", port, "tcp"), self.session, self.deliver, self.closed.append
        )

    def deliver(self, envelope: Envelope) -> None:
        self.deliveries += 1
        self.events.extend(envelope.events)
        self.seqs.extend(event.seq for event in envelope.events if isinstance(event, Message))

    def clear(self) -> None:
        self.events.clear()
        self.seqs.clear()
        self.deliveries = 0

    def reconnect(self, port: int = 2000, ip: str = "127.0.0.1") -> Inbox:
        """A new connection of the same session (what resume hands the room)."""
        again = Inbox(self.member.info.name, self.session, port)
        again.member = Member(UserInfo(self.member.info.name, ip, port, "tcp"), self.session,
                              again.deliver, again.closed.append)
        return again


def stored(seq: int, sender: Inbox, to: Inbox | None, text: str = "hi") -> StoredMessage:
    return StoredMessage(
        seq=seq,
        ts=float(seq),
        sender=sender.member.info.name,
        sender_session=sender.session,
        to="*" if to is None else to.member.info.name,
        recipient_session=None if to is None else to.session,
        text=text,
    )


def joined(room: LocalRoom, *names: str) -> list[Inbox]:
    inboxes = [Inbox(name) for name in names]
    for inbox in inboxes:
        room.join(inbox.member)
    for inbox in inboxes:
        inbox.clear()
    return inboxes


# --- join, names, users ----------------------------------------------------------------------


def test_join_tells_the_others_but_not_the_newcomer() -> None:
    room, alice, bob = LocalRoom(), Inbox("alice"), Inbox("bob")
    room.join(alice.member)
    room.join(bob.member)
    assert alice.events == [Joined("bob", UserInfo("bob", "127.0.0.1", 1000, "tcp", ONLINE))]
    assert bob.events == []


def test_names_collide_case_insensitively() -> None:
    room = LocalRoom()
    room.join(Inbox("Alice").member)
    with pytest.raises(NameTakenError):
        room.join(Inbox("aLICE").member)
    assert room.is_taken("ALICE")
    assert not room.is_taken("bob")


def test_users_are_sorted_by_name_case_insensitively() -> None:
    room = LocalRoom()
    for name in ["carol", "Bob", "alice"]:
        room.join(Inbox(name).member)
    assert [u.name for u in room.users()] == ["alice", "Bob", "carol"]
    assert {u.status for u in room.users()} == {ONLINE}


def test_a_resume_cannot_move_a_session_into_a_full_address_group() -> None:
    room = LocalRoom()
    for name in ["a1", "a2"]:
        room.join(Inbox(name).member, max_per_address=2)  # 127.0.0.1 is full
    elsewhere = Inbox("bob")
    elsewhere.member = elsewhere.reconnect(ip="127.0.0.9").member
    room.join(elsewhere.member, max_per_address=2)
    room.away(elsewhere.member)
    with pytest.raises(AddressFullError):
        room.resume(elsewhere.reconnect(ip="127.0.0.1").member, max_per_address=2)
    assert room.sessions_from("127.0.0.1") == 2
    assert room.sessions_from("127.0.0.9") == 1
    assert {u.name: u.status for u in room.users()}["bob"] == AWAY
    # Within its own group (a full one too) a resume never counts twice.
    room.resume(elsewhere.reconnect(ip="127.0.0.9").member, max_per_address=1)
    assert room.resume(elsewhere.reconnect(port=3000, ip="127.0.0.9").member,
                       max_per_address=1) is not None
    assert room.sessions_from("127.0.0.9") == 1
    with pytest.raises(NotHeldError):  # a session the room does not hold: that first
        room.resume(Inbox("nobody").reconnect(ip="127.0.0.1").member, max_per_address=2)


# --- away, resume, expire --------------------------------------------------------------------


def test_away_keeps_the_name_reserved_and_tells_the_others() -> None:
    room = LocalRoom()
    alice, bob = joined(room, "alice", "bob")
    away = room.away(bob.member)
    assert away is not None
    assert away.session == bob.session
    assert alice.events == [Away("bob")]
    assert bob.events == []
    assert room.is_taken("BOB")
    with pytest.raises(NameTakenError):
        room.join(Inbox("Bob").member)


def test_users_lists_an_away_member_as_away_with_its_last_address() -> None:
    room = LocalRoom()
    _, bob = joined(room, "alice", "bob")
    room.away(bob.member)
    assert room.users() == (
        UserInfo("alice", "127.0.0.1", 1000, "tcp", ONLINE),
        UserInfo("bob", "127.0.0.1", 1000, "tcp", AWAY),
    )


def test_away_of_a_member_that_no_longer_holds_its_session_does_nothing() -> None:
    room = LocalRoom()
    alice, bob = joined(room, "alice", "bob")
    new_bob = bob.reconnect()
    room.resume(new_bob.member)
    alice.clear()
    assert room.away(bob.member) is None
    assert alice.events == []
    assert [u.status for u in room.users()] == [ONLINE, ONLINE]


def test_resume_of_an_away_session_tells_the_others_back_and_returns_none() -> None:
    room = LocalRoom()
    alice, bob = joined(room, "alice", "bob")
    room.away(bob.member)
    new_bob = bob.reconnect(port=2000)
    assert room.resume(new_bob.member) is None
    assert alice.events == [Away("bob"), Back("bob", UserInfo("bob", "127.0.0.1", 2000, "tcp"))]
    assert new_bob.events == []
    assert room.users()[1] == UserInfo("bob", "127.0.0.1", 2000, "tcp", ONLINE)


def test_resume_of_an_online_session_returns_the_previous_member_and_tells_its_new_entry(
) -> None:
    room = LocalRoom()
    alice, bob = joined(room, "alice", "bob")
    new_bob = bob.reconnect(port=3000)
    assert room.resume(new_bob.member) is bob.member
    # No left or joined: the same session, on another connection, with another address.
    assert alice.events == [Back("bob", UserInfo("bob", "127.0.0.1", 3000, "tcp"))]
    assert new_bob.events == []
    assert len(room) == 2


@pytest.mark.parametrize("case", ["never joined", "other session holds the name", "expired"])
def test_resume_of_a_session_the_room_does_not_hold_raises_not_held(case: str) -> None:
    room = LocalRoom()
    (alice,) = joined(room, "alice")
    bob = Inbox("bob")
    if case == "other session holds the name":
        room.join(Inbox("BOB").member)
    elif case == "expired":
        room.join(bob.member)
        away = room.away(bob.member)
        assert away is not None
        assert room.expire(away)
    alice.clear()
    with pytest.raises(NotHeldError):
        room.resume(bob.reconnect().member)
    assert alice.events == []


def test_expire_ends_the_away_session_tells_the_others_and_frees_the_name() -> None:
    room = LocalRoom()
    alice, bob = joined(room, "alice", "bob")
    away = room.away(bob.member)
    assert away is not None
    assert room.expire(away)
    assert alice.events == [Away("bob"), Left("bob")]
    assert not room.is_taken("bob")
    assert room.recipient("bob") is None


def test_expire_after_resume_does_nothing() -> None:
    room = LocalRoom()
    alice, bob = joined(room, "alice", "bob")
    away = room.away(bob.member)
    assert away is not None
    room.resume(bob.reconnect().member)
    assert not room.expire(away)
    assert alice.events == [Away("bob"), Back("bob", UserInfo("bob", "127.0.0.1", 2000, "tcp"))]
    assert room.is_taken("bob")


def test_expire_of_an_earlier_grace_does_not_end_a_later_away() -> None:
    room = LocalRoom()
    alice, bob = joined(room, "alice", "bob")
    first = room.away(bob.member)
    again = bob.reconnect()
    room.resume(again.member)
    second = room.away(again.member)
    assert first is not None
    assert second is not None
    assert not room.expire(first)
    assert room.is_taken("bob")
    assert alice.events == [Away("bob"), Back("bob", again.member.info), Away("bob")]
    assert room.expire(second)
    assert alice.events[-1] == Left("bob")


def test_restore_holds_the_session_as_away_without_telling_anyone() -> None:
    room = LocalRoom()
    (alice,) = joined(room, "alice")
    bob = Inbox("bob")
    room.restore(bob.member.gone_away())
    assert alice.events == []
    assert room.users()[1].status == AWAY
    with pytest.raises(NameTakenError):
        room.restore(Inbox("BOB").member.gone_away())
    back = bob.reconnect()
    assert room.resume(back.member) is None
    assert alice.events == [Back("bob", back.member.info)]


def test_users_is_the_same_tuple_until_someone_comes_goes_or_changes() -> None:
    """Its encoding is reused while it is the same object (protocol.LastMade): every change
    must give a new one, or a `list` would show a stale room."""
    room = LocalRoom()
    alice, bob = joined(room, "alice", "bob")
    listed = room.users()
    assert room.users() is listed
    seen = [listed]

    def changed() -> tuple[UserInfo, ...]:
        now = room.users()
        assert all(now is not before for before in seen)
        assert room.users() is now
        seen.append(now)
        return now

    carol = Inbox("carol")
    room.join(carol.member)
    assert [u.name for u in changed()] == ["alice", "bob", "carol"]
    away = room.away(bob.member)
    assert away is not None
    assert changed()[1].status == AWAY
    again = bob.reconnect(port=3000)
    room.resume(again.member)
    assert changed()[1] == UserInfo("bob", "127.0.0.1", 3000, "tcp")
    moved = bob.reconnect(port=4000)
    room.resume(moved.member)  # taken over while online: only the port differs
    assert changed()[1].port == 4000
    assert room.leave(carol.member)
    assert [u.name for u in changed()] == ["alice", "bob"]
    gone = room.away(moved.member)
    assert gone is not None
    changed()
    assert room.expire(gone)
    assert [u.name for u in changed()] == ["alice"]
    room.restore(Inbox("dave").member.gone_away())
    assert [u.name for u in changed()] == ["alice", "dave"]
    assert alice.member.info in room.users()


def test_a_list_made_while_someone_joins_is_not_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    """users() sorts outside the lock: a change meanwhile must not leave its list cached."""
    room = LocalRoom()
    joined(room, "alice")
    late = Inbox("zed")

    def join_while_sorting(infos: list[UserInfo], **options: Any) -> list[UserInfo]:
        if not room.is_taken("zed"):
            room.join(late.member)
        return sorted(infos, **options)

    monkeypatch.setattr(registry, "sorted", join_while_sorting, raising=False)
    assert [u.name for u in room.users()] == ["alice"]  # the list as it was when taken
    monkeypatch.undo()
    assert [u.name for u in room.users()] == ["alice", "zed"]


# --- leave -----------------------------------------------------------------------------------


def test_leave_tells_the_others_once_and_frees_the_name() -> None:
    room, alice, bob = LocalRoom(), Inbox("alice"), Inbox("bob")
    room.join(alice.member)
    room.join(bob.member)
    assert room.leave(bob.member)
    assert not room.leave(bob.member)
    assert alice.events == [Joined("bob", bob.member.info), Left("bob")]
    room.join(Inbox("BOB").member)
    assert len(room) == 2


def test_leave_of_a_stale_member_does_not_remove_the_new_holder_of_the_name() -> None:
    room, old, new = LocalRoom(), Inbox("bob"), Inbox("bob")
    room.join(old.member)
    room.leave(old.member)
    room.join(new.member)
    assert not room.leave(old.member)
    assert [u.name for u in room.users()] == ["bob"]
    assert room.recipient("bob") == ("bob", new.session)


def test_leave_of_a_connection_replaced_by_resume_does_not_end_the_session() -> None:
    room = LocalRoom()
    alice, bob = joined(room, "alice", "bob")
    room.resume(bob.reconnect().member)
    alice.clear()
    assert not room.leave(bob.member)
    assert alice.events == []
    assert room.is_taken("bob")


def test_leave_of_an_away_session_tells_the_others_left() -> None:
    room = LocalRoom()
    alice, bob = joined(room, "alice", "bob")
    away = room.away(bob.member)
    assert away is not None
    assert room.leave(away)
    assert alice.events == [Away("bob"), Left("bob")]
    assert not room.is_taken("bob")


def test_after_shutdown_members_leave_and_go_away_without_announcements() -> None:
    room = LocalRoom()
    alice, bob, carol = joined(room, "alice", "bob", "carol")
    room.shutdown()
    assert room.leave(bob.member)
    assert room.away(carol.member) is not None
    assert alice.events == []
    assert [(u.name, u.status) for u in room.users()] == [("alice", ONLINE), ("carol", AWAY)]


# --- recipient -------------------------------------------------------------------------------


def test_recipient_finds_online_and_away_holders_under_their_registered_names() -> None:
    room = LocalRoom()
    _, bob = joined(room, "Alice", "bob")
    room.away(bob.member)
    alice_session = room.recipient("alice")
    assert alice_session is not None
    assert alice_session[0] == "Alice"
    assert room.recipient("BOB") == ("bob", bob.session)
    assert room.recipient("ghost") is None


# --- publish ---------------------------------------------------------------------------------


def test_publish_to_everyone_reaches_every_online_member_but_the_senders_session() -> None:
    room = LocalRoom()
    alice, bob, carol = joined(room, "alice", "bob", "carol")
    message = stored(7, alice, None, "hey")
    room.publish([message])
    assert bob.events == carol.events == [message.event()]
    assert bob.seqs == [7]
    assert alice.events == []


def test_publish_skips_the_senders_session_on_its_new_connection_too() -> None:
    room = LocalRoom()
    alice, bob = joined(room, "alice", "bob")
    new_alice = alice.reconnect()
    room.resume(new_alice.member)
    bob.clear()
    room.publish([stored(1, alice, None)])
    assert new_alice.events == alice.events == []
    assert len(bob.events) == 1


def test_publish_gives_each_member_its_messages_of_a_batch_in_one_delivery_in_seq_order(
) -> None:
    room = LocalRoom()
    alice, bob, carol = joined(room, "alice", "bob", "carol")
    room.publish([stored(1, alice, bob), stored(2, carol, None), stored(3, alice, carol),
                  stored(4, carol, bob), stored(5, bob, None)])
    assert (bob.seqs, carol.seqs, alice.seqs) == ([1, 2, 4], [3, 5], [2, 5])
    assert bob.deliveries == carol.deliveries == alice.deliveries == 1
    assert [event.text for event in bob.events if isinstance(event, Message)] == ["hi"] * 3


def test_a_batch_envelope_spans_its_messages_seqs_and_keeps_those_after_a_seq() -> None:
    alice, bob = Inbox("alice"), Inbox("bob")
    parts = [Envelope(stored(seq, alice, bob).event()) for seq in (4, 7, 9)]
    batch = Envelope.batch(parts)
    assert (batch.first_seq, batch.seq) == (4, 9)
    assert Envelope.batch(parts[:1]) is parts[0]
    rest = batch.after(4)
    assert rest is not None
    assert [e.seq for e in rest.events] == [7, 9]
    assert (rest.first_seq, rest.seq) == (7, 9)
    assert batch.after(8) is parts[2]
    assert batch.after(9) is None
    assert parts[0].after(3) is parts[0]
    assert parts[0].after(4) is None
    codec = JsonLinesCodec()
    assert batch.encoded(codec) == b"".join(part.encoded(codec) for part in parts)


def test_publish_of_a_direct_message_reaches_only_the_recipient_session() -> None:
    room = LocalRoom()
    alice, bob, carol = joined(room, "alice", "Bob", "carol")
    message = stored(3, alice, bob, "psst")
    room.publish([message])
    assert bob.events == [Message("alice", "Bob", "psst", 3.0, 3)]
    assert alice.events == carol.events == []


def test_publish_of_a_direct_message_to_a_later_holder_of_the_name_reaches_nobody() -> None:
    room = LocalRoom()
    alice, bob = joined(room, "alice", "bob")
    message = stored(1, alice, bob)
    room.leave(bob.member)
    (new_bob,) = joined(room, "bob")
    alice.clear()
    room.publish([message])
    assert new_bob.events == []
    assert alice.events == []


def test_publish_delivers_nothing_to_away_members() -> None:
    room = LocalRoom()
    alice, bob, carol = joined(room, "alice", "bob", "carol")
    room.away(bob.member)
    room.publish([stored(1, alice, None), stored(2, alice, bob)])
    assert bob.events == []
    assert carol.seqs == [1]


def test_publish_delivers_to_a_resumed_connection_not_the_replaced_one() -> None:
    room = LocalRoom()
    alice, bob = joined(room, "alice", "bob")
    new_bob = bob.reconnect()
    room.resume(new_bob.member)
    room.publish([stored(1, alice, None), stored(2, alice, bob)])
    assert bob.events == []
    assert new_bob.seqs == [1, 2]


def test_publish_delivers_in_the_given_order() -> None:
    room = LocalRoom()
    alice, bob, carol = joined(room, "alice", "bob", "carol")
    batch = [
        stored(10, alice, None),
        stored(11, alice, bob),
        stored(12, carol, None),
        stored(13, carol, bob),
        stored(14, bob, None),
        stored(15, alice, None),
    ]
    room.publish(batch)
    assert bob.seqs == [10, 11, 12, 13, 15]
    assert [e.seq for e in bob.events if isinstance(e, Message)] == bob.seqs
    assert alice.seqs == [12, 14]
    assert carol.seqs == [10, 14, 15]


# --- envelopes -------------------------------------------------------------------------------


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
    assert envelope.seq == 0


def test_envelope_batch_joins_the_parts_encodings_in_order() -> None:
    parts = [Envelope(Joined("a")), Envelope(Left("b"))]
    codec = JsonLinesCodec()
    first_part = parts[0].encoded(codec)
    batch = Envelope.batch(parts)
    assert batch.events == (Joined("a"), Left("b"))
    assert batch.seq == 0
    assert batch.encoded(codec) == first_part + b'{"type":"left","name":"b"}\n'
    assert Envelope.batch(parts[:1]) is parts[0]


def told(inbox: Inbox) -> list[str]:
    """What an inbox was told of, as "type name" strings."""
    return [f"{type(event).__name__.lower()} {getattr(event, 'name', '')}"
            for event in inbox.events]


class BlockingInbox(Inbox):
    """An inbox whose next delivery after arm() waits until released: announcements made
    meanwhile queue up behind the thread that is delivering."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.entered = threading.Event()
        self.release = threading.Event()
        self.armed = False

    def arm(self) -> None:
        self.armed = True
        self.clear()
        self.deliveries = 0

    def deliver(self, envelope: Envelope) -> None:
        if self.armed:
            self.armed = False
            self.entered.set()
            assert self.release.wait(WAIT_S)
        super().deliver(envelope)


def test_announcements_made_during_a_delivery_go_out_together_each_to_whom_it_concerns() -> None:
    room = LocalRoom()
    slow = BlockingInbox("slow")
    room.join(slow.member)
    slow.arm()
    early = Inbox("early")
    first = threading.Thread(target=room.join, args=(early.member,))
    first.start()  # delivers joined(early) to slow, which blocks in it
    assert slow.entered.wait(WAIT_S)

    watcher = Inbox("watcher")  # comes online during the blocked delivery...
    newcomers = [Inbox(f"new{n}") for n in range(3)]
    threads = [threading.Thread(target=room.join, args=(inbox.member,))
               for inbox in [watcher, *newcomers]]
    for thread in threads:
        thread.start()
        time.sleep(0.05)  # in this order: each is stamped before the next
    assert all(thread.is_alive() for thread in threads), "returned before their delivery"
    slow.release.set()
    for thread in [first, *threads]:
        thread.join(WAIT_S)

    joins = [f"joined {inbox.member.info.name}" for inbox in newcomers]
    assert told(slow) == ["joined early", "joined watcher", *joins]
    assert slow.deliveries == 2  # one for the first join, one for the four queued behind it
    # Each is told only what happened after it came online, never its own arrival.
    assert told(early) == ["joined watcher", *joins]
    assert told(watcher) == joins
    assert told(newcomers[0]) == joins[1:]
    assert told(newcomers[2]) == []


def test_a_member_that_went_away_before_the_batch_is_not_delivered_to() -> None:
    room = LocalRoom()
    slow = BlockingInbox("slow")
    room.join(slow.member)
    goer = Inbox("goer")
    room.join(goer.member)
    slow.arm()
    first = threading.Thread(target=room.join, args=(Inbox("a").member,))
    first.start()
    assert slow.entered.wait(WAIT_S)
    goer.clear()
    late = threading.Thread(target=room.join, args=(Inbox("b").member,))
    late.start()
    time.sleep(0.05)
    # Queued behind too; goer is offline when the batch goes out.
    going = threading.Thread(target=room.away, args=(goer.member,))
    going.start()
    time.sleep(0.05)
    slow.release.set()
    for thread in (first, late, going):
        thread.join(WAIT_S)
    assert told(goer) == ["joined a"]  # from the first delivery, before it went away
    assert told(slow) == ["joined a", "joined b", "away goer"]
