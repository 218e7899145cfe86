"""The terminal client given two nodes of one room: its node is killed, it resumes on the
other and shows what was sent meanwhile."""

from __future__ import annotations

import pytest

from tests.support.chat_client_process import ChatClientProcess
from tests.support.core import RawClient
from tests.support.process import core_process

pytestmark = pytest.mark.slow


def test_the_terminal_client_resumes_on_the_next_node_when_its_node_dies(
    redis_url: str,
) -> None:
    node = ("--redis", redis_url, "--node-timeout", "2", "--resume-grace", "30")
    with (
        core_process(*node, "--node-id", "a") as a,
        core_process(*node, "--node-id", "b") as b,
    ):
        bob = RawClient(b.address)
        bob.hello("bob")
        with ChatClientProcess(a.address, "carol", b.address) as carol:
            carol.wait_for("Welcome, carol!")
            bob.request("send", to="*", text="before the crash")
            carol.wait_for("bob (to everyone): before the crash")
            a.proc.kill()
            carol.wait_for("Connection to the server lost; reconnecting...")
            bob.request("send", to="carol", text="sent while you were moving")
            carol.wait_for("Reconnected as carol.", timeout=20)
            carol.wait_for("bob (to you): sent while you were moving")
            bob.request("send", to="*", text="after the move")
            carol.wait_for("bob (to everyone): after the move")
            assert carol.output.count("sent while you were moving") == 1
            carol.send("bob", "hello from node b")
            reply = bob.recv()
            while reply["type"] != "message":
                reply = bob.recv()
            assert (reply["from"], reply["text"]) == ("carol", "hello from node b")
        bob.close()
