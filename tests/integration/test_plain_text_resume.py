"""A plain-text resume replays what the session missed exactly once."""

from __future__ import annotations

from tests.support.core import RawClient
from tests.support.text_client import TextClient

Address = tuple[str, int]


def test_messages_replayed_to_a_resumed_connection_are_not_replayed_again(
    address: Address,
) -> None:
    with RawClient(address) as bob:
        bob.hello("bob")
        first = TextClient(address, scaffold=False)
        resume = first.join("alice")
        bob.expect("joined", name="alice")
        first.close()
        bob.expect("away", name="alice")
        bob.request("send", to="*", text="while you were away")

        second = TextClient(address, scaffold=False)
        try:
            second.command(resume)
            assert second.line().startswith("welcome back alice!")
            assert second.line().endswith("bob -> everyone: while you were away")
        finally:
            second.close()
        bob.expect("back", name="alice")
        bob.expect("away", name="alice")

        third = TextClient(address, scaffold=False)
        try:
            third.command(resume)
            assert third.line().startswith("welcome back alice!")
            bob.expect("back", name="alice")
            bob.request("send", to="*", text="now live")
            assert third.line().endswith("bob -> everyone: now live")
        finally:
            third.close()
