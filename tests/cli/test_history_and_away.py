"""The real chat-client (piped) against a real core: recent messages on joining, users away."""

from __future__ import annotations

from cli_client.render import CHOICE_PROMPT
from tcp_server.server import ChatServer
from tests.cli.conftest import StartClient
from tests.cli.test_pipe_client import list_users, send, start_registered
from tests.support.cli import ClientProcess
from tests.support.core import RawClient


def test_joining_shows_the_last_ten_messages_to_everyone_as_earlier_ones(
    start_client: StartClient, server: ChatServer
) -> None:
    with RawClient(server.address) as carol, RawClient(server.address) as dave:
        dave.hello("dave")
        carol.hello("carol")
        for i in range(1, 13):
            assert carol.request("send", to="*", text=f"old {i:02}")["type"] == "sent"
        assert carol.request("send", to="dave", text="private")["type"] == "sent"
        alice = start_client("--name", "alice")
        alice.wait_for("Welcome, alice!")
        earlier = alice.wait_for("Earlier messages to everyone (the last 10):")
        for i in range(3, 13):
            line = alice.wait_for(f"] carol -> everyone: old {i:02}\n")
            assert "Enter your choice" not in line  # one block, before the menu
        alice.wait_for("Enter your choice")
        carol.expect("joined", name="alice")
        assert carol.request("send", to="*", text="new 13")["type"] == "sent"
        alice.wait_for("carol (to everyone): new 13")
        output = alice.text()
    assert "old 01" not in output
    assert "old 02" not in output
    assert "private" not in output
    assert output.count("old 12") == 1
    assert output.count("new 13") == 1
    assert earlier.count("Earlier messages") == 1


def test_earlier_messages_of_a_previous_holder_of_the_name_are_not_called_yours(
    start_client: StartClient, server: ChatServer
) -> None:
    with RawClient(server.address) as before:
        before.hello("alice")
        assert before.request("send", to="*", text="from the first alice")["type"] == "sent"
        assert before.request("exit")["type"] == "bye"
    alice = start_registered(start_client, "alice")
    output = alice.text()
    assert "alice -> everyone: from the first alice" in output
    assert "you -> everyone" not in output
    alice.line("history")
    alice.wait_for("Messages to everyone (the last 1):")
    alice.wait_for("alice -> everyone: from the first alice")


def test_an_empty_room_shows_no_earlier_messages(start_client: StartClient) -> None:
    alice = start_registered(start_client, "alice")
    alice.line("3")
    alice.wait_for("Goodbye!")
    assert alice.wait_exit() == 0
    assert "Earlier messages" not in alice.text()


def test_a_user_whose_connection_ends_is_shown_away_then_back(
    start_client: StartClient, server: ChatServer
) -> None:
    alice = start_registered(start_client, "alice")
    with RawClient(server.address) as bob:
        welcome = bob.hello("bob")
        alice.wait_for("* bob joined the chat")
    # bob's connection ended without exit: he is away, not gone.
    alice.wait_for("* bob is away")
    table = list_users(alice)
    rows = {line.split()[0]: line.split() for line in table.splitlines()
            if line.startswith("  ") and not line.startswith("  NAME")}
    assert rows["bob"][4] == "away"
    assert rows["alice"][4] == "online"
    # A message to him is kept for him.
    assert "Message sent to bob." in send(alice, "bob", "for when you are back")
    with RawClient(server.address) as bob:
        bob.send(type="hello", name="bob", resume=welcome["session"], after=welcome["seq"])
        bob.expect("welcome", resumed=True)
        message = bob.expect("message", text="for when you are back")
        assert message["from"] == "alice"
        alice.wait_for("* bob is back")
        assert "left" not in alice.text().split("* bob is away", 1)[1]


def test_history_and_search_can_be_typed_at_the_menus_prompt(
    start_client: StartClient, server: ChatServer
) -> None:
    with RawClient(server.address) as bob:
        bob.hello("bob")
        alice = start_registered(start_client, "alice")
        bob.expect("joined", name="alice")
        assert bob.request("send", to="*", text="lunch on friday?")["type"] == "sent"
        alice.wait_for("bob (to everyone): lunch on friday?")
        assert "Message sent to bob." in send(alice, "bob", "friday LUNCH works")
        alice.wait_for(CHOICE_PROMPT)

        shown = command(alice, "history")
        assert "Messages to everyone (the last 1):" in shown
        assert "bob -> everyone: lunch on friday?" in shown

        shown = command(alice, "history BOB")
        assert "Messages between you and BOB (the last 1):" in shown
        assert "you -> bob: friday LUNCH works" in shown

        shown = command(alice, "search friday lunch")
        assert "2 messages match 'friday lunch' (newest first):" in shown
        assert shown.index("you -> bob: friday LUNCH works") < shown.index(
            "bob -> everyone: lunch on friday?")

        assert "No messages match 'dinner'." in command(alice, "search dinner")
        assert "'not/a/name' is not a username." in command(alice, "history not/a/name")
        assert ("Please enter 1, 2 or 3. You can also type: history (messages to everyone), "
                "history NAME (yours with NAME), search WORDS.") in command(alice, "hello")


def command(client: ClientProcess, line: str) -> str:
    """Type `line` at the menu's prompt (waited for already); what the client showed until it
    asked again."""
    client.line(line)
    return client.wait_for(CHOICE_PROMPT)
