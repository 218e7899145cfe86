"""The real chat-client as a subprocess, driven through its stdin pipe, against a real core."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cli_client.render import CHOICE_PROMPT, NAME_PROMPT, RECIPIENT_PROMPT, TEXT_PROMPT
from tcp_server.server import ChatServer
from tests.cli.conftest import StartClient
from tests.support.cli import ClientProcess, client_command, running_client
from tests.support.core import RawClient, running_server, wait_until
from tests.support.process import core_process
from tests.support.texts import TAKEN_HINT

MENU_TEXT = (
    "1. List: View all connected users.\n"
    "2. Send: Send a message to a user.\n"
    "3. Exit: Exit the program.\n"
    "Enter your choice (1/2/3): "
)


def start_registered(start_client: StartClient, name: str) -> ClientProcess:
    client = start_client("--name", name)
    client.wait_for(f"Welcome, {name}!")
    client.wait_for(CHOICE_PROMPT)
    return client


def send(client: ClientProcess, to: str, text: str) -> str:
    """Menu 2 with `to` and `text`; returns what the client answered."""
    client.line("2")
    client.wait_for(RECIPIENT_PROMPT)
    client.line(to)
    client.wait_for(TEXT_PROMPT)
    client.line(text)
    # "Message sent to ..." or "Message not sent: ...", printed as one line.
    return client.wait_for("Message ") + client.wait_for(".\n")


def list_users(client: ClientProcess) -> str:
    client.line("1")
    # The table is printed at once, before the menu comes again.
    return client.wait_for("online:") + client.wait_for(CHOICE_PROMPT)


@dataclass
class Room:
    alice: ClientProcess
    bob: ClientProcess
    carol: RawClient  # speaks the protocol directly


@pytest.fixture
def room(start_client: StartClient, server: ChatServer) -> Iterator[Room]:
    with RawClient(server.address) as carol:
        carol.hello("carol")
        alice = start_registered(start_client, "alice")
        carol.expect("joined", name="alice")
        bob = start_registered(start_client, "bob")
        carol.expect("joined", name="bob")
        alice.wait_for("* bob joined the chat", since=0)
        yield Room(alice, bob, carol)


def test_the_menu_uses_the_assignments_wording(start_client: StartClient) -> None:
    client = start_client("--name", "alice")
    assert client.wait_for(MENU_TEXT).endswith(MENU_TEXT)


def test_direct_messages_reach_each_kind_of_client_from_each_other(room: Room) -> None:
    alice, bob, carol = room.alice, room.bob, room.carol
    since_alice, since_bob = alice.mark(), bob.mark()

    assert "Message sent to bob." in send(alice, "bob", "alice to bob")
    bob.wait_for("alice (to you): alice to bob", since=since_bob)

    assert "Message sent to alice." in send(bob, "alice", "bob to alice")
    alice.wait_for("bob (to you): bob to alice", since=since_alice)

    send(alice, "carol", "alice to carol")
    carol.expect("message", **{"from": "alice", "to": "carol", "text": "alice to carol"})
    send(bob, "carol", "bob to carol")
    carol.expect("message", **{"from": "bob", "to": "carol", "text": "bob to carol"})

    assert carol.request("send", to="alice", text="carol to alice")["type"] == "sent"
    alice.wait_for("carol (to you): carol to alice", since=since_alice)
    assert carol.request("send", to="bob", text="carol to bob")["type"] == "sent"
    bob.wait_for("carol (to you): carol to bob", since=since_bob)


def test_everyone_messages_reach_every_other_client(room: Room) -> None:
    alice, bob, carol = room.alice, room.bob, room.carol
    since_alice, since_bob = alice.mark(), bob.mark()

    assert "Message sent to everyone." in send(alice, "*", "from alice to all")
    bob.wait_for("alice (to everyone): from alice to all", since=since_bob)
    carol.expect("message", **{"from": "alice", "to": "*", "text": "from alice to all"})

    send(bob, "*", "from bob to all")
    alice.wait_for("bob (to everyone): from bob to all", since=since_alice)
    carol.expect("message", **{"from": "bob", "to": "*", "text": "from bob to all"})

    assert carol.request("send", to="*", text="from carol to all")["type"] == "sent"
    alice.wait_for("carol (to everyone): from carol to all", since=since_alice)
    bob.wait_for("carol (to everyone): from carol to all", since=since_bob)
    # An everyone-message does not come back to its sender.
    assert "alice (to everyone)" not in alice.text()


def test_list_shows_every_client_with_address_kind_and_status_and_marks_the_caller(
    room: Room,
) -> None:
    table = list_users(room.alice)
    assert "3 users online:" in table
    rows = {line.split()[0]: line.split() for line in table.splitlines()
            if line.startswith("  ") and not line.startswith("  NAME")}
    assert set(rows) == {"alice", "bob", "carol"}
    for row in rows.values():
        assert row[1] == "127.0.0.1"
        assert row[2].isdigit()
        assert row[3] == "terminal"
        assert row[4] == "online"
    assert rows["alice"][5:] == ["(you)"]
    assert rows["bob"][5:] == []


def test_exit_removes_the_user_from_everyones_list(room: Room) -> None:
    alice, bob, carol = room.alice, room.bob, room.carol
    since_alice = alice.mark()
    bob.line("3")
    bob.wait_for("Goodbye!")
    assert bob.wait_exit() == 0
    carol.expect("left", name="bob")
    alice.wait_for("* bob left the chat", since=since_alice)
    assert carol.users() == ["alice", "carol"]
    table = list_users(alice)
    assert "2 users online:" in table
    assert "  bob " not in table


def test_end_of_input_means_exit(room: Room) -> None:
    room.bob.close_stdin()
    room.bob.wait_for("Goodbye!")
    assert room.bob.wait_exit() == 0
    room.carol.expect("left", name="bob")


def test_name_is_asked_for_when_not_given(start_client: StartClient) -> None:
    client = start_client()
    client.wait_for(NAME_PROMPT)
    client.line("dave")
    client.wait_for("Welcome, dave!")


def test_taken_name_from_the_command_line_ends_the_client_with_exit_code_3(
    start_client: StartClient, server: ChatServer
) -> None:
    with RawClient(server.address) as holder:
        holder.hello("alice")
        client = start_client("--name", "ALICE")
        # A menu answer already waiting must not be taken for a name.
        client.line("1")
        assert client.wait_exit() == 3
        assert f"That name cannot be used: the name ALICE is taken{TAKEN_HINT}." in client.text()
        assert NAME_PROMPT not in client.text()
        assert holder.users() == ["alice"]


def test_refused_name_read_from_input_is_asked_again_from_the_next_line(
    start_client: StartClient, server: ChatServer
) -> None:
    with RawClient(server.address) as holder:
        holder.hello("alice")
        client = start_client()
        client.wait_for(NAME_PROMPT)
        client.line("ALICE")
        client.wait_for(f"That name cannot be used: the name ALICE is taken{TAKEN_HINT}. "
                        "Please choose another one.")
        client.wait_for(NAME_PROMPT)
        client.line("alice2")
        client.wait_for("Welcome, alice2!")
        holder.expect("joined", name="alice2")


def test_invalid_name_is_refused_in_the_servers_words(start_client: StartClient) -> None:
    client = start_client()
    client.wait_for(NAME_PROMPT)
    client.line("no spaces allowed")
    client.wait_for("That name cannot be used: the name may only contain")
    client.wait_for(NAME_PROMPT)


def test_unknown_recipient_is_said_before_the_message_and_its_line_is_skipped(
    start_client: StartClient,
) -> None:
    client = start_registered(start_client, "alice")
    client.line("2")
    client.wait_for(RECIPIENT_PROMPT)
    client.line("nobody")
    # Said at once, before the message is read...
    shown = client.wait_for("No user named 'nobody' is online")
    assert TEXT_PROMPT not in shown
    # ...and the script's message line is then skipped, not taken for a menu answer.
    client.line("1")
    client.wait_for(TEXT_PROMPT + "1\n")
    client.wait_for(CHOICE_PROMPT)
    client.line("3")
    assert client.wait_exit() == 0
    assert "online:" not in client.text()
    assert "Message sent" not in client.text()


def test_recipient_is_checked_whatever_the_case_of_the_name(room: Room) -> None:
    since = room.bob.mark()
    assert "Message sent to bob." in send(room.alice, "BOB", "hi bob")
    room.bob.wait_for("alice (to you): hi bob", since=since)


def test_recipient_leaving_while_the_message_is_typed_is_refused_in_the_servers_words(
    start_client: StartClient, server: ChatServer
) -> None:
    with RawClient(server.address) as dave:
        dave.hello("dave")
        client = start_registered(start_client, "alice")
        client.line("2")
        client.wait_for(RECIPIENT_PROMPT)
        client.line("dave")
        client.wait_for(TEXT_PROMPT)
        since = client.mark()
        # Leaving is saying exit: a connection that just ends leaves the user away.
        assert dave.request("exit")["type"] == "bye"
    client.wait_for("* dave left the chat", since=since)
    client.line("still there?")
    assert "Message not sent: no user named 'dave' is online." in (
        client.wait_for("Message ") + client.wait_for(".\n"))


def test_too_long_text_is_refused_in_plain_words(start_client: StartClient) -> None:
    client = start_registered(start_client, "alice")
    answer = send(client, "*", "x" * 4001)
    assert "Message not sent: the text is 4001 characters long; the most is 4000." in answer
    # Piped, the script goes on with its next answer: the menu.
    client.wait_for(CHOICE_PROMPT)
    client.line("3")
    assert client.wait_exit() == 0


def test_multi_line_message_is_shown_with_indented_continuation_lines(room: Room) -> None:
    since = room.alice.mark()
    room.carol.request("send", to="alice", text="line one\nline two")
    shown = room.alice.wait_for("line two", since=since)
    lines = shown.splitlines()
    assert lines[-2].endswith("carol (to you): line one")
    assert lines[-1] == " " * lines[-2].index("line one") + "line two"


def test_invalid_menu_choice_is_answered(start_client: StartClient) -> None:
    client = start_registered(start_client, "alice")
    client.line("4")
    client.wait_for("Please enter 1, 2 or 3.")
    client.wait_for(CHOICE_PROMPT)


def test_server_not_running_is_one_line_and_exit_code_2() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))  # bound, never listening: connecting is refused
        port = probe.getsockname()[1]
        with running_client(client_command(port, "--name", "alice")) as client:
            assert client.wait_exit() == 2
            assert client.stderr is not None
            client.stderr.wait_ended(10)
            error = client.stderr_text()
    assert error.splitlines() == [
        f"chat-client: cannot connect to the chat server at 127.0.0.1:{port}: "
        "Connection refused"
    ]


def test_server_killed_mid_session_is_said_at_once_and_exit_code_1_after_reconnect_for(
    tmp_path: Path,
) -> None:
    with core_process("--data-dir", str(tmp_path)) as server, running_client(
        client_command(server.address[1], "--name", "alice", "--reconnect-for", "1")
    ) as client:
        client.wait_for(CHOICE_PROMPT)
        server.proc.kill()
        # stdin stays open: nobody presses a key, the client notices by itself.
        client.wait_for("Connection to the server lost; reconnecting...")
        client.wait_for("Could not reconnect to the server within 1 s; giving up.")
        assert client.wait_exit() == 1
        assert "Traceback" not in client.stderr_text() + client.text()


def test_server_shutdown_is_said_with_its_reason_and_exit_code_1_after_reconnect_for(
    tmp_path: Path,
) -> None:
    with core_process("--data-dir", str(tmp_path)) as server, running_client(
        client_command(server.address[1], "--name", "alice", "--reconnect-for", "1")
    ) as client:
        client.wait_for(CHOICE_PROMPT)
        server.proc.terminate()
        client.wait_for("The server is closing the connection: server shutting down")
        client.wait_for("Connection to the server lost; reconnecting...")
        client.wait_for("Could not reconnect to the server within 1 s; giving up.")
        assert client.wait_exit() == 1


def test_name_can_be_given_after_the_servers_hello_timeout() -> None:
    with running_server(hello_timeout=1.0) as server, running_client(
        client_command(server.address[1])
    ) as client:
        client.wait_for(NAME_PROMPT)
        # The server gives up on the silent connection; the user then types a name.
        wait_until(lambda: server.connection_count() == 1, what="the connection")
        wait_until(lambda: server.connection_count() == 0, what="the hello timeout")
        client.line("slowpoke")
        client.wait_for("Welcome, slowpoke!")


def test_a_refusal_for_the_address_is_not_blamed_on_the_name() -> None:
    with running_server(max_clients_per_ip=1) as server, RawClient(server.address) as holder:
        holder.hello("holder")
        with running_client(client_command(server.address[1])) as client:
            client.wait_for(NAME_PROMPT)
            client.line("alice")
            client.wait_for("The server did not let you in: 1 users are already registered "
                            "from your address 127.0.0.1; one of them must exit first. Enter "
                            "a name to try again.")
            assert "That name cannot be used" not in client.text()
            client.wait_for(NAME_PROMPT)
            holder.request("exit")
            client.line("alice")
            client.wait_for("Welcome, alice!")
            # Through a pipe, a --name refused for the address ends the client (exit 3).
            with running_client(client_command(server.address[1], "--name", "carol")) as other:
                other.wait_for("The server did not let you in: 1 users are already")
                assert other.wait_exit() == 3


def test_full_server_is_said_in_its_words_and_exit_code_1() -> None:
    with running_server(max_clients=1) as server, RawClient(server.address) as holder:
        holder.hello("holder")
        with running_client(client_command(server.address[1], "--name", "alice")) as client:
            client.wait_for("Server error: the server is full")
            client.wait_for("Connection to the server lost.")
            assert client.wait_exit() == 1
