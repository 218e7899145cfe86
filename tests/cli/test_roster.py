"""The terminal client's users list: one `users` reply, then kept from events (roster.py), and
List / Send's recipient check asking the server once per connection."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from cli_client.menu import is_online, list_users
from cli_client.roster import Roster
from tcp_server.protocol import (
    AWAY,
    Away,
    Back,
    Event,
    Joined,
    Left,
    Message,
    Ping,
    UserInfo,
    Users,
)
from tests.cli.fake_core import FakePeer, fake_core
from tests.cli.test_session import Setup, start_session
from tests.support.core import WAIT_S


def user(name: str, port: int, via: str = "tcp", status: str = "online") -> UserInfo:
    return UserInfo(name, "10.0.0.2", port, via, status)


def roster_after(*events: Event) -> tuple[UserInfo, ...] | None:
    roster = Roster()
    for event in events:
        roster.apply(event)
    return roster.users()


def test_nothing_is_known_before_a_users_reply_and_events_alone_do_not_make_a_list() -> None:
    assert roster_after() is None
    assert roster_after(Joined("bob", user("bob", 1)), Left("carol")) is None


def test_joined_adds_the_entry_sorted_as_the_core_sorts() -> None:
    assert roster_after(
        Users((user("alice", 1),)), Joined("carol", user("carol", 3, "web")),
        Joined("Bob", user("Bob", 2)),
    ) == (user("alice", 1), user("Bob", 2), user("carol", 3, "web"))


def test_away_back_and_left_keep_the_list_equal_to_the_servers() -> None:
    assert roster_after(
        Users((user("alice", 1), user("bob", 2), user("carol", 3))),
        Away("BOB"), Left("Carol"), Away("alice"), Back("alice", user("alice", 9, "web")),
        Message("bob", "*", "not about presence", 1.0, 1),
    ) == (user("alice", 9, "web"), user("bob", 2, status=AWAY))


def test_a_new_users_reply_replaces_everything() -> None:
    assert roster_after(
        Users((user("alice", 1),)), Joined("bob", user("bob", 2)), Users((user("zed", 5),)),
    ) == (user("zed", 5),)


def test_events_without_entries_from_an_older_core_make_the_list_unknown_again() -> None:
    assert roster_after(Users((user("alice", 1),)), Joined("bob")) is None
    # A back without an entry only says the status.
    assert roster_after(Users((user("alice", 1, status=AWAY),)), Back("alice")) == (
        user("alice", 1),)
    assert roster_after(Users((user("alice", 1),)), Back("ghost")) is None


def test_back_or_away_of_someone_not_listed_adds_nobody() -> None:
    assert roster_after(Users(()), Back("ghost", user("ghost", 1)), Away("ghost")) == ()


# --- List and Send's check through a Session, against a fake core ----------------------------


@pytest.fixture
def setup() -> Iterator[Setup]:
    with fake_core() as core:
        session, console, peer = start_session(core)
        try:
            yield Setup(core, console, session, peer)
        finally:
            session.close()


def answer_list(peer: FakePeer, users: list[dict[str, object]]) -> None:
    request = peer.expect("list")
    peer.send(type="users", users=users, id=request["id"])


def entry(name: str, port: int) -> dict[str, object]:
    return {"name": name, "ip": "10.0.0.2", "port": port, "via": "tcp", "status": "online"}


def test_list_asks_once_per_connection_then_shows_the_list_kept_from_events(
    setup: Setup,
) -> None:
    console, session, peer = setup.console, setup.session, setup.peer
    asking = threading.Thread(target=list_users, args=(session, console, "alice"),
                              name="test-list")
    asking.start()
    answer_list(peer, [entry("alice", 1)])
    asking.join(WAIT_S)
    peer.send(type="joined", name="bob", user=entry("bob", 2))
    peer.send(type="joined", name="carol", user=entry("carol", 3))
    peer.send(type="left", name="carol")
    console.wait_for("carol left")
    first = "\n".join(console.shown())
    assert "1 user online:" in first
    before = len(console.shown())
    list_users(session, console, "alice")  # from the list kept: the fake core is not asked
    second = "\n".join(console.shown()[before:])
    assert "2 users online:" in second
    assert "bob" in second
    assert "carol" not in second
    assert is_online(session, "BOB")
    assert not is_online(session, "carol")
    # The next request the core sees is this ping, not a second list.
    pinging = threading.Thread(target=session.request, args=(Ping(),), name="test-ping")
    pinging.start()
    request = peer.expect("ping")
    peer.send(type="pong", id=request["id"])
    pinging.join(WAIT_S)


def test_a_new_connection_asks_for_the_list_again(setup: Setup) -> None:
    console, session, peer = setup.console, setup.session, setup.peer
    asking = threading.Thread(target=list_users, args=(session, console, "alice"),
                              name="test-list")
    asking.start()
    answer_list(peer, [entry("alice", 1), entry("bob", 2)])
    asking.join(WAIT_S)
    peer.close()  # lost: the client resumes on a new connection, where events were missed
    again = setup.core.accept()
    again.welcome(again.expect("hello"), session="tok", seq=5)
    console.wait_for("Reconnected as alice.")
    before = len(console.shown())
    asking = threading.Thread(target=list_users, args=(session, console, "alice"),
                              name="test-list-again")
    asking.start()
    answer_list(again, [entry("alice", 1)])
    asking.join(WAIT_S)
    assert "1 user online:" in "\n".join(console.shown()[before:])
