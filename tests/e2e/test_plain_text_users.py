"""End to end: users of the plain-text dialect (a scaffold-style client and an nc-style one)
chat with a browser user and a protocol-v1 client in one room."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.e2e.conftest import BrowserUsers, RawUser, RestartableCore
from tests.e2e.test_chat import (
    expect_in_browser,
    log_of,
    send_from_browser,
    users_list,
)
from tests.support.text_client import TextClient

pytestmark = pytest.mark.e2e


def join_text(core: RestartableCore, name: str, scaffold: bool) -> TextClient:
    client = TextClient(core.address, scaffold)
    client.join(name)
    return client


def test_plain_text_users_chat_with_a_browser_user_in_every_direction(
    users: BrowserUsers, core: RestartableCore, raw_user: RawUser
) -> None:
    page = users.join("alice")
    student = join_text(core, "student", scaffold=True)
    netcat = join_text(core, "netcat", scaffold=False)
    try:
        items = users_list(page).get_by_role("listitem")
        expect(items).to_have_count(4)
        expect(items.filter(has_text="netcat")).to_contain_text("127.0.0.1:")

        netcat.command("list")
        assert netcat.line_with("users online") == "4 users online:"
        rows = {(line := netcat.line()).split()[0]: line.split() for _ in range(4)}
        assert rows["alice"][2] == "browser"
        assert rows["student"][2] == "terminal"

        student.command("send alice hello from the scaffold")
        assert student.line_with("sent") == "sent to alice"
        expect_in_browser(page, "student", "student", "hello from the scaffold")

        netcat.command("send * hello everyone from nc")
        assert netcat.line_with("sent") == "sent to everyone"
        expect_in_browser(page, "*", "netcat", "hello everyone from nc")
        assert student.line_with("netcat ->").endswith("netcat -> everyone: hello everyone from nc")
        raw_user.wait_message("netcat", "hello everyone from nc")

        send_from_browser(page, "netcat", "hi nc\nfrom the browser")
        assert netcat.line_with("alice ->").endswith("alice -> you: hi nc↵from the browser")
        send_from_browser(page, "student", "<b>not bold</b>")
        assert student.line_with("alice ->").endswith("alice -> you: <b>not bold</b>")

        raw_user.send("student", "hi from v1")
        assert student.line_with("dave ->").endswith("dave -> you: hi from v1")

        student.command("exit")
        assert student.line_with("bye") == "bye"
        expect(items).to_have_count(3)
        expect(log_of(page)).to_be_visible()
    finally:
        student.close()
        netcat.close()
