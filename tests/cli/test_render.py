"""render.py: every line the client shows, exactly."""

from __future__ import annotations

from datetime import UTC, timedelta, timezone

import pytest

from cli_client.render import (
    format_time,
    printable,
    render_bye,
    render_earlier,
    render_error,
    render_event,
    render_history,
    render_joined,
    render_left,
    render_message,
    render_not_sent,
    render_results,
    render_sent,
    render_stored,
    render_users,
)
from tcp_server.protocol import (
    Away,
    Back,
    Bye,
    Error,
    HistoryPage,
    Joined,
    Left,
    Message,
    Pong,
    Results,
    Sent,
    UserInfo,
)

TS = 1_795_610_750.351  # 2026-11-25 12:45:50.351 UTC


def test_time_is_shown_as_hours_minutes_seconds_in_the_given_zone() -> None:
    assert format_time(TS, UTC) == "12:45:50"
    assert format_time(TS, timezone(timedelta(hours=2))) == "14:45:50"


def test_message_to_everyone_names_sender_time_and_scope() -> None:
    message = Message(sender="alice", to="*", text="hello all", ts=TS)
    assert render_message(message, UTC) == "[12:45:50] alice (to everyone): hello all"


def test_direct_message_says_it_is_to_you() -> None:
    message = Message(sender="bob", to="carol", text="hi carol", ts=TS)
    assert render_message(message, UTC) == "[12:45:50] bob (to you): hi carol"


def test_multi_line_text_indents_continuation_lines_under_the_first() -> None:
    message = Message(sender="bob", to="*", text="one\ntwo\r\nthree", ts=TS)
    assert render_message(message, UTC).split("\n") == [
        "[12:45:50] bob (to everyone): one",
        "                              two",
        "                              three",
    ]


def test_terminal_escape_sequences_in_a_text_are_shown_not_obeyed() -> None:
    message = Message(sender="mallory", to="*", text="\x1b[2J\x07gotcha\u202eabc", ts=TS)
    line = render_message(message, UTC)
    assert "\x1b" not in line
    assert "\x07" not in line
    assert "\u202e" not in line
    assert line.endswith(": \\x1b[2J\\x07gotcha\\u202eabc")


def test_tabs_become_spaces() -> None:
    assert printable("a\tb") == "a    b"


def test_newlines_are_escaped_where_a_single_line_is_expected() -> None:
    assert printable("a\nb") == "a\\x0ab"


def test_joined_and_left_are_stamped_with_the_arrival_time() -> None:
    assert render_joined(Joined(name="dave"), TS, UTC) == "[12:45:50] * dave joined the chat"
    assert render_left(Left(name="dave"), TS, UTC) == "[12:45:50] * dave left the chat"


def test_bye_shows_the_servers_reason() -> None:
    assert render_bye(Bye(reason="server shutting down")) == (
        "The server is closing the connection: server shutting down"
    )
    assert render_bye(Bye()) == "The server is closing the connection."


def test_error_is_shown_in_the_servers_words() -> None:
    error = Error(code="rate_limited", message="slow down: at most 20 requests a second")
    assert render_error(error) == "Server error: slow down: at most 20 requests a second"


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        (Message(sender="a", to="*", text="x", ts=TS), "[12:45:50] a (to everyone): x"),
        (Joined(name="a"), "[12:45:50] * a joined the chat"),
        (Left(name="a"), "[12:45:50] * a left the chat"),
        (Away(name="a"), "[12:45:50] * a is away"),
        (Back(name="a"), "[12:45:50] * a is back"),
        (Error(code="bad_request", message="m"), "Server error: m"),
        (Pong(id=3), None),
        (Sent(to="a", ts=TS, id=4), None),
    ],
)
def test_render_event_shows_events_and_skips_stray_replies(
    event: object, expected: str | None
) -> None:
    assert render_event(event, TS, UTC) == expected  # type: ignore[arg-type]


def test_user_table_is_aligned_shows_each_status_and_marks_the_caller() -> None:
    users = [
        UserInfo(name="alice", ip="127.0.0.1", port=55834, via="tcp"),
        UserInfo(name="bob", ip="::1", port=9, via="web"),
        UserInfo(name="carol-the-long", ip="10.0.0.22", port=443, via="tcp", status="away"),
    ]
    assert render_users(users, me="bob") == [
        "3 users online:",
        "  NAME            IP          PORT  CLIENT    STATUS",
        "  alice           127.0.0.1  55834  terminal  online",
        "  bob             ::1            9  browser   online  (you)",
        "  carol-the-long  10.0.0.22    443  terminal  away",
    ]


def test_user_table_of_one_says_user_not_users() -> None:
    lines = render_users([UserInfo(name="a", ip="127.0.0.1", port=1, via="tcp")], me="a")
    assert lines[0] == "1 user online:"


def test_sent_and_not_sent_confirmations() -> None:
    assert render_sent("*") == "Message sent to everyone."
    assert render_sent("bob") == "Message sent to bob."
    error = Error(code="no_such_user", message="no user named 'carol' is online")
    assert render_not_sent(error) == "Message not sent: no user named 'carol' is online."


def stored(sender: str, to: str, text: str, seq: int = 1) -> Message:
    return Message(sender=sender, to=to, text=text, ts=TS, seq=seq)


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (stored("bob", "*", "hi"), "[12:45:50] bob -> everyone: hi"),
        (stored("alice", "*", "hi"), "[12:45:50] you -> everyone: hi"),
        (stored("bob", "alice", "hi"), "[12:45:50] bob -> you: hi"),
        (stored("ALICE", "bob", "hi"), "[12:45:50] you -> bob: hi"),
        (stored("bob", "*", "a\nb"), "[12:45:50] bob -> everyone: a\n" + " " * 28 + "b"),
        (stored("bob", "*", "\x1b[2J"), "[12:45:50] bob -> everyone: \\x1b[2J"),
    ],
    ids=["to-everyone", "mine-to-everyone", "to-me", "mine-to-bob", "multi-line", "escape"],
)
def test_stored_message_names_both_ends(message: Message, expected: str) -> None:
    assert render_stored(message, me="alice", tz=UTC) == expected


def test_a_stored_message_from_before_the_session_is_not_called_yours() -> None:
    # An earlier holder of the name "alice" sent seq 4; this session started at seq 5.
    assert render_stored(stored("alice", "*", "old", 4), "alice", UTC, mine_after=5) == (
        "[12:45:50] alice -> everyone: old"
    )
    assert render_stored(stored("alice", "*", "new", 6), "alice", UTC, mine_after=5) == (
        "[12:45:50] you -> everyone: new"
    )


def test_earlier_messages_come_under_one_heading_indented() -> None:
    messages = [stored("bob", "*", "one", 1), stored("carol", "*", "two\nlines", 2)]
    assert render_earlier(messages, "alice", UTC) == "\n".join([
        "Earlier messages to everyone (the last 2):",
        "  [12:45:50] bob -> everyone: one",
        "  [12:45:50] carol -> everyone: two",
        "  " + " " * len("[12:45:50] carol -> everyone: ") + "lines",
    ])
    assert render_earlier([], "alice", UTC) is None


def test_history_says_which_conversation_and_whether_older_ones_exist() -> None:
    page = HistoryPage(with_="bob", messages=(stored("bob", "alice", "hi"),), more=True)
    assert render_history(page, "alice", UTC) == "\n".join([
        "Messages between you and bob (the last 1, older ones not shown):",
        "  [12:45:50] bob -> you: hi",
    ])
    assert render_history(HistoryPage(with_="*", messages=(), more=False), "alice", UTC) == (
        "No messages to everyone yet."
    )


def test_search_results_say_the_query_and_their_count() -> None:
    results = Results(q="lunch", messages=(stored("bob", "*", "lunch?", 9),
                                           stored("alice", "bob", "lunch at 1", 3)))
    assert render_results(results, "alice", UTC) == "\n".join([
        "2 messages match 'lunch' (newest first):",
        "  [12:45:50] bob -> everyone: lunch?",
        "  [12:45:50] you -> bob: lunch at 1",
    ])
    assert render_results(Results(q="\x07", messages=()), "alice", UTC) == (
        "No messages match '\\x07'."
    )
