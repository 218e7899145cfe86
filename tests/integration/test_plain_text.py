"""The assignment's plain-text dialect on port 9000, in the same room as protocol v1 users."""

from __future__ import annotations

import pytest

from tests.support.core import RawClient
from tests.support.text_client import TextClient
from tests.support.texts import TAKEN_HINT

Address = tuple[str, int]


@pytest.fixture(params=[True, False], ids=["scaffold", "nc"])
def scaffold(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


def joined(address: Address, name: str, scaffold: bool) -> TextClient:
    client = TextClient(address, scaffold)
    client.join(name)
    return client


def test_username_then_list_shows_everyone_with_address_and_kind(
    address: Address, scaffold: bool
) -> None:
    with RawClient(address) as v1:
        v1.hello("json_user")
        text = joined(address, "text_user", scaffold)
        try:
            text.command("LIST")
            assert text.line() == "2 users online:"
            rows = sorted(text.line().split() for _ in range(2))
            ip, port = text.sock.getsockname()[:2]
            assert rows[0][0] == "json_user"
            assert rows[0][2] == "terminal"
            assert rows[1] == ["text_user", f"{ip}:{port}", "terminal"]
            assert v1.users() == ["json_user", "text_user"]
        finally:
            text.close()


def test_messages_flow_both_ways_between_text_and_v1_users(
    address: Address, scaffold: bool
) -> None:
    with RawClient(address) as v1:
        v1.hello("json_user")
        text = joined(address, "text_user", scaffold)
        try:
            text.command("send json_user hello from text")
            assert text.line() == "sent to json_user"
            while (obj := v1.recv())["type"] != "message":
                pass
            assert (obj["from"], obj["to"], obj["text"]) == (
                "text_user", "json_user", "hello from text"
            )
            v1.send(type="send", to="text_user", text="two\nlines")
            assert text.line_with("json_user ->").endswith("json_user -> you: two↵lines")
            v1.send(type="send", to="*", text="to all")
            assert text.line_with("everyone").endswith("json_user -> everyone: to all")
            text.command("send * from text to all")
            assert text.line_with("sent") == "sent to everyone"
            while (obj := v1.recv())["type"] != "message":
                pass
            assert (obj["to"], obj["text"]) == ("*", "from text to all")
        finally:
            text.close()


def test_scaffold_and_nc_users_chat_with_each_other(address: Address) -> None:
    student = joined(address, "student", scaffold=True)
    netcat = joined(address, "netcat", scaffold=False)
    try:
        assert student.line() == "* netcat joined"
        student.command("send netcat hi from the scaffold")
        assert netcat.line_with("student").endswith("student -> you: hi from the scaffold")
        netcat.command("send STUDENT hi back")
        assert student.line_with("netcat ->").endswith("netcat -> you: hi back")
    finally:
        student.close()
        netcat.close()


def test_exit_says_goodbye_closes_and_others_see_left(address: Address, scaffold: bool) -> None:
    with RawClient(address) as v1:
        v1.hello("watcher")
        text = joined(address, "leaver", scaffold)
        try:
            text.command("exit")
            assert text.line_with("bye") == "bye"
            assert text.closed()
            v1.expect("joined", name="leaver")
            v1.expect("left", name="leaver")
        finally:
            text.close()


def test_help_before_the_username_says_to_type_it_first(address: Address, scaffold: bool) -> None:
    text = TextClient(address, scaffold)
    try:
        text.command("help")
        assert text.line().startswith("first type your username")
        assert text.line() == "a session back after a disconnect; then:"
        assert text.line().startswith("commands")
        assert "send <name> <message>" in "".join(text.line() for _ in range(3))
    finally:
        text.close()


def test_help_lists_the_commands(address: Address, scaffold: bool) -> None:
    text = joined(address, "helpme", scaffold)
    try:
        text.command("help")
        assert text.line().startswith("commands")
        lines = [text.line() for _ in range(8)]
        commands = [line.split()[0] for line in lines]
        assert commands == ["list", "send", "send", "history", "search", "ping", "exit", "help"]
    finally:
        text.close()


@pytest.mark.parametrize(
    ("command", "fragment"),
    [
        ("dance", "unknown command 'dance'"),
        ("send", "usage: send <name> <message>"),
        ("send json_user", "the message is empty"),
        ("send ghost hello", "no user named 'ghost'"),
        (b"send json_user caf\xe9", "not valid UTF-8"),
        ("x" * 70_000, "longer than 65536 bytes"),
    ],
)
def test_bad_commands_get_an_error_line_and_the_connection_goes_on(
    address: Address, scaffold: bool, command: str | bytes, fragment: str
) -> None:
    with RawClient(address) as v1:
        v1.hello("json_user")
        text = joined(address, "text_user", scaffold)
        try:
            text.command(command)
            error = text.line()
            assert error.startswith("error: ")
            assert fragment in error
            text.command("send json_user still here")
            assert text.line() == "sent to json_user"
        finally:
            text.close()


@pytest.mark.parametrize(
    ("name", "fragment"),
    [("bad name", "may only contain"), ("x" * 33, "the most is 32"), ("list", "username first")],
)
def test_bad_usernames_get_an_error_line_and_another_try(
    address: Address, scaffold: bool, name: str, fragment: str
) -> None:
    text = TextClient(address, scaffold)
    try:
        text.command(name)
        error = text.line()
        assert error.startswith("error: ")
        assert fragment in error
        text.command("second_try")
        assert text.line().startswith("welcome second_try!")
    finally:
        text.close()


def test_taken_username_gets_an_error_line(address: Address, scaffold: bool) -> None:
    with RawClient(address) as v1:
        v1.hello("Taken")
        text = TextClient(address, scaffold)
        try:
            text.command("taken")
            assert text.line() == f"error: the name taken is taken{TAKEN_HINT}"
        finally:
            text.close()


def test_control_characters_from_v1_users_are_neutralised(address: Address) -> None:
    with RawClient(address) as v1:
        v1.hello("json_user")
        text = joined(address, "text_user", scaffold=False)
        try:
            v1.send(type="send", to="text_user", text="\x1b[2Jcleared?")
            assert text.line_with("json_user ->").endswith("you: \\x1b[2Jcleared?")
        finally:
            text.close()


@pytest.mark.parametrize("ending", [b"\n", b"\r\n", b""], ids=["lf", "crlf", "unterminated"])
def test_the_username_and_a_command_in_one_write_are_both_handled(
    address: Address, ending: bytes
) -> None:
    """b"alice\\nlist" in one send(): the first line is the name, the second a command (the
    command's own end may be a newline or the pause)."""
    text = TextClient(address, scaffold=True)
    try:
        text.command(b"Mixed_Case\nlist" + ending)
        assert text.line().startswith("welcome Mixed_Case!")
        assert text.line_with("online:") == "1 user online:"
        assert text.line().split()[0] == "Mixed_Case"
    finally:
        text.close()


def test_the_username_two_commands_and_exit_in_one_write_are_handled_in_order(
    address: Address,
) -> None:
    with RawClient(address, source="127.0.0.2") as v1:
        v1.hello("json_user")
        text = TextClient(address, scaffold=True)
        try:
            text.command(b"Alice\r\nsend json_user first\nsend * second\nexit\n")
            assert text.line_with("sent") == "sent to json_user"
            assert text.line_with("sent") == "sent to everyone"
            assert text.line() == "bye"
            assert text.closed()
            texts = []
            while len(texts) < 2:
                obj = v1.recv()
                if obj["type"] == "message":
                    texts.append((obj["from"], obj["to"], obj["text"]))
            assert texts == [("Alice", "json_user", "first"), ("Alice", "*", "second")]
        finally:
            text.close()


def test_a_mixed_case_text_user_does_not_receive_her_own_message_to_everyone(
    address: Address,
) -> None:
    with RawClient(address, source="127.0.0.2") as v1:
        v1.hello("json_user")
        text = joined(address, "Alice", scaffold=False)
        try:
            text.command("send * hello all")
            # Her own message would be delivered before her answer, and after it before pong.
            assert text.line() == "sent to everyone"
            text.command("ping")
            assert text.line() == "pong"
            while (obj := v1.recv())["type"] != "message":
                pass
            assert (obj["from"], obj["text"]) == ("Alice", "hello all")
        finally:
            text.close()


def test_bidi_overrides_from_v1_users_are_shown_escaped_to_nc_users(address: Address) -> None:
    """Otherwise "\u202e" would make the rest of the line read backwards in the terminal."""
    with RawClient(address, source="127.0.0.2") as v1:
        v1.hello("json_user")
        text = joined(address, "text_user", scaffold=False)
        try:
            v1.send(type="send", to="text_user", text="pay \u202eRSU 0001\u202c \u2066x\u2069")
            assert text.line_with("json_user ->").endswith(
                "you: pay \\u202eRSU 0001\\u202c \\u2066x\\u2069")
        finally:
            text.close()
