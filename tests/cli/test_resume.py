"""The real chat-client against real core processes that stop and start again on the same
port and data directory: it reconnects, resumes its session and shows what it missed, once and
in order; through a pipe and at a terminal (pty)."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cli_client.backoff import MAX_DELAY_S
from cli_client.connection import PING_INTERVAL_S, PONG_TIMEOUT_S
from cli_client.render import CHOICE_PROMPT, RECIPIENT_PROMPT, TEXT_PROMPT
from tests.support.cli import ClientProcess, client_command, running_client
from tests.support.core import WAIT_S, RawClient
from tests.support.process import CoreProcess, core_process

PROMPT = CHOICE_PROMPT.rstrip()  # prompt_toolkit draws the trailing space as a cursor move


@contextlib.contextmanager
def core_on(data_dir: Path, port: int = 0, *args: str) -> Iterator[CoreProcess]:
    with core_process("--data-dir", str(data_dir), "--port", str(port), *args) as core:
        yield core


def stop_gracefully(core: CoreProcess) -> None:
    """SIGTERM, as a service manager stops the core: it says bye to everyone and exits."""
    core.proc.terminate()
    assert core.proc.wait(WAIT_S) == 0


@contextlib.contextmanager
def paused(client: ClientProcess) -> Iterator[None]:
    """The client process is stopped (SIGSTOP) meanwhile: it reads nothing, so what happens
    then reaches it only as a replay or from its socket's buffer."""
    os.kill(client.proc.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(client.proc.pid, signal.SIGCONT)


def resume(raw: RawClient, name: str, welcome: dict[str, Any], after: int) -> dict[str, Any]:
    raw.send(type="hello", name=name, resume=welcome["session"], after=after)
    return raw.expect("welcome", name=name, resumed=True)


def send(raw: RawClient, to: str, text: str) -> int:
    reply = raw.request("send", to=to, text=text)
    assert reply["type"] == "sent", reply
    seq: int = reply["seq"]
    return seq


def shown_texts(client: ClientProcess, texts: list[str]) -> list[str]:
    """The given texts in the order the client showed them, each as often as it did."""
    found: list[tuple[int, str]] = []
    output = client.text()
    for text in texts:
        start = 0
        while (index := output.find(text, start)) >= 0:
            found.append((index, text))
            start = index + len(text)
    return [text for _, text in sorted(found)]


@pytest.mark.parametrize("pty_mode", [False, True], ids=["pipe", "pty"])
def test_client_survives_a_core_restart_and_shows_what_it_missed_once_in_order(
    tmp_path: Path, pty_mode: bool
) -> None:
    texts = ["one (live)", "two (just before the stop)", "three (while down, to alice)",
             "four (while down, to all)", "five (live again)"]
    with contextlib.ExitStack() as stack:
        first = stack.enter_context(core_on(tmp_path))
        port = first.address[1]
        alice = stack.enter_context(
            running_client(client_command(port, "--name", "alice"), pty_mode=pty_mode)
        )
        alice.wait_for(PROMPT)
        bob = stack.enter_context(RawClient(first.address))
        bob_welcome = bob.hello("bob")
        send(bob, "alice", texts[0])
        alice.wait_for(f"bob (to you): {texts[0]}")
        with paused(alice):
            last = send(bob, "*", texts[1])
            stop_gracefully(first)
            bob.close()
            second = stack.enter_context(core_on(tmp_path, port))
            bob = stack.enter_context(RawClient(second.address))
            resume(bob, "bob", bob_welcome, after=last)
            send(bob, "alice", texts[2])
            send(bob, "*", texts[3])
        # Alice reads the rest of the old connection, sees it end and comes back.
        alice.wait_for("Connection to the server lost; reconnecting...")
        alice.wait_for("Reconnected as alice.")
        bob.expect("back", name="alice")
        send(bob, "alice", texts[4])
        alice.wait_for(texts[4])
        assert shown_texts(alice, texts) == texts
        alice.line("3")
        alice.wait_for("Goodbye!")
        assert alice.wait_exit() == 0
        bob.expect("left", name="alice")


@pytest.mark.parametrize("pty_mode", [False, True], ids=["pipe", "pty"])
def test_an_expired_session_ends_the_client_with_a_clear_message_and_exit_code_1(
    tmp_path: Path, pty_mode: bool
) -> None:
    # A grace of 0: a session whose connection ended is over at once, even across a restart.
    with core_on(tmp_path, 0, "--resume-grace", "0") as first:
        port = first.address[1]
        with running_client(client_command(port, "--name", "alice"),
                            pty_mode=pty_mode) as alice:
            alice.wait_for(PROMPT)
            stop_gracefully(first)
            with core_on(tmp_path, port, "--resume-grace", "0"):
                alice.wait_for("Connection to the server lost; reconnecting...")
                alice.wait_for("Your session could not be resumed")
                alice.wait_for("Start the client again to join afresh.")
                assert alice.wait_exit() == 1
                assert "Traceback" not in alice.text() + alice.stderr_text()


def test_a_message_sent_from_the_menu_while_reconnecting_waits_and_goes_once_back(
    tmp_path: Path,
) -> None:
    with contextlib.ExitStack() as stack:
        first = stack.enter_context(core_on(tmp_path))
        port = first.address[1]
        alice = stack.enter_context(running_client(client_command(port, "--name", "alice")))
        alice.wait_for(CHOICE_PROMPT)
        with RawClient(first.address) as bob:
            bob_welcome = bob.hello("bob")
            alice.wait_for("* bob joined the chat")
            stop_gracefully(first)
        alice.wait_for("Connection to the server lost; reconnecting...")
        alice.line("2")
        alice.wait_for(RECIPIENT_PROMPT)
        alice.line("bob")  # the check that bob is there waits for the connection
        alice.wait_for("Waiting for the connection to the server to come back (up to 30 s)...")
        second = stack.enter_context(core_on(tmp_path, port))
        alice.wait_for("Reconnected as alice.")
        alice.wait_for(TEXT_PROMPT)  # bob is away, but there: the message is asked for
        alice.line("written while the core was down")
        alice.wait_for("Message sent to bob.")
        bob = stack.enter_context(RawClient(second.address))
        resume(bob, "bob", bob_welcome, after=bob_welcome["seq"])
        bob.expect("message", text="written while the core was down")
        bob.assert_silent()


def test_end_of_input_while_reconnecting_still_says_goodbye_on_the_server(
    tmp_path: Path,
) -> None:
    with contextlib.ExitStack() as stack:
        first = stack.enter_context(core_on(tmp_path))
        port = first.address[1]
        alice = stack.enter_context(running_client(client_command(port, "--name", "alice")))
        alice.wait_for(CHOICE_PROMPT)
        stop_gracefully(first)
        alice.wait_for("Connection to the server lost; reconnecting...")
        second = stack.enter_context(core_on(tmp_path, port))
        carol = stack.enter_context(RawClient(second.address))
        carol.hello("carol")
        # Whether the client is back already or still waiting out its backoff, the end of
        # input ends the session on the server.
        alice.close_stdin()
        alice.wait_for("Goodbye!")
        assert alice.wait_exit() == 0
        event = carol.recv()
        if event["type"] == "back":
            assert (event["name"], event["user"]["name"]) == ("alice", "alice")
            event = carol.recv()
        assert event == {"type": "left", "name": "alice"}


def test_end_of_input_while_the_core_is_down_says_the_goodbye_could_not_be_said(
    tmp_path: Path,
) -> None:
    with core_on(tmp_path) as core, running_client(
        client_command(core.address[1], "--name", "alice")
    ) as alice:
        alice.wait_for(CHOICE_PROMPT)
        stop_gracefully(core)
        alice.wait_for("Connection to the server lost; reconnecting...")
        alice.close_stdin()
        alice.wait_for("The connection ended before the server said goodbye.")
        assert alice.wait_exit() == 1


def test_a_message_lost_with_a_dying_core_is_said_not_sent_after_reconnecting(
    tmp_path: Path,
) -> None:
    with contextlib.ExitStack() as stack:
        first = stack.enter_context(core_on(tmp_path))
        port = first.address[1]
        alice = stack.enter_context(running_client(client_command(port, "--name", "alice")))
        alice.wait_for(CHOICE_PROMPT)
        bob = stack.enter_context(RawClient(first.address))
        bob_welcome = bob.hello("bob")
        alice.line("2")
        alice.wait_for(RECIPIENT_PROMPT)
        alice.line("bob")
        alice.wait_for(TEXT_PROMPT)
        # The core freezes: the text goes out but nobody reads it; then the core dies.
        os.kill(first.proc.pid, signal.SIGSTOP)
        # Stopped, every thread: kill() returns before a thread running on the other CPU is
        # stopped, and a reader that ran on answered the text ("Message sent", CI once).
        assert wait_stopped(first.proc.pid), "the core did not stop on SIGSTOP"
        alice.line("lost in the crash")
        # Killed once the text is in the frozen core's receive queue: killed sooner, the
        # client may see the connection end before it reads the line, and then it rightly
        # waits to send it on the next connection instead. (A core thread already running
        # when SIGSTOP came may still read it first: then the queue stays empty, and the
        # client, which wrote it, must say the same.)
        wait_for_unread_bytes(port)
        first.proc.kill()
        first.proc.wait(WAIT_S)
        alice.wait_for("The connection was lost before the server confirmed the message; "
                       "checking whether it arrived...")
        reconnecting = alice.mark()
        second = stack.enter_context(core_on(tmp_path, port))
        # Two threads of the client say these, in either order.
        alice.wait_for("Reconnected as alice.", since=reconnecting)
        alice.wait_for("Message not sent: the connection was lost before the server took it. "
                       "Please send it again.", since=reconnecting)
        bob = stack.enter_context(RawClient(second.address))
        resume(bob, "bob", bob_welcome, after=bob_welcome["seq"])
        bob.assert_silent()


def wait_stopped(pid: int) -> bool:
    """Until every thread of `pid` is stopped (state T in /proc), at most WAIT_S."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        states = []
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):  # a thread that ended meanwhile
                # The state follows the command name, which is in parentheses.
                states.append((task / "stat").read_text().rsplit(")", 1)[1].split()[0])
        if states and all(state in ("T", "t") for state in states):
            return True
        time.sleep(0.005)
    return False


def wait_for_unread_bytes(port: int) -> bool:
    """Until a connection to the local `port` has bytes its (stopped) server has not read
    (Linux's /proc/net/tcp: the rx_queue of a socket whose local port is `port`), at most
    WAIT_S; whether it came to that."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        for row in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            fields = row.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            rx_queue = int(fields[4].split(":")[1], 16)
            if local_port == port and fields[3] == "01" and rx_queue > 0:  # 01: ESTABLISHED
                return True
        time.sleep(0.01)
    return False

@pytest.mark.slow
def test_a_core_that_stops_answering_is_found_by_ping_and_the_session_resumed(
    tmp_path: Path,
) -> None:
    # SIGSTOP: the core's sockets stay open and nothing is closed or reset, like a server
    # whose machine froze. Only the client's ping without pong can tell.
    found_within_s = PING_INTERVAL_S + PONG_TIMEOUT_S + WAIT_S
    with contextlib.ExitStack() as stack:
        core = stack.enter_context(core_on(tmp_path))
        alice = stack.enter_context(
            running_client(client_command(core.address[1], "--name", "alice"))
        )
        alice.wait_for(CHOICE_PROMPT)
        bob = stack.enter_context(RawClient(core.address))
        bob.hello("bob")
        alice.wait_for("* bob joined the chat")
        os.kill(core.proc.pid, signal.SIGSTOP)
        try:
            alice.wait_for("Connection to the server lost; reconnecting...",
                           timeout=found_within_s)
        finally:
            os.kill(core.proc.pid, signal.SIGCONT)
        alice.wait_for("Reconnected as alice.", timeout=WAIT_S + MAX_DELAY_S)
        bob.request("send", to="alice", text="you were frozen out")
        alice.wait_for("bob (to you): you were frozen out")
        alice.line("3")
        alice.wait_for("Goodbye!")
        assert alice.wait_exit() == 0


def test_messages_deleted_by_retention_while_away_are_said_missing(tmp_path: Path) -> None:
    keep = ("--history-max-messages", "2")
    with contextlib.ExitStack() as stack:
        first = stack.enter_context(core_on(tmp_path, 0, *keep))
        port = first.address[1]
        alice = stack.enter_context(running_client(client_command(port, "--name", "alice")))
        alice.wait_for(CHOICE_PROMPT)
        bob = stack.enter_context(RawClient(first.address))
        bob_welcome = bob.hello("bob")
        after = bob_welcome["seq"]
        with paused(alice):
            stop_gracefully(first)
            bob.close()
            # Five messages while alice is away; the store keeps only the last two, and a
            # fresh core applies that retention after its first commit.
            second = stack.enter_context(core_on(tmp_path, port, *keep))
            bob = RawClient(second.address)
            resume(bob, "bob", bob_welcome, after=after)
            for i in range(1, 6):
                after = send(bob, "*", f"gone or kept {i}")
            bob.close()
            stop_gracefully(second)
            stack.enter_context(core_on(tmp_path, port, *keep))
            bob = stack.enter_context(RawClient(("127.0.0.1", port)))
            resume(bob, "bob", bob_welcome, after=after)
            send(bob, "*", "the newest")
        alice.wait_for("Connection to the server lost; reconnecting...")
        alice.wait_for("Some of the messages sent while you were away are no longer kept by "
                       "the server and cannot be shown.")
        alice.wait_for("Reconnected as alice.")
        alice.wait_for("bob (to everyone): the newest")
        output = alice.text()
        assert "gone or kept 1" not in output
        assert output.count("the newest") == 1
