"""Commands, the core's rules, driven without sockets: a fake room and the memory store.

Each request, each error code it can answer (always with the request's id), the exact replies.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import pytest

from tcp_server.commands import (
    RESUME_BURST,
    RESUMED_ELSEWHERE,
    RESUMES_PER_MINUTE,
    Commands,
    Outcome,
    Session,
)
from tcp_server.memory_store import MemoryStore
from tcp_server.protocol import (
    AWAY,
    EVERYONE,
    Away,
    Back,
    Bye,
    Conversation,
    Conversations,
    Error,
    ErrorCode,
    Event,
    Exit,
    Hello,
    History,
    HistoryPage,
    Joined,
    Left,
    ListConversations,
    ListUsers,
    MarkRead,
    Message,
    Ping,
    Pong,
    Proxy,
    ReadMarker,
    Request,
    RequestId,
    Results,
    Search,
    Send,
    Sent,
    UserInfo,
    Users,
    Welcome,
    name_key,
)
from tcp_server.registry import (
    AddressFullError,
    Envelope,
    LocalRoom,
    Member,
    NameTakenError,
    NotHeldError,
)
from tcp_server.store import SessionId, StoredMessage, StoreError
from tests.support.texts import TAKEN_HINT

SECRET = "gateway-secret"
NOW = 1_800_000_000.0


class FakeRoom:
    """A room that records what Commands asks of it; `race_*` make join fail as if another
    connection had taken the name (or filled the address) between the check and the join."""

    def __init__(self) -> None:
        self.members: dict[str, Member] = {}
        self.announced: list[Event] = []
        self.published: list[StoredMessage] = []
        self.race_name_taken = False
        self.race_address_full = False
        self.engine_down = False  # join fails as a Redis room's does when Redis is down

    def join(self, member: Member, max_per_address: int = 0) -> None:
        if self.engine_down:
            raise StoreError("redis: connection refused")
        if self.race_name_taken or name_key(member.info.name) in self.members:
            raise NameTakenError(member.info.name)
        if self.race_address_full:
            raise AddressFullError(member.info.ip)
        self.members[name_key(member.info.name)] = member
        self.announced.append(Joined(member.info.name))

    def resume(self, member: Member, max_per_address: int = 0) -> Member | None:
        if self.engine_down:
            raise StoreError("redis: connection refused")
        holder = self.members.get(name_key(member.info.name))
        if holder is None or holder.session != member.session:
            raise NotHeldError(member.info.name)
        if self.race_address_full:
            raise AddressFullError(member.info.ip)
        self.members[name_key(member.info.name)] = member
        if holder.info.status == AWAY:
            self.announced.append(Back(member.info.name))
            return None
        return holder

    def away(self, member: Member) -> Member | None:
        if self.members.get(name_key(member.info.name)) is not member:
            return None
        gone = member.gone_away()
        self.members[name_key(member.info.name)] = gone
        self.announced.append(Away(member.info.name))
        return gone

    def leave(self, member: Member) -> bool:
        holder = self.members.get(name_key(member.info.name))
        if holder is None or holder.session != member.session:
            return False
        del self.members[name_key(member.info.name)]
        self.announced.append(Left(member.info.name))
        return True

    def expire(self, away: Member) -> bool:
        if self.members.get(name_key(away.info.name)) is not away:
            return False
        return self.leave(away)

    def restore(self, away: Member) -> None:
        if name_key(away.info.name) in self.members:
            raise NameTakenError(away.info.name)
        self.members[name_key(away.info.name)] = away

    def is_taken(self, name: str) -> bool:
        return name_key(name) in self.members

    def sessions_from(self, ip: str) -> int:
        return sum(1 for m in self.members.values() if m.info.ip == ip)

    def recipient(self, name: str) -> tuple[str, SessionId] | None:
        member = self.members.get(name_key(name))
        return None if member is None else (member.info.name, member.session)

    def users(self) -> tuple[UserInfo, ...]:
        return tuple(sorted((m.info for m in self.members.values()),
                            key=lambda info: name_key(info.name)))

    def publish(self, messages: list[StoredMessage]) -> None:
        self.published.extend(messages)

    def shutdown(self) -> None:
        pass


class Peer:
    """One connection's Session, with what the room delivered to it and why it was closed."""

    def __init__(self, ip: str = "127.0.0.1", port: int = 5000) -> None:
        self.delivered: list[Event] = []
        self.closed: list[str] = []
        self.session = Session(ip, port, self._deliver, self.closed.append)

    def _deliver(self, envelope: Envelope) -> None:
        self.delivered.extend(envelope.events)


@pytest.fixture
def room() -> FakeRoom:
    return FakeRoom()


@pytest.fixture
def store(room: FakeRoom) -> Iterator[MemoryStore]:
    store = MemoryStore(on_commit=room.publish, clock=lambda: NOW)
    yield store
    store.close()


@pytest.fixture
def commands(room: FakeRoom, store: MemoryStore) -> Iterator[Commands]:
    commands = Commands(room, store, gateway_secret=SECRET, clock=lambda: NOW,
                        max_per_address=3)
    yield commands
    commands.stop()


def registered(commands: Commands, name: str, ip: str = "127.0.0.1", port: int = 5000) -> Peer:
    peer = Peer(ip, port)
    outcome = commands.handle(peer.session, Hello(name=name))
    assert isinstance(outcome.replies[0], Welcome), outcome
    return peer


def sent(outcome: Outcome) -> list[Event]:
    """Submit an outcome's pending send and return what its sender is answered."""
    assert outcome.pending is not None, outcome
    answers: list[Event] = []
    outcome.pending.submit(answers.extend)
    return answers


def error_of(outcome: Outcome) -> Error:
    assert len(outcome.replies) == 1, outcome
    reply = outcome.replies[0]
    assert isinstance(reply, Error), reply
    return reply


# --- ping, exit, proxy: allowed before hello ---------------------------------------------------


@pytest.mark.parametrize("rid", [None, 7, "p"])
def test_ping_answers_pong_with_the_id_before_and_after_hello(commands: Commands,
                                                               rid: RequestId) -> None:
    peer = Peer()
    assert commands.handle(peer.session, Ping(id=rid)) == Outcome([Pong(id=rid)])
    commands.handle(peer.session, Hello(name="alice"))
    assert commands.handle(peer.session, Ping(id=rid)) == Outcome([Pong(id=rid)])


def test_exit_answers_bye_with_the_id_and_closes(commands: Commands) -> None:
    peer = registered(commands, "alice")
    assert commands.handle(peer.session, Exit(id="x")) == Outcome([Bye(id="x")], close=True)
    assert peer.session.exited


def test_exit_before_hello_answers_bye(commands: Commands) -> None:
    assert commands.handle(Peer().session, Exit(id=1)) == Outcome([Bye(id=1)], close=True)


def test_proxy_with_the_secret_gives_the_session_the_browsers_address(
    commands: Commands, room: FakeRoom
) -> None:
    peer = Peer("127.0.0.1", 4000)
    assert commands.handle(peer.session, Proxy(SECRET, "203.0.113.9", 51000, id=1)) == Outcome()
    commands.handle(peer.session, Hello(name="webby"))
    assert room.users() == (UserInfo("webby", "203.0.113.9", 51000, "web"),)


@pytest.mark.parametrize(
    ("secret", "message"),
    [(None, "this server accepts no gateway connections"), ("wrong", "wrong gateway secret"),
     ("\ud800", "wrong gateway secret")],
)
def test_proxy_without_the_right_secret_is_forbidden_and_closes(
    room: FakeRoom, store: MemoryStore, secret: str | None, message: str
) -> None:
    commands = Commands(room, store, gateway_secret=None if secret is None else SECRET)
    outcome = commands.handle(Peer().session, Proxy(secret or SECRET, "10.0.0.1", 1, id="g"))
    assert outcome == Outcome([Error(ErrorCode.FORBIDDEN, message, "g")], close=True)


def test_a_second_proxy_is_forbidden(commands: Commands) -> None:
    peer = Peer()
    commands.handle(peer.session, Proxy(SECRET, "10.0.0.1", 1))
    assert commands.handle(peer.session, Proxy(SECRET, "10.0.0.2", 2, id=3)) == Outcome(
        [Error(ErrorCode.FORBIDDEN, "proxy is only allowed once, before hello", 3)], close=True
    )


def test_proxy_after_hello_is_forbidden(commands: Commands) -> None:
    peer = registered(commands, "alice")
    outcome = commands.handle(peer.session, Proxy(SECRET, "10.0.0.1", 1, id=4))
    assert error_of(outcome) == Error(
        ErrorCode.FORBIDDEN, "proxy is only allowed once, before hello", 4
    )
    assert outcome.close
    assert peer.session.ip == "127.0.0.1"


# --- hello -----------------------------------------------------------------------------------


def test_hello_welcomes_with_the_address_a_token_and_the_last_seq(
    commands: Commands, room: FakeRoom, store: MemoryStore
) -> None:
    bob = registered(commands, "bob")
    sent(commands.handle(bob.session, Send(to=EVERYONE, text="before")))
    peer = Peer("127.0.0.2", 6000)
    outcome = commands.handle(peer.session, Hello(name="Alice", id="h"))
    welcome = outcome.replies[0]
    assert isinstance(welcome, Welcome)
    assert (welcome.name, welcome.ip, welcome.port, welcome.id, welcome.seq, welcome.resumed,
            welcome.truncated) == ("Alice", "127.0.0.2", 6000, "h", 1, False, False)
    assert len(welcome.session) == 32
    assert store.find_session(welcome.session) is not None
    assert [list(page) for page in outcome.replay] == []
    assert outcome.after_replay == []
    assert not outcome.close
    assert peer.session.name == "Alice"
    assert room.announced[-1] == Joined("Alice")


def test_hello_with_recent_adds_the_last_messages_to_everyone_after_the_welcome(
    commands: Commands,
) -> None:
    bob = registered(commands, "bob")
    for text in ("one", "two", "three"):
        sent(commands.handle(bob.session, Send(to=EVERYONE, text=text)))
    outcome = commands.handle(Peer().session, Hello(name="alice", recent=2))
    assert outcome.after_replay == [HistoryPage(
        with_=EVERYONE,
        messages=(Message("bob", EVERYONE, "two", NOW, 2),
                  Message("bob", EVERYONE, "three", NOW, 3)),
        more=True,
    )]


def test_a_second_hello_is_already_registered(commands: Commands) -> None:
    peer = registered(commands, "Alice")
    outcome = commands.handle(peer.session, Hello(name="other", id=2))
    assert outcome == Outcome([Error(
        ErrorCode.ALREADY_REGISTERED, "you are already registered as Alice", 2
    )])


def test_hello_with_a_name_taken_in_another_case_is_name_taken(
    commands: Commands, store: MemoryStore
) -> None:
    registered(commands, "Alice")
    peer = Peer("127.0.0.2")
    outcome = commands.handle(peer.session, Hello(name="ALICE", id="n"))
    taken = f"the name ALICE is taken{TAKEN_HINT}"
    assert outcome == Outcome([Error(ErrorCode.NAME_TAKEN, taken, "n")])
    assert peer.session.member is None
    assert len(store.open_sessions()) == 1


def test_hello_that_loses_a_race_for_the_name_is_name_taken_and_ends_its_session(
    commands: Commands, room: FakeRoom, store: MemoryStore
) -> None:
    room.race_name_taken = True
    peer = Peer()
    outcome = commands.handle(peer.session, Hello(name="alice", id=5))
    taken = f"the name alice is taken{TAKEN_HINT}"
    assert outcome == Outcome([Error(ErrorCode.NAME_TAKEN, taken, 5)])
    assert peer.session.member is None
    assert peer.session.record is None
    assert store.open_sessions() == []


def test_hello_from_an_address_with_the_most_sessions_is_too_many_from_address(
    commands: Commands, store: MemoryStore
) -> None:
    for n in range(3):
        registered(commands, f"user{n}", "10.1.1.1", 1000 + n)
    outcome = commands.handle(Peer("10.1.1.1").session, Hello(name="user3", id=9))
    assert outcome == Outcome([Error(
        ErrorCode.TOO_MANY_FROM_ADDRESS,
        "3 users are already registered from your address 10.1.1.1; one of them must exit "
        "first", 9,
    )])
    assert len(store.open_sessions()) == 3
    assert isinstance(commands.handle(Peer("10.1.1.2").session, Hello(name="user3")).replies[0],
                      Welcome)


def test_hello_that_loses_a_race_for_its_address_ends_its_session(
    commands: Commands, room: FakeRoom, store: MemoryStore
) -> None:
    room.race_address_full = True
    outcome = commands.handle(Peer("10.1.1.1").session, Hello(name="alice", id="r"))
    assert error_of(outcome).code == ErrorCode.TOO_MANY_FROM_ADDRESS
    assert error_of(outcome).id == "r"
    assert store.open_sessions() == []


def test_hello_whose_join_fails_in_the_room_is_unavailable_and_ends_its_session(
    commands: Commands, room: FakeRoom, store: MemoryStore
) -> None:
    room.engine_down = True
    peer = Peer()
    outcome = commands.handle(peer.session, Hello(name="alice", id="j"))
    assert error_of(outcome).code == ErrorCode.UNAVAILABLE
    assert error_of(outcome).id == "j"
    assert peer.session.member is None
    assert store.open_sessions() == []  # no token left alive that nobody was given


def joined_and_gone(commands: Commands, name: str, ip: str) -> Outcome:
    """A hello; if welcomed, its exit (the address's place comes back, its join stays
    counted)."""
    peer = Peer(ip)
    outcome = commands.handle(peer.session, Hello(name=name, id=1))
    if isinstance(outcome.replies[0], Welcome):
        commands.handle(peer.session, Exit())
        commands.disconnect(peer.session, 0)
    return outcome


def test_new_users_from_one_address_are_limited_per_minute(
    room: FakeRoom, store: MemoryStore
) -> None:
    # 2 a minute, and with max_per_address 3 a burst of 3: everyone an address may hold
    # can join at once.
    commands = Commands(room, store, clock=lambda: NOW, max_per_address=3, joins_per_minute=2)
    try:
        welcomed = [joined_and_gone(commands, f"user{n}", "10.1.1.1") for n in range(3)]
        assert all(isinstance(o.replies[0], Welcome) for o in welcomed)
        announced = len(room.announced)
        refused = joined_and_gone(commands, "late", "10.1.1.1")
        assert refused == Outcome([Error(
            ErrorCode.RATE_LIMITED,
            "slow down: too many new users from your address 10.1.1.1 (at most 2 a minute "
            "after the first 3); try again in a few seconds", 1,
        )])
        assert len(room.announced) == announced  # nothing was announced for it
        assert store.open_sessions() == []  # nor a session opened
        assert isinstance(joined_and_gone(commands, "x", "10.1.1.2").replies[0], Welcome)
        v6 = [joined_and_gone(commands, f"v{n}", f"2001:db8::{n}") for n in range(1, 5)]
        assert [type(o.replies[0]) for o in v6] == [Welcome] * 3 + [Error]
        assert "from your network 2001:db8::/64" in error_of(v6[3]).message
    finally:
        commands.stop()


def test_a_hello_refused_for_another_reason_spends_no_join(
    room: FakeRoom, store: MemoryStore
) -> None:
    commands = Commands(room, store, clock=lambda: NOW, joins_per_minute=1)  # a burst of 1
    try:
        registered(commands, "holder", "10.5.5.5")  # another address
        assert error_of(joined_and_gone(commands, "HOLDER", "10.1.1.1")).code == \
            ErrorCode.NAME_TAKEN
        room.race_address_full = True  # lost in the room, after the checks
        assert error_of(joined_and_gone(commands, "a", "10.1.1.1")).code == \
            ErrorCode.TOO_MANY_FROM_ADDRESS
        room.race_address_full = False
        room.engine_down = True
        assert error_of(joined_and_gone(commands, "a", "10.1.1.1")).code == \
            ErrorCode.UNAVAILABLE
        room.engine_down = False
        assert isinstance(joined_and_gone(commands, "a", "10.1.1.1").replies[0], Welcome)
        assert error_of(joined_and_gone(commands, "b", "10.1.1.1")).code == \
            ErrorCode.RATE_LIMITED
    finally:
        commands.stop()


def test_resumes_are_limited_per_session_not_per_address(
    room: FakeRoom, store: MemoryStore
) -> None:
    """A user behind a shared address cannot spend another user's resumes (and so cost them
    their session); each session has its own."""
    commands = Commands(room, store, clock=lambda: NOW, joins_per_minute=2)
    try:
        tokens = {}
        for name in ["alice", "hog"]:
            peer = Peer("10.1.1.1")
            welcome = commands.handle(peer.session, Hello(name=name)).replies[0]
            assert isinstance(welcome, Welcome)
            tokens[name] = welcome.session
            commands.disconnect(peer.session, 0)
        assert error_of(joined_and_gone(commands, "more", "10.1.1.1")).code == \
            ErrorCode.RATE_LIMITED  # the address's new users are spent...

        def resume(name: str) -> Outcome:
            peer = Peer("10.1.1.1")
            outcome = commands.handle(peer.session, Hello(
                name=name, resume=tokens[name], after=0, id="r"))
            if isinstance(outcome.replies[0], Welcome):
                commands.disconnect(peer.session, 0)
            return outcome

        hogged = [resume("hog") for _ in range(RESUME_BURST + 1)]  # ...and hog's resumes
        assert error_of(hogged[-1]).code == ErrorCode.RATE_LIMITED
        room.race_address_full = True  # a refused resume spends nothing either
        assert error_of(resume("alice")).code == ErrorCode.TOO_MANY_FROM_ADDRESS
        room.race_address_full = False
        room.engine_down = True  # nor one the room could not take (Redis down), retried
        for _ in range(RESUME_BURST + 1):
            assert error_of(resume("alice")).code == ErrorCode.UNAVAILABLE
        room.engine_down = False
        outcomes = [resume("alice") for _ in range(RESUME_BURST + 1)]  # ...alice's are hers
        assert [type(o.replies[0]) for o in outcomes] == [Welcome] * RESUME_BURST + [Error]
        assert outcomes[-1] == Outcome([Error(
            ErrorCode.RATE_LIMITED,
            f"slow down: this session was taken back too often (at most "
            f"{RESUMES_PER_MINUTE} times a minute after the first {RESUME_BURST}); try again "
            "in a few seconds", "r",
        )])
        forged = commands.handle(Peer("10.1.1.1").session,
                                 Hello(name="hog", resume="x" * 32, after=0))
        assert error_of(forged).code == ErrorCode.SESSION_EXPIRED
    finally:
        commands.stop()


def test_connections_are_charged_per_address_until_they_prove_themselves(
    room: FakeRoom, store: MemoryStore
) -> None:
    commands = Commands(room, store, gateway_secret=SECRET, clock=lambda: NOW,
                        connects_per_minute=2)  # a burst of 2
    admit = commands.admission.admit
    try:
        assert [admit(f"2001:db8::{n}") for n in range(3)] == [
            "2001:db8::/64", "2001:db8::/64", None]
        assert admit("10.0.0.1") == "10.0.0.1"
        user = Peer("10.0.0.1")
        user.session.charged = "10.0.0.1"
        commands.handle(user.session, Hello(name="alice"))  # registered: the charge is back
        assert user.session.charged == ""
        assert [admit("10.0.0.1") for _ in range(3)] == ["10.0.0.1", "10.0.0.1", None]
        gateway = Peer("10.0.0.9")
        gateway.session.charged = admit("10.0.0.9") or ""
        commands.handle(gateway.session, Proxy(secret=SECRET, ip="192.0.2.1", port=1))
        assert [admit("10.0.0.9") for _ in range(5)] == [""] * 5  # never charged
    finally:
        commands.stop()
    unlimited = Commands(room, store)
    try:
        assert [unlimited.admission.admit("10.0.0.1") for _ in range(100)] == [""] * 100  # 0: any
    finally:
        unlimited.stop()


def test_no_sign_in_limit_when_it_is_0(commands: Commands) -> None:
    for n in range(200):
        peer = registered(commands, f"user{n}", "10.9.9.9")
        commands.handle(peer.session, Exit())
        commands.disconnect(peer.session, 0)


# --- resume ------------------------------------------------------------------------------------


def test_resume_of_an_away_session_welcomes_back_and_replays_what_it_missed(
    commands: Commands, room: FakeRoom
) -> None:
    alice = Peer()
    welcome = commands.handle(alice.session, Hello(name="Alice")).replies[0]
    assert isinstance(welcome, Welcome)
    bob = registered(commands, "bob", "127.0.0.2")
    commands.disconnect(alice.session, delivered_seq=0)
    assert room.announced[-1] == Away("Alice")
    sent(commands.handle(bob.session, Send(to="alice", text="are you there?")))
    again = Peer("127.0.0.3", 7000)
    outcome = commands.handle(again.session, Hello(name="alice", resume=welcome.session,
                                                   after=0, id="r"))
    back = outcome.replies[0]
    assert isinstance(back, Welcome)
    assert (back.name, back.ip, back.port, back.id, back.session, back.seq, back.resumed) == (
        "Alice", "127.0.0.3", 7000, "r", welcome.session, 1, True
    )
    assert [m.text for page in outcome.replay for m in page] == ["are you there?"]
    assert room.announced[-1] == Back("Alice")


def test_a_resume_without_after_while_the_disconnect_is_recorded_replays_only_what_was_missed(
    commands: Commands, room: FakeRoom, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A plain-text client resumes without `after`: the server's record of what its last
    # connection had queued decides. Others learn "away" from room.away(); a resume they
    # prompt can come before the store has recorded that connection's delivered seq.
    alice = Peer()
    welcome = commands.handle(alice.session, Hello(name="alice")).replies[0]
    assert isinstance(welcome, Welcome)
    bob = registered(commands, "bob", "127.0.0.2")
    sent(commands.handle(bob.session, Send(to="alice", text="seen live")))
    resumed: list[Outcome] = []
    room_away = room.away

    def away_then_resume_at_once(member: Member) -> Member | None:
        away = room_away(member)
        resumed.append(commands.handle(Peer("127.0.0.3", 7000).session,
                                       Hello(name="alice", resume=welcome.session)))
        return away

    monkeypatch.setattr(room, "away", away_then_resume_at_once)
    commands.disconnect(alice.session, delivered_seq=1)
    (outcome,) = resumed
    assert isinstance(outcome.replies[0], Welcome)
    assert [m.text for page in outcome.replay for m in page] == []


def test_resume_of_an_online_session_closes_the_connection_that_held_it(
    commands: Commands,
) -> None:
    alice = Peer()
    welcome = commands.handle(alice.session, Hello(name="alice")).replies[0]
    assert isinstance(welcome, Welcome)
    outcome = commands.handle(Peer().session, Hello(name="alice", resume=welcome.session,
                                                    after=0))
    assert isinstance(outcome.replies[0], Welcome)
    assert alice.closed == [RESUMED_ELSEWHERE]


def test_resume_into_a_full_address_is_too_many_from_address_and_the_session_stays_away(
    commands: Commands, room: FakeRoom, store: MemoryStore
) -> None:
    alice = Peer("10.1.1.1")
    welcome = commands.handle(alice.session, Hello(name="alice")).replies[0]
    assert isinstance(welcome, Welcome)
    commands.disconnect(alice.session, delivered_seq=0)
    room.race_address_full = True
    peer = Peer("10.2.2.2")
    outcome = commands.handle(peer.session, Hello(name="alice", resume=welcome.session,
                                                  after=0, id="m"))
    assert outcome == Outcome([Error(
        ErrorCode.TOO_MANY_FROM_ADDRESS,
        "3 users are already registered from your address 10.2.2.2; one of them must exit "
        "first", "m",
    )])
    assert peer.session.member is None
    assert room.announced[-1] == Away("alice")
    (record,) = store.open_sessions()
    assert record.ip == "10.1.1.1"  # not moved: the token still resumes from elsewhere
    room.race_address_full = False
    again = commands.handle(Peer("10.3.3.3").session,
                            Hello(name="alice", resume=welcome.session, after=0))
    assert isinstance(again.replies[0], Welcome)


def test_a_resume_whose_store_update_fails_leaves_the_session_away_and_resumable(
    commands: Commands, room: FakeRoom, store: MemoryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice = Peer()
    welcome = commands.handle(alice.session, Hello(name="alice")).replies[0]
    assert isinstance(welcome, Welcome)
    commands.disconnect(alice.session, delivered_seq=0)

    def fail(*args: object) -> None:
        raise StoreError("disk I/O error")

    monkeypatch.setattr(store, "reconnect_session", fail)
    peer = Peer("10.1.1.1")
    outcome = commands.handle(peer.session, Hello(name="alice", resume=welcome.session,
                                                  after=0, id="u"))
    assert error_of(outcome).code == ErrorCode.UNAVAILABLE
    assert peer.session.member is None  # not registered, as it was told
    assert room.announced[-2:] == [Back("alice"), Away("alice")]
    monkeypatch.undo()
    again = commands.handle(Peer("10.1.1.1").session,
                            Hello(name="alice", resume=welcome.session, after=0))
    assert isinstance(again.replies[0], Welcome)


@pytest.mark.parametrize("case", ["unknown token", "another name", "ended"])
def test_resume_that_does_not_match_a_live_session_is_session_expired(
    commands: Commands, case: str
) -> None:
    alice = Peer()
    welcome = commands.handle(alice.session, Hello(name="alice")).replies[0]
    assert isinstance(welcome, Welcome)
    token, name = welcome.session, "alice"
    if case == "unknown token":
        token = "x" * 32
    elif case == "another name":
        registered(commands, "bob")
        name = "bob"
    else:
        alice.session.exited = True
        commands.disconnect(alice.session, 0)
    outcome = commands.handle(Peer().session, Hello(name=name, resume=token, after=0, id=8))
    assert outcome == Outcome([Error(
        ErrorCode.SESSION_EXPIRED,
        "that session has ended or does not exist; say hello without resume", 8,
    )])


# --- the requests of a registered session ------------------------------------------------------


@pytest.mark.parametrize("request_", [
    ListUsers(id=1), Send(to="bob", text="hi", id=2), History(with_=EVERYONE, id=3),
    Search(q="hi", id=4), MarkRead(with_=EVERYONE, seq=1, id=5), ListConversations(id=6),
])
def test_requests_before_hello_are_not_registered_with_their_id(
    commands: Commands, request_: Request
) -> None:
    outcome = commands.handle(Peer().session, request_)
    assert outcome == Outcome([Error(
        ErrorCode.NOT_REGISTERED, "say hello with a name first", request_.id
    )])


def test_list_answers_everyone_sorted_with_the_id(commands: Commands) -> None:
    alice = registered(commands, "alice", "127.0.0.1", 5001)
    registered(commands, "Bob", "127.0.0.2", 5002)
    carol = registered(commands, "carol", "127.0.0.3", 5003)
    commands.disconnect(carol.session, 0)
    assert commands.handle(alice.session, ListUsers(id="l")) == Outcome([Users(users=(
        UserInfo("alice", "127.0.0.1", 5001, "tcp"),
        UserInfo("Bob", "127.0.0.2", 5002, "tcp"),
        UserInfo("carol", "127.0.0.3", 5003, "tcp", AWAY),
    ), id="l")])


def test_send_to_everyone_is_stored_published_and_answered_sent(
    commands: Commands, room: FakeRoom
) -> None:
    alice = registered(commands, "Alice")
    outcome = commands.handle(alice.session, Send(to=EVERYONE, text="hi all", id="s"))
    assert outcome.replies == []
    assert sent(outcome) == [Sent(to=EVERYONE, ts=NOW, id="s", seq=1)]
    assert alice.session.record is not None
    assert room.published == [StoredMessage(
        1, NOW, "Alice", alice.session.record.id, EVERYONE, None, "hi all"
    )]


def test_send_to_a_name_in_any_case_reaches_its_session_under_its_registered_name(
    commands: Commands, room: FakeRoom
) -> None:
    alice = registered(commands, "alice")
    bob = registered(commands, "Bob", "127.0.0.2")
    assert sent(commands.handle(alice.session, Send(to="BOB", text="hey", id=1))) == [
        Sent(to="Bob", ts=NOW, id=1, seq=1)
    ]
    assert bob.session.record is not None
    assert room.published[0].to == "Bob"
    assert room.published[0].recipient_session == bob.session.record.id


def test_send_to_an_away_user_is_accepted(commands: Commands) -> None:
    alice = registered(commands, "alice")
    bob = registered(commands, "bob", "127.0.0.2")
    commands.disconnect(bob.session, 0)
    assert sent(commands.handle(alice.session, Send(to="bob", text="later"))) == [
        Sent(to="bob", ts=NOW, seq=1)
    ]


def test_send_to_nobody_of_that_name_is_no_such_user(commands: Commands) -> None:
    alice = registered(commands, "alice")
    outcome = commands.handle(alice.session, Send(to="carol", text="hello?", id="c"))
    assert outcome == Outcome([Error(
        ErrorCode.NO_SUCH_USER, "no user named 'carol' is online", "c"
    )])


def test_send_when_the_store_fails_is_unavailable_with_the_id(
    commands: Commands, store: MemoryStore
) -> None:
    alice = registered(commands, "alice")
    store.close()
    assert sent(commands.handle(alice.session, Send(to=EVERYONE, text="x", id=3))) == [
        Error(ErrorCode.UNAVAILABLE, "the message store failed; try again", 3)
    ]


@pytest.mark.parametrize("request_", [
    History(with_=EVERYONE, id="h"), Search(q="x", id="q"), MarkRead(with_=EVERYONE, seq=1, id=1),
    ListConversations(id=2),
])
def test_store_reads_that_fail_are_unavailable_with_the_id(
    commands: Commands, store: MemoryStore, request_: Request, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice = registered(commands, "alice")

    def fail(*args: object) -> None:
        raise StoreError("disk I/O error")

    for method in ("history", "search", "mark_read", "conversations"):
        monkeypatch.setattr(store, method, fail)
    assert commands.handle(alice.session, request_) == Outcome([Error(
        ErrorCode.UNAVAILABLE, "the message store failed; try again", request_.id
    )])


def test_history_search_read_and_conversations_answer_with_their_ids(commands: Commands) -> None:
    alice = registered(commands, "alice")
    bob = registered(commands, "bob", "127.0.0.2")
    sent(commands.handle(bob.session, Send(to=EVERYONE, text="lunch friday")))
    sent(commands.handle(bob.session, Send(to="alice", text="lunch today?")))
    to_all = Message("bob", EVERYONE, "lunch friday", NOW, 1)
    direct = Message("bob", "alice", "lunch today?", NOW, 2)
    assert commands.handle(alice.session, History(with_="BOB", limit=10, id="h")) == Outcome(
        [HistoryPage(with_="BOB", messages=(direct,), more=False, id="h")]
    )
    assert commands.handle(alice.session, History(with_=EVERYONE, before=1, id=1)) == Outcome(
        [HistoryPage(with_=EVERYONE, messages=(), more=False, id=1)]
    )
    assert commands.handle(alice.session, Search(q="LUNCH", id="s")) == Outcome(
        [Results(q="LUNCH", messages=(direct, to_all), id="s")]
    )
    assert commands.handle(alice.session, MarkRead(with_="bob", seq=99, id="r")) == Outcome(
        [ReadMarker(with_="bob", seq=2, id="r")]
    )
    assert commands.handle(alice.session, ListConversations(id="c")) == Outcome(
        [Conversations(conversations=(
            Conversation(with_="bob", last=2, read=2, unread=0),
            Conversation(with_=EVERYONE, last=1, read=0, unread=1),
        ), id="c")]
    )


# --- disconnect --------------------------------------------------------------------------------


def test_a_connection_that_ends_after_exit_leaves(
    commands: Commands, room: FakeRoom, store: MemoryStore
) -> None:
    alice = registered(commands, "alice")
    commands.handle(alice.session, Exit())
    commands.disconnect(alice.session, 0)
    assert room.announced[-1] == Left("alice")
    assert not room.is_taken("alice")
    assert store.open_sessions() == []


def test_a_connection_that_ends_without_exit_goes_away_keeping_the_name(
    commands: Commands, room: FakeRoom, store: MemoryStore
) -> None:
    alice = registered(commands, "alice")
    commands.disconnect(alice.session, 0)
    assert room.announced[-1] == Away("alice")
    assert room.users()[0].status == AWAY
    assert [record.name for record in store.open_sessions()] == ["alice"]


def test_without_a_grace_a_connection_that_ends_leaves(room: FakeRoom, store: MemoryStore) -> None:
    commands = Commands(room, store, resume_grace=0)
    alice = registered(commands, "alice")
    commands.disconnect(alice.session, 0)
    assert room.announced[-1] == Left("alice")
    assert store.open_sessions() == []


class CountingStore(MemoryStore):
    """A memory store that counts the writes recording sessions as away."""

    def __init__(self, room: FakeRoom) -> None:
        super().__init__(on_commit=room.publish, clock=lambda: NOW)
        self.away_writes: list[int] = []  # the number of sessions of each write

    def set_away_many(self, sessions: Sequence[tuple[SessionId, float, int]]) -> None:
        self.away_writes.append(len(sessions))
        super().set_away_many(sessions)


def test_disconnect_many_sends_everyone_away_in_one_write_and_lets_the_exited_leave(
    room: FakeRoom,
) -> None:
    store = CountingStore(room)
    commands = Commands(room, store, clock=lambda: NOW)
    try:
        peers = [registered(commands, f"user{number}") for number in range(50)]
        commands.handle(peers[0].session, Exit())
        commands.disconnect_many([(peer.session, 7) for peer in peers]
                                 + [(Peer().session, 0)])  # one that never said hello
        assert store.away_writes == [49]
        assert room.announced.count(Left("user0")) == 1
        assert sum(isinstance(event, Away) for event in room.announced) == 49
        records = store.open_sessions()
        assert len(records) == 49
        assert {(record.away_since, record.delivered_seq) for record in records} == {(NOW, 7)}
    finally:
        commands.stop()
        store.close()


def test_disconnect_before_hello_does_nothing(commands: Commands, room: FakeRoom) -> None:
    commands.disconnect(Peer().session, 0)
    assert room.announced == []


# --- with the real room: who receives a message -----------------------------------------------


@pytest.fixture
def local() -> Iterator[tuple[Commands, LocalRoom]]:
    room = LocalRoom()
    store = MemoryStore(on_commit=room.publish, clock=lambda: NOW)
    commands = Commands(room, store, clock=lambda: NOW)
    yield commands, room
    store.close()


@pytest.mark.parametrize("sender", ["Alice", "alice", "ALICE", "aLiCe"])
def test_a_message_to_everyone_reaches_the_others_never_its_sender_in_any_case(
    local: tuple[Commands, LocalRoom], sender: str
) -> None:
    commands, _ = local
    alice = registered(commands, sender)
    bob = registered(commands, "bob", "127.0.0.2")
    alice.delivered.clear()
    answers = sent(commands.handle(alice.session, Send(to=EVERYONE, text="hello all")))
    assert answers == [Sent(to=EVERYONE, ts=NOW, seq=1)]
    assert bob.delivered == [Message(sender, EVERYONE, "hello all", NOW, 1)]
    assert alice.delivered == []


def test_a_message_to_ones_own_name_in_another_case_comes_back(
    local: tuple[Commands, LocalRoom],
) -> None:
    commands, _ = local
    alice = registered(commands, "Alice")
    bob = registered(commands, "bob", "127.0.0.2")
    alice.delivered.clear()
    sent(commands.handle(alice.session, Send(to="aLICE", text="note to self")))
    assert alice.delivered == [Message("Alice", "Alice", "note to self", NOW, 1)]
    assert bob.delivered == []
