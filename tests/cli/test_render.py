"""render.py: every line the client shows, exactly."""

from __future__ import annotations

from datetime import UTC, timedelta, timezone

import pytest

from cli_client.render import (
    format_time,
    printable,
    render_bye,
    render_error,
    render_event,
    render_joined,
    render_left,
    render_message,
    render_not_sent,
    render_sent,
    render_users,
)
from tcp_server.protocol import Bye, Error, Joined, Left, Message, Pong, Sent, UserInfo

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
