"""End to end with two core nodes on one Redis: a browser (through the gateway, on node A) and
the terminal client (on node B) chat as in one room."""

from __future__ import annotations

import pytest
from playwright.sync_api import Browser, expect

from tests.e2e.test_chat import expect_in_browser, send_from_browser, users_list
from tests.support.chat_client_process import ChatClientProcess
from tests.support.gateway import SECRET as PROCESS_SECRET
from tests.support.gateway import gateway_process
from tests.support.process import core_process

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_a_browser_and_a_terminal_on_different_nodes_chat(
    browser: Browser, redis_url: str
) -> None:
    node = ("--redis", redis_url, "--gateway-secret", PROCESS_SECRET)
    with (
        core_process(*node, "--node-id", "a") as a,
        core_process(*node, "--node-id", "b") as b,
        gateway_process("--core", "{}:{}".format(*a.address)) as gateway,
    ):
        context = browser.new_context(base_url=gateway.origin)
        try:
            page = context.new_page()
            page.goto("/")
            page.get_by_label("Username").fill("alice")
            page.get_by_role("button", name="Join").click()
            expect(page.get_by_role("status")).to_have_text("Online as alice")
            with ChatClientProcess(b.address, "carol") as carol:
                carol.wait_for("Welcome, carol!")
                expect(users_list(page)).to_contain_text("carol")
                assert any("alice" in row for row in carol.list_users())
                send_from_browser(page, "*", "hello from node a")
                carol.wait_for("alice (to everyone): hello from node a")
                carol.send("alice", "hello from node b")
                expect_in_browser(page, "carol", "carol", "hello from node b")
                send_from_browser(page, "carol", "direct across nodes")
                carol.wait_for("alice (to you): direct across nodes")
        finally:
            context.close()
