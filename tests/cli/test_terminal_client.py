"""The real chat-client at a terminal: a subprocess on a pseudo-terminal (the pty module)."""

from __future__ import annotations

from pathlib import Path

from cli_client import render
from tcp_server.server import ChatServer
from tests.cli.conftest import StartClient
from tests.support.cli import client_command, running_client
from tests.support.core import RawClient
from tests.support.process import core_process
from tests.support.texts import TAKEN_HINT

# prompt_toolkit draws a prompt's trailing space as a cursor movement, so match without it.
CHOICE_PROMPT = render.CHOICE_PROMPT.rstrip()
RECIPIENT_PROMPT = render.RECIPIENT_PROMPT.rstrip()
TEXT_PROMPT = render.TEXT_PROMPT.rstrip()
NAME_PROMPT = render.NAME_PROMPT.rstrip()
CTRL_C = "\x03"
CTRL_D = "\x04"
CTRL_U = "\x15"
BACKSPACE = "\x7f"


def test_message_arriving_at_the_menu_prompt_is_shown_without_a_key_press(
    start_client: StartClient, server: ChatServer
) -> None:
    with RawClient(server.address) as dave:
        dave.hello("dave")
        alice = start_client("--name", "alice", pty_mode=True)
        alice.wait_for(CHOICE_PROMPT)
        dave.expect("joined", name="alice")
        assert dave.request("send", to="alice", text="are you there?")["type"] == "sent"
        alice.wait_for("dave (to you): are you there?")


def test_half_typed_answer_is_intact_after_an_incoming_message(
    start_client: StartClient, server: ChatServer
) -> None:
    with RawClient(server.address) as dave:
        dave.hello("dave")
        alice = start_client("--name", "alice", pty_mode=True)
        alice.wait_for(CHOICE_PROMPT)
        dave.expect("joined", name="alice")
        alice.line("2")
        alice.wait_for(RECIPIENT_PROMPT)
        alice.line("dave")
        alice.wait_for(TEXT_PROMPT)
        alice.write("hello wor")
        alice.wait_for("hello wor")  # echoed: the terminal has it

        dave.request("send", to="*", text="interruption!")
        alice.wait_for("dave (to everyone): interruption!")
        # The prompt and what was typed so far are drawn again below the message...
        alice.wait_for(TEXT_PROMPT)
        alice.wait_for("hello wor")
        # ...and typing goes on where it stopped.
        alice.line("ld")
        dave.expect("message", **{"from": "alice", "to": "dave", "text": "hello world"})
        alice.wait_for("Message sent to dave.")


def test_taken_name_from_the_command_line_is_asked_again_at_a_terminal(
    start_client: StartClient, server: ChatServer
) -> None:
    with RawClient(server.address) as holder:
        holder.hello("alice")
        client = start_client("--name", "ALICE", pty_mode=True)
        client.wait_for(f"That name cannot be used: the name ALICE is taken{TAKEN_HINT}. "
                        "Please choose another one.")
        client.wait_for(NAME_PROMPT)
        client.line("alice2")
        client.wait_for("Welcome, alice2!")
        holder.expect("joined", name="alice2")


def test_unknown_recipient_is_said_at_once_without_asking_for_the_message(
    start_client: StartClient,
) -> None:
    alice = start_client("--name", "alice", pty_mode=True)
    alice.wait_for(CHOICE_PROMPT)
    alice.line("2")
    alice.wait_for(RECIPIENT_PROMPT)
    alice.line("dave")
    shown = alice.wait_for("No user named 'dave' is online.")
    shown += alice.wait_for(CHOICE_PROMPT)
    assert TEXT_PROMPT not in shown


def test_too_long_message_is_offered_again_for_editing_and_sent_once_short_enough(
    start_client: StartClient, server: ChatServer
) -> None:
    with RawClient(server.address) as dave:
        dave.hello("dave")
        alice = start_client("--name", "alice", pty_mode=True)
        alice.wait_for(CHOICE_PROMPT)
        dave.expect("joined", name="alice")
        alice.line("2")
        alice.wait_for(RECIPIENT_PROMPT)
        alice.line("dave")
        alice.wait_for(TEXT_PROMPT)
        alice.line("a" * 3_999 + "bc")
        alice.wait_for("Message not sent: the text is 4001 characters long; the most is 4000.")
        alice.wait_for(render.EDIT_HINT)
        # The text is back in the prompt, not to be typed again. (It is taller than the
        # terminal, so the prompt's label has scrolled away.)
        alice.wait_for("bc")
        alice.line(BACKSPACE)
        dave.expect("message", **{"from": "alice", "to": "dave", "text": "a" * 3_999 + "b"})
        alice.wait_for("Message sent to dave.")


def test_too_long_message_cleared_while_editing_is_not_sent(
    start_client: StartClient, server: ChatServer
) -> None:
    with RawClient(server.address) as dave:
        dave.hello("dave")
        alice = start_client("--name", "alice", pty_mode=True)
        alice.wait_for(CHOICE_PROMPT)
        dave.expect("joined", name="alice")
        alice.line("2")
        alice.wait_for(RECIPIENT_PROMPT)
        alice.line("dave")
        alice.wait_for(TEXT_PROMPT)
        alice.line("x" * 4_001)
        alice.wait_for("the most is 4000.")
        alice.wait_for(render.EDIT_HINT)
        alice.wait_for("x" * 50)
        alice.line(CTRL_U)  # clears the line
        alice.wait_for("Message not sent: the text is empty.")
        alice.wait_for(CHOICE_PROMPT)
        alice.line("3")
        alice.wait_for("Goodbye!")
        assert alice.wait_exit() == 0
        dave.expect("left", name="alice")


def test_ctrl_d_at_the_menu_prompt_exits_like_exit(
    start_client: StartClient, server: ChatServer
) -> None:
    with RawClient(server.address) as dave:
        dave.hello("dave")
        alice = start_client("--name", "alice", pty_mode=True)
        alice.wait_for(CHOICE_PROMPT)
        alice.write(CTRL_D)
        alice.wait_for("Goodbye!")
        assert alice.wait_exit() == 0
        dave.expect("joined", name="alice")
        dave.expect("left", name="alice")


def test_ctrl_c_at_the_menu_prompt_exits_like_exit(
    start_client: StartClient, server: ChatServer
) -> None:
    with RawClient(server.address) as dave:
        dave.hello("dave")
        alice = start_client("--name", "alice", pty_mode=True)
        alice.wait_for(CHOICE_PROMPT)
        alice.write("half an answer" + CTRL_C)
        alice.wait_for("Goodbye!")
        assert alice.wait_exit() == 0
        dave.expect("joined", name="alice")
        dave.expect("left", name="alice")


def test_server_killed_while_at_the_prompt_is_said_at_once_and_exit_code_1_after_giving_up(
    tmp_path: Path,
) -> None:
    with core_process("--data-dir", str(tmp_path)) as server, running_client(
        client_command(server.address[1], "--name", "alice", "--reconnect-for", "1"),
        pty_mode=True,
    ) as alice:
        alice.wait_for(CHOICE_PROMPT)
        alice.write("1")  # a half-typed answer; the prompt must still give way
        alice.wait_for("1")
        server.proc.kill()
        alice.wait_for("Connection to the server lost; reconnecting...")
        alice.wait_for("Could not reconnect to the server within 1 s; giving up.")
        assert alice.wait_exit() == 1
        assert "Traceback" not in alice.text()
