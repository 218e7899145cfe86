"""session.Session against a scripted fake core: reconnect, resume, dedupe by seq, give up."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial

import pytest

from cli_client.connection import ConnectionClosed, ServerConnection
from cli_client.menu import check_lost_send
from cli_client.session import (
    LinkState,
    NotConnected,
    ReconnectPolicy,
    SeenMessages,
    Session,
    SessionEnded,
)
from tcp_server.protocol import Hello, ListUsers, Message, Send, Sent, Users, Welcome
from tests.cli.fake_core import FakeCore, FakePeer, RecordingConsole, fake_core
from tests.support.core import WAIT_S, wait_until

FAST = ReconnectPolicy(reconnect_for_s=WAIT_S, base_delay_s=0.01, max_delay_s=0.05,
                       wait_for_reconnect_s=WAIT_S)


def message(seq: int, text: str = "") -> Message:
    return Message(sender="bob", to="*", text=text or f"m{seq}", ts=1.0, seq=seq)


# --- SeenMessages: the resume point and the filter of repeats -----------------------------


def test_messages_after_the_highest_seen_are_new_and_move_it() -> None:
    seen = SeenMessages(5)
    assert [seen.first_time(message(s)) for s in (6, 8, 9)] == [True, True, True]
    assert seen.highest == 9


def test_a_seq_seen_already_or_older_is_a_repeat() -> None:
    seen = SeenMessages(5)
    assert seen.first_time(message(7))
    assert [seen.first_time(message(s)) for s in (7, 6, 5, 1)] == [False] * 4
    assert seen.highest == 7


def test_a_message_without_seq_is_always_shown() -> None:
    seen = SeenMessages(5)
    assert seen.first_time(message(0))
    assert seen.first_time(message(0))
    assert seen.highest == 5


# --- Session against a fake core -----------------------------------------------------------


@dataclass
class Setup:
    core: FakeCore
    console: RecordingConsole
    session: Session
    peer: FakePeer  # the first connection, welcomed


def start_session(
    core: FakeCore, policy: ReconnectPolicy = FAST, welcome_seq: int = 5, token: str = "tok"
) -> tuple[Session, RecordingConsole, FakePeer]:
    connect: Callable[[], ServerConnection] = partial(ServerConnection.open, *core.address)
    connection = connect()
    peer = core.accept()
    console = RecordingConsole()
    replies: list[object] = []
    asker = threading.Thread(
        target=lambda: replies.append(connection.request(Hello(name="alice"))),
        name="test-hello",
    )
    asker.start()
    peer.welcome(peer.expect("hello"), session=token, seq=welcome_seq)
    asker.join(WAIT_S)
    welcome = replies[0]
    assert isinstance(welcome, Welcome)
    session = Session(connection, welcome, connect, console, policy,
                      heartbeat=lambda _connection: None)
    session.start()
    return session, console, peer


@pytest.fixture
def setup() -> Iterator[Setup]:
    with fake_core() as core:
        session, console, peer = start_session(core)
        try:
            yield Setup(core, console, session, peer)
        finally:
            session.close()


def resume_on_next_connection(setup: Setup) -> tuple[FakePeer, dict[str, object]]:
    """The client's next connection and its hello (not answered yet)."""
    peer = setup.core.accept()
    return peer, peer.expect("hello")


def test_lost_connection_is_said_and_resumed_with_token_and_highest_seq(setup: Setup) -> None:
    setup.peer.message(6, "before the loss")
    setup.console.wait_for("bob (to everyone): before the loss")
    setup.peer.close()
    setup.console.wait_for("Connection to the server lost; reconnecting...")
    peer, hello = resume_on_next_connection(setup)
    assert hello["name"] == "alice"
    assert hello["resume"] == "tok"
    assert hello["after"] == 6
    peer.welcome(hello, seq=9, resumed=True)
    setup.console.wait_for("Reconnected as alice.")
    assert setup.session.state is LinkState.CONNECTED


def test_a_session_without_messages_resumes_after_its_welcomes_seq(setup: Setup) -> None:
    setup.peer.close()
    _, hello = resume_on_next_connection(setup)
    assert hello["after"] == 5


def test_replayed_messages_appear_once_and_in_order(setup: Setup) -> None:
    for seq in (6, 7):
        setup.peer.message(seq)
    setup.console.wait_for("m7")
    setup.peer.close()
    peer, hello = resume_on_next_connection(setup)
    assert hello["after"] == 7
    peer.welcome(hello, seq=10, resumed=True)
    # A core that replays one too many: 7 was shown already.
    for seq in (7, 8, 9):
        peer.message(seq)
    peer.message(10, "live again")
    setup.console.wait_for("live again")
    texts = [line.split(": ", 1)[1] for line in setup.console.shown() if "(to everyone)" in line]
    assert texts == ["m6", "m7", "m8", "m9", "live again"]


def test_the_resume_point_follows_each_reconnection(setup: Setup) -> None:
    setup.peer.close()
    peer, hello = resume_on_next_connection(setup)
    peer.welcome(hello, session="tok2", seq=12, resumed=True)
    peer.message(12)
    setup.console.wait_for("m12")
    peer.close()
    _, hello = resume_on_next_connection(setup)
    assert (hello["resume"], hello["after"]) == ("tok2", 12)


def test_a_core_that_is_down_is_tried_again_until_it_is_back(setup: Setup) -> None:
    # Connections are refused twice (the core restarts), then it listens again.
    refusals = 0
    setup.peer.close()
    for _ in range(2):
        peer = setup.core.accept()
        peer.expect("hello")
        peer.close()
        refusals += 1
    peer, hello = resume_on_next_connection(setup)
    peer.welcome(hello, resumed=True)
    setup.console.wait_for("Reconnected as alice.")
    assert refusals == 2
    assert setup.console.shown().count("Connection to the server lost; reconnecting...") == 1


def test_truncated_resume_says_that_some_messages_are_gone(setup: Setup) -> None:
    setup.peer.close()
    peer, hello = resume_on_next_connection(setup)
    peer.welcome(hello, resumed=True, truncated=True)
    setup.console.wait_for("no longer kept by the server")
    setup.console.wait_for("Reconnected as alice.")


@pytest.mark.parametrize(
    ("code", "message", "shown"),
    [("session_expired", "no such session; say hello without resume",
      "you were away longer than the server keeps a session, or it was restarted without its "
      "data"),
     ("name_taken", "the name alice is taken", "the name alice is taken")],
)
def test_a_session_that_cannot_be_resumed_ends_it_and_says_why(
    setup: Setup, code: str, message: str, shown: str
) -> None:
    setup.peer.close()
    peer, hello = resume_on_next_connection(setup)
    peer.send(type="error", code=code, message=message, id=hello["id"])
    setup.console.wait_for(f"Your session could not be resumed: {shown}. "
                           "Start the client again to join afresh.")
    assert setup.console.interrupted.wait(WAIT_S)
    assert setup.session.lost
    assert setup.session.state is LinkState.ENDED
    with pytest.raises(SessionEnded):
        setup.session.request(ListUsers())


def test_reconnecting_gives_up_after_reconnect_for_seconds() -> None:
    policy = ReconnectPolicy(reconnect_for_s=0.5, base_delay_s=0.01, max_delay_s=0.05)
    with fake_core() as core:
        session, console, peer = start_session(core, policy)
        try:
            core.stop_listening()
            peer.close()
            console.wait_for("Could not reconnect to the server within 0.5 s; giving up.")
            assert console.interrupted.wait(WAIT_S)
            assert session.lost
        finally:
            session.close()


def test_a_core_without_sessions_ends_the_client_as_before() -> None:
    with fake_core() as core:
        session, console, peer = start_session(core, token="")
        try:
            peer.send(type="bye", reason="server shutting down")
            peer.close()
            console.wait_for("The server is closing the connection: server shutting down")
            console.wait_for("Connection to the server lost.")
            assert console.interrupted.wait(WAIT_S)
            assert "reconnecting" not in "\n".join(console.shown())
        finally:
            session.close()


def test_resumed_elsewhere_is_not_fought_back(setup: Setup) -> None:
    setup.peer.send(type="bye", reason="resumed elsewhere")
    setup.peer.close()
    setup.console.wait_for("This session was taken over by another connection.")
    assert setup.console.interrupted.wait(WAIT_S)
    with pytest.raises(AssertionError, match="no connection"):
        setup.core.accept(timeout=0.3)


def test_a_request_made_while_reconnecting_waits_for_the_new_connection(setup: Setup) -> None:
    setup.peer.close()
    peer, hello = resume_on_next_connection(setup)
    replies: list[object] = []
    asker = threading.Thread(
        target=lambda: replies.append(setup.session.request(ListUsers())), name="test-list"
    )
    asker.start()
    try:
        setup.console.wait_for("Waiting for the connection to the server to come back")
        peer.welcome(hello, resumed=True)
        listing = peer.expect("list")
        peer.send(type="users", users=[], id=listing["id"])
    finally:
        asker.join(WAIT_S)
    assert replies == [Users(users=(), id=listing["id"])]


def test_a_request_gives_up_waiting_after_the_bound_and_says_so() -> None:
    policy = ReconnectPolicy(reconnect_for_s=WAIT_S, base_delay_s=0.01, max_delay_s=0.05,
                             wait_for_reconnect_s=0.2)
    with fake_core() as core:
        session, _, peer = start_session(core, policy)
        try:
            peer.close()
            core.accept().expect("hello")  # never answered
            with pytest.raises(NotConnected):
                session.request(ListUsers())
        finally:
            session.close()


def test_a_request_cut_off_before_its_reply_is_sent_again_after_resuming(
    setup: Setup,
) -> None:
    replies: list[object] = []
    asker = threading.Thread(
        target=lambda: replies.append(setup.session.request(ListUsers())), name="test-list"
    )
    asker.start()
    try:
        setup.peer.expect("list")
        setup.peer.close()
        peer, hello = resume_on_next_connection(setup)
        peer.welcome(hello, resumed=True)
        listing = peer.expect("list")
        peer.send(type="users", users=[], id=listing["id"])
    finally:
        asker.join(WAIT_S)
    assert replies == [Users(users=(), id=listing["id"])]


def test_a_send_cut_off_before_its_reply_is_not_sent_twice(setup: Setup) -> None:
    outcome: list[BaseException | object] = []

    def send() -> None:
        try:
            outcome.append(setup.session.request(Send(to="*", text="once"), resend=False))
        except ConnectionClosed as error:
            outcome.append(error)

    asker = threading.Thread(target=send, name="test-send")
    asker.start()
    try:
        setup.peer.expect("send")
        setup.peer.close()
    finally:
        asker.join(WAIT_S)
    assert len(outcome) == 1
    assert isinstance(outcome[0], ConnectionClosed)
    assert outcome[0].written


def test_a_send_made_while_reconnecting_is_sent_once_on_the_new_connection(
    setup: Setup,
) -> None:
    setup.peer.close()
    peer, hello = resume_on_next_connection(setup)
    replies: list[object] = []
    asker = threading.Thread(
        target=lambda: replies.append(setup.session.request(Send(to="*", text="x"),
                                                            resend=False)),
        name="test-send",
    )
    asker.start()
    try:
        setup.console.wait_for("Waiting for the connection")
        peer.welcome(hello, resumed=True)
        request = peer.expect("send")
        peer.send(type="sent", to="*", ts=2.0, seq=6, id=request["id"])
    finally:
        asker.join(WAIT_S)
    assert replies == [Sent(to="*", ts=2.0, seq=6, id=request["id"])]


def test_end_says_exit_and_returns_true_on_bye(setup: Setup) -> None:
    ended: list[bool] = []
    ender = threading.Thread(target=lambda: ended.append(setup.session.end()), name="test-end")
    ender.start()
    try:
        request = setup.peer.expect("exit")
        setup.peer.send(type="bye", id=request["id"])
        setup.peer.close()
    finally:
        ender.join(WAIT_S)
    assert ended == [True]
    assert not setup.session.lost
    assert "reconnecting" not in "\n".join(setup.console.shown())


def test_end_while_reconnecting_resumes_at_once_to_say_exit(setup: Setup) -> None:
    # The core is back but the client waits out its backoff: ending does not wait for it.
    policy_slow = ReconnectPolicy(reconnect_for_s=60, base_delay_s=30, max_delay_s=30)
    session, console, peer = start_session(setup.core, policy_slow)
    try:
        peer.close()
        console.wait_for("reconnecting...")
        wait_until(lambda: session.state is LinkState.RECONNECTING, what="reconnecting")
        ended: list[bool] = []
        ender = threading.Thread(target=lambda: ended.append(session.end()), name="test-end")
        ender.start()
        try:
            new_peer, hello = resume_on_next_connection(setup)
            assert hello["resume"] == "tok"
            new_peer.welcome(hello, resumed=True)
            new_peer.message(6, "missed just before leaving")
            request = new_peer.expect("exit")
            new_peer.send(type="bye", id=request["id"])
            new_peer.close()
        finally:
            ender.join(WAIT_S)
        assert ended == [True]
        console.wait_for("missed just before leaving")
    finally:
        session.close()


# --- after a Send whose reply was cut off: was it taken? -----------------------------------


def stored(seq: int, text: str, sender: str = "alice", to: str = "bob") -> dict[str, object]:
    return {"type": "message", "from": sender, "to": to, "text": text, "ts": 1.0, "seq": seq}


def check_after_loss(setup: Setup, history: list[dict[str, object]], more: bool = False,
                     floor: int = 5) -> str:
    """check_lost_send on a connection that the fake core cut; it answers history so."""
    answers: list[str] = []
    checker = threading.Thread(
        target=lambda: answers.append(check_lost_send(setup.session, "bob", "hi", floor)),
        name="test-check",
    )
    setup.peer.close()
    checker.start()
    try:
        peer, hello = resume_on_next_connection(setup)
        peer.welcome(hello, seq=9, resumed=True)
        request = peer.expect("history")
        assert (request["with"], request["limit"]) == ("bob", 200)
        peer.send(type="history", messages=history, more=more, id=request["id"],
                  **{"with": "bob"})
    finally:
        checker.join(WAIT_S)
    return answers[0]


def test_a_cut_off_send_found_in_history_is_confirmed(setup: Setup) -> None:
    answer = check_after_loss(setup, [stored(4, "hi"), stored(7, "hi"), stored(8, "later")])
    assert answer == "Message sent to bob (confirmed after reconnecting)."


@pytest.mark.parametrize(
    "history",
    [
        [stored(4, "hi")],  # the same text, sent before: not this one
        [stored(7, "hi", sender="bob", to="alice")],  # bob's, not ours
        [stored(7, "hi", to="carol")],
        [stored(7, "hi!")],
        [],
    ],
    ids=["older", "from-bob", "to-another", "other-text", "none"],
)
def test_a_cut_off_send_not_in_history_is_said_not_sent(
    setup: Setup, history: list[dict[str, object]]
) -> None:
    assert check_after_loss(setup, history) == (
        "Message not sent: the connection was lost before the server took it. "
        "Please send it again."
    )


def test_a_cut_off_send_beyond_the_history_page_is_said_unknown(setup: Setup) -> None:
    answer = check_after_loss(setup, [stored(seq, "other") for seq in (6, 7)], more=True)
    assert answer.startswith("Could not check with the server")


def test_the_floor_rises_with_each_sent_and_welcome(setup: Setup) -> None:
    assert setup.session.sent_floor() == 5
    replies: list[object] = []
    asker = threading.Thread(
        target=lambda: replies.append(setup.session.request(Send(to="*", text="x"))),
        name="test-send",
    )
    asker.start()
    try:
        request = setup.peer.expect("send")
        setup.peer.send(type="sent", to="*", ts=1.0, seq=11, id=request["id"])
    finally:
        asker.join(WAIT_S)
    assert setup.session.sent_floor() == 11
    setup.peer.close()
    peer, hello = resume_on_next_connection(setup)
    peer.welcome(hello, seq=20, resumed=True)
    setup.console.wait_for("Reconnected as alice.")
    assert setup.session.sent_floor() == 20
