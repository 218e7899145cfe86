"""End to end: two browser users, the real terminal client and a raw-socket client chat through a
real core and the real web gateway, in headless Chromium."""

from __future__ import annotations

import contextlib
import itertools
import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Locator, Page, expect

from tests.e2e.conftest import BrowserUsers, RawUser, RestartableCore
from tests.support.chat_client_process import ChatClientProcess
from tests.support.core import RawClient
from tests.support.gateway import SECRET as PROCESS_SECRET
from tests.support.gateway import gateway_process
from tests.support.process import core_process

pytestmark = pytest.mark.e2e

XSS = "<img src=x onerror=alert(1)>"
RECOVERY_S = 30.0  # the core comes back at once; the browsers' backoff decides how soon they do


@pytest.fixture
def terminal_user(core: RestartableCore) -> Iterator[ChatClientProcess]:
    with ChatClientProcess(core.address, "carol") as client:
        client.wait_for("Welcome, carol!")
        yield client


# --- the page, as a user sees it ---------------------------------------------------------------


def log_of(page: Page) -> Locator:
    return page.get_by_role("log")


def users_list(page: Page) -> Locator:
    return page.get_by_role("list", name="Users")


def open_conversation(page: Page, peer: str) -> None:
    """Show the conversation with `peer` ("*": Everyone) by choosing it in the To chooser."""
    page.get_by_label("To", exact=True).select_option(peer)


def send_from_browser(page: Page, to: str, text: str) -> None:
    """Send `text` to `to` ("*": everyone) by typing it and pressing Enter; wait for the ack."""
    open_conversation(page, to)
    box = page.get_by_label("Message", exact=True)
    box.fill(text)
    box.press("Enter")
    expect(box).to_have_value("")
    mine = log_of(page).locator(".entry.out").filter(has_text=as_shown(text))
    expect(mine).to_have_attribute("data-state", "sent")


def as_shown(text: str) -> str:
    """`text` as the page shows it: bidirectional embeddings, overrides and isolates escaped
    (static/js/labels.js, shownText)."""
    return re.sub("[\u202a-\u202e\u2066-\u2069]", lambda m: f"\\u{ord(m.group()):04x}", text)


def expect_in_browser(page: Page, conversation: str, sender: str, text: str) -> None:
    """`text` from `sender` shows in the conversation `conversation` ("*": Everyone)."""
    open_conversation(page, conversation)
    entry = log_of(page).locator(".entry").filter(has_text=text)
    expect(entry).to_have_count(1)
    expect(entry.locator(".from")).to_have_text(sender)


# --- what a new user does ----------------------------------------------------------------------


def test_two_tabs_and_a_terminal_chat_through_the_real_processes(
    browser: Browser, tmp_path: Path
) -> None:
    """The README's way: chat-server and chat-web as processes, two tabs of one browser and a
    chat-client in a terminal."""
    with (
        core_process("--gateway-secret", PROCESS_SECRET, "--data-dir", str(tmp_path)) as core,
        gateway_process("--core", "{}:{}".format(*core.address)) as gateway,
    ):
        context = browser.new_context(base_url=gateway.origin)
        try:
            tabs = {}
            for name in ("alice", "bob"):
                tab = context.new_page()
                tab.goto("/")
                tab.get_by_label("Username").fill(name)
                tab.get_by_role("button", name="Join").click()
                expect(tab.get_by_role("status")).to_have_text(f"Online as {name}")
                tabs[name] = tab
            with ChatClientProcess(core.address, "carol") as carol:
                carol.wait_for("Welcome, carol!")
                send_from_browser(tabs["alice"], "*", "hello from the first tab")
                expect_in_browser(tabs["bob"], "*", "alice", "hello from the first tab")
                carol.wait_for("alice (to everyone): hello from the first tab")
                carol.send("alice", "hello from the terminal")
                expect_in_browser(tabs["alice"], "carol", "carol", "hello from the terminal")
                send_from_browser(tabs["bob"], "carol", "hello from the second tab")
                carol.wait_for("bob (to you): hello from the second tab")
        finally:
            context.close()


# --- joining -----------------------------------------------------------------------------------


def test_join_page_says_not_connected_before_the_first_join(
    users: BrowserUsers, results_dir: Path
) -> None:
    # "Offline" before anyone tried anything reads as if the server were down.
    page = users.open()
    status = page.get_by_role("status")
    expect(status).to_have_text("Not connected")
    page.screenshot(path=results_dir / "join.png")
    page.get_by_label("Username").fill("alice")
    page.get_by_role("button", name="Join").click()
    expect(status).to_have_text("Online as alice")


@pytest.mark.parametrize("name", ["DAVE", "no spaces", "x" * 33])
def test_refused_name_shows_the_servers_message_beside_the_field(
    users: BrowserUsers, raw_user: RawUser, core: RestartableCore, name: str
) -> None:
    # What the core answers to this name (taken case-insensitively by dave, or breaking the
    # name rules), asked on a connection of our own.
    with RawClient(core.address) as probe:
        probe.send(type="hello", name=name)
        refusal = probe.expect("error")
    page = users.open()
    page.get_by_label("Username").fill(name)
    page.get_by_role("button", name="Join").click()
    expect(page.locator("#username-error")).to_have_text(refusal["message"])
    expect(page.get_by_label("Username")).to_have_attribute("aria-invalid", "true")
    expect(page.get_by_role("button", name="Join")).to_be_visible()
    assert [user["name"] for user in raw_user.users()] == ["dave"]


def test_refused_name_can_be_replaced_by_another(users: BrowserUsers, raw_user: RawUser) -> None:
    page = users.open()
    page.get_by_label("Username").fill("dave")
    page.get_by_role("button", name="Join").click()
    expect(page.locator("#username-error")).not_to_be_empty()
    page.get_by_label("Username").fill("alice")
    page.get_by_role("button", name="Join").click()
    expect(page.get_by_role("status")).to_have_text("Online as alice")
    expect(page.locator("#username-error")).to_be_empty()


# --- the Message box ---------------------------------------------------------------------------

TOO_LONG_ERROR = "A message is at most 4,000 characters."


def refuse_a_too_long_message(page: Page) -> Locator:
    """Type one character over the limit and press Enter; the box's error, now showing."""
    box = page.get_by_label("Message", exact=True)
    box.fill("x" * 4001)
    box.press("Enter")
    error = page.locator("#message-error")
    expect(error).to_have_text(TOO_LONG_ERROR)
    expect(box).to_have_attribute("aria-invalid", "true")
    return error


@pytest.mark.parametrize("text", ["", "x" * 4000], ids=["cleared", "at-the-limit"])
def test_too_long_error_goes_once_the_text_is_valid_again(users: BrowserUsers, text: str) -> None:
    page = users.join("alice")
    error = refuse_a_too_long_message(page)
    box = page.get_by_label("Message", exact=True)
    box.fill(text)
    expect(error).to_be_empty()
    expect(error).to_be_hidden()
    expect(box).not_to_have_attribute("aria-invalid", "true")


def test_too_long_error_stays_while_the_text_is_still_too_long(users: BrowserUsers) -> None:
    page = users.join("alice")
    error = refuse_a_too_long_message(page)
    page.get_by_label("Message", exact=True).press("End")
    page.get_by_label("Message", exact=True).press("y")
    expect(page.get_by_label("Message", exact=True)).to_have_value("x" * 4001 + "y")
    expect(error).to_have_text(TOO_LONG_ERROR)


# --- the Users list ----------------------------------------------------------------------------


def test_users_list_is_right_everywhere(
    users: BrowserUsers, terminal_user: ChatClientProcess, raw_user: RawUser
) -> None:
    alice = users.join("alice")
    bob = users.join("bob")
    listed = {user["name"]: user for user in raw_user.users()}
    assert sorted(listed) == ["alice", "bob", "carol", "dave"]
    assert {name: user["via"] for name, user in listed.items()} == {
        "alice": "web", "bob": "web", "carol": "tcp", "dave": "tcp"}
    for page in (alice, bob):
        items = users_list(page).get_by_role("listitem")
        expect(items).to_have_count(4)
        for name, user in listed.items():
            item = items.filter(has_text=re.compile(rf"^{name}\b"))
            expect(item).to_contain_text(f"{user['ip']}:{user['port']}")
            expect(item).to_contain_text("browser" if user["via"] == "web" else "terminal")
    expect(users_list(alice).get_by_role("listitem").first).to_contain_text("alice (you)")
    rows = "\n".join(terminal_user.list_users())
    for name, user in listed.items():
        assert re.search(rf"{name}\s+{re.escape(user['ip'])}\s+{user['port']}\b", rows), rows


def test_users_list_updates_live_when_someone_joins(users: BrowserUsers, core: RestartableCore
                                                    ) -> None:
    alice = users.join("alice")
    expect(users_list(alice).get_by_role("listitem")).to_have_count(1)
    with RawClient(core.address) as erin:
        welcome = erin.hello("erin")
        erin_item = users_list(alice).get_by_role("listitem").filter(has_text="erin")
        expect(erin_item).to_contain_text(f"{welcome['ip']}:{welcome['port']}")
        expect(erin_item).to_contain_text("terminal")


def test_the_page_asks_for_the_users_once_and_keeps_the_list_from_events(
    users: BrowserUsers, core: RestartableCore
) -> None:
    """Joins, a leave, away and back from a new address reach the list without a request."""
    page = users.open()
    sent_types: list[str] = []
    page.on("websocket", lambda ws: ws.on(
        "framesent", lambda payload: sent_types.append(json.loads(payload)["type"])))
    page.get_by_label("Username").fill("alice")
    page.get_by_role("button", name="Join").click()
    expect(page.get_by_role("status")).to_have_text("Online as alice")
    items = users_list(page).get_by_role("listitem")

    def item(name: str) -> Locator:
        return items.filter(has_text=re.compile(rf"^{name}\b"))

    def address(client: RawClient) -> str:
        ip, port = client.sock.getsockname()[:2]
        return f"{ip}:{port}"

    with contextlib.ExitStack() as stack:
        clients, welcomes = [], []
        for number in range(6):
            client = stack.enter_context(RawClient(core.address, source=f"127.0.0.{2 + number}"))
            welcomes.append(client.hello(f"peer{number}"))
            clients.append(client)
        expect(items).to_have_count(7)
        for client in clients:
            expect(item(str(client.name))).to_contain_text(address(client))
        assert clients[2].request("exit")["type"] == "bye"
        expect(items).to_have_count(6)
        clients[3].close()  # no exit: away
        expect(item("peer3")).to_contain_text("away")
        again = stack.enter_context(RawClient(core.address, source="127.0.0.20"))
        again.send(type="hello", name="peer3", resume=welcomes[3]["session"], after=0)
        again.expect("welcome", resumed=True)
        expect(item("peer3")).to_contain_text(address(again))
        expect(item("peer3")).not_to_contain_text("away")
    assert sent_types.count("list") == 1, sent_types


# --- chatting in every direction ---------------------------------------------------------------


def test_direct_messages_go_from_every_client_to_every_other(
    users: BrowserUsers, terminal_user: ChatClientProcess, raw_user: RawUser
) -> None:
    pages = {"alice": users.join("alice"), "bob": users.join("bob")}
    for page in pages.values():
        expect(users_list(page).get_by_role("listitem")).to_have_count(4)
    names = ["alice", "bob", "carol", "dave"]
    for sender, recipient in itertools.permutations(names, 2):
        text = f"direct from {sender} to {recipient} ✉"
        if sender in pages:
            send_from_browser(pages[sender], recipient, text)
        elif sender == "carol":
            terminal_user.send(recipient, text)
        else:
            raw_user.send(recipient, text)
        if recipient in pages:
            expect_in_browser(pages[recipient], sender, sender, text)
        elif recipient == "carol":
            assert "(to you)" in terminal_user.wait_for(f"{sender} (to you): {text}")
        else:
            message = raw_user.wait_message(sender, text)
            assert message["to"] == "dave"


def test_messages_to_everyone_reach_every_other_client(
    users: BrowserUsers, terminal_user: ChatClientProcess, raw_user: RawUser
) -> None:
    pages = {"alice": users.join("alice"), "bob": users.join("bob")}
    for page in pages.values():
        expect(users_list(page).get_by_role("listitem")).to_have_count(4)
    names = ["alice", "bob", "carol", "dave"]
    for sender in names:
        text = f"{sender} says hello to everyone"
        if sender in pages:
            send_from_browser(pages[sender], "*", text)
        elif sender == "carol":
            terminal_user.send("*", text)
        else:
            raw_user.send("*", text)
        for recipient in names:
            if recipient == sender:
                continue
            if recipient in pages:
                expect_in_browser(pages[recipient], "*", sender, text)
            elif recipient == "carol":
                terminal_user.wait_for(f"{sender} (to everyone): {text}")
            else:
                assert raw_user.wait_message(sender, text)["to"] == "*"


def test_a_multiline_message_keeps_its_lines(users: BrowserUsers, raw_user: RawUser) -> None:
    alice = users.join("alice")
    box = alice.get_by_label("Message", exact=True)
    box.fill("first line")
    box.press("Shift+Enter")
    box.press_sequentially("second line")
    box.press("Enter")
    assert raw_user.wait_message("alice", "first line\nsecond line")["to"] == "*"
    entry = log_of(alice).locator(".entry.out .text")
    expect(entry).to_have_text("first line\nsecond line")


def test_message_shows_the_time_the_server_gave_it(users: BrowserUsers, raw_user: RawUser
                                                   ) -> None:
    alice = users.join("alice")
    sent = raw_user.send("alice", "what time is it?")
    milliseconds = round(sent["ts"] * 1000)
    iso = datetime.fromtimestamp(milliseconds / 1000, UTC).isoformat(timespec="milliseconds")
    open_conversation(alice, "dave")
    entry = log_of(alice).locator(".entry").filter(has_text="what time is it?")
    expect(entry.locator("time")).to_have_attribute("datetime", iso.replace("+00:00", "Z"))


def test_unread_count_shows_on_a_conversation_not_shown(users: BrowserUsers, raw_user: RawUser
                                                        ) -> None:
    alice = users.join("alice")
    raw_user.send("alice", "one")
    raw_user.send("alice", "two")
    conversations = alice.get_by_role("navigation", name="Conversations")
    conversation = conversations.get_by_role("button", name="dave 2 unread")
    expect(conversation).to_be_visible()
    conversation.click()
    expect(log_of(alice)).to_contain_text("two")
    shown = conversations.get_by_role("button", name="dave", exact=True)
    expect(shown).to_have_attribute("aria-current", "true")


def test_message_to_someone_who_left_shows_the_servers_refusal(
    users: BrowserUsers, core: RestartableCore
) -> None:
    alice = users.join("alice")
    with RawClient(core.address) as erin:
        erin.hello("erin")
        expect(users_list(alice)).to_contain_text("erin")
        open_conversation(alice, "erin")
        erin.send(type="exit")
        erin.expect("bye")
    expect(users_list(alice)).not_to_contain_text("erin")
    box = alice.get_by_label("Message", exact=True)
    box.fill("are you there?")
    box.press("Enter")
    mine = log_of(alice).locator(".entry.out").filter(has_text="are you there?")
    expect(mine).to_have_attribute("data-state", "failed")
    expect(mine).to_contain_text("not sent")


def test_retry_sends_a_refused_message_again(users: BrowserUsers, core: RestartableCore) -> None:
    alice = users.join("alice")
    with RawClient(core.address) as erin:
        erin.hello("erin")
        expect(users_list(alice)).to_contain_text("erin")
        open_conversation(alice, "erin")
        erin.send(type="exit")
        erin.expect("bye")
    expect(users_list(alice)).not_to_contain_text("erin")
    box = alice.get_by_label("Message", exact=True)
    box.fill("second chance")
    box.press("Enter")
    mine = log_of(alice).locator(".entry.out").filter(has_text="second chance")
    expect(mine).to_have_attribute("data-state", "failed")
    with RawClient(core.address) as erin_again:
        erin_again.hello("erin")
        expect(users_list(alice)).to_contain_text("erin")
        mine.get_by_role("button", name="Retry").click()
        message = erin_again.expect("message", text="second chance")
        assert message["from"] == "alice"
    expect(mine).to_have_count(1)
    expect(mine).to_have_attribute("data-state", "sent")


# --- text is text ------------------------------------------------------------------------------


def test_markup_sent_as_text_shows_literally(
    users: BrowserUsers, terminal_user: ChatClientProcess, raw_user: RawUser
) -> None:
    alice = users.join("alice")
    bob = users.join("bob")
    send_from_browser(alice, "*", XSS)
    raw_user.send("bob", XSS)
    expect_in_browser(bob, "*", "alice", XSS)
    expect(log_of(bob).get_by_text(XSS, exact=True)).to_have_count(1)
    expect_in_browser(bob, "dave", "dave", XSS)
    expect(log_of(bob).get_by_text(XSS, exact=True)).to_have_count(1)
    terminal_user.wait_for(f"alice (to everyone): {XSS}")
    assert bob.locator("img").count() == 0
    assert alice.locator("img").count() == 0
    assert users.dialogs == []


def test_quotes_and_closing_tags_in_text_show_literally(
    users: BrowserUsers, raw_user: RawUser
) -> None:
    alice = users.join("alice")
    text = "\"quotes\" & 'apostrophes' </div><script>alert(2)</script>"
    raw_user.send("*", text)
    entry = log_of(alice).locator(".entry.in .text")
    expect(entry).to_have_text(text)
    assert alice.locator("#log script").count() == 0
    assert users.dialogs == []


def test_a_text_that_would_read_reversed_shows_its_bidi_controls_escaped(
    users: BrowserUsers, raw_user: RawUser
) -> None:
    """A right-to-left override makes "RTL <U+202E>evil<U+202C> end" read "RTL live end"
    (found by a helper trying the browser as a new user): shown as the terminal shows it."""
    alice = users.join("alice")
    raw_user.send("*", "RTL \u202eevil\u202c end")
    entry = log_of(alice).locator(".entry.in .text")
    expect(entry).to_have_text("RTL \\u202eevil\\u202c end")


# --- leaving -----------------------------------------------------------------------------------


def test_leave_removes_the_user_from_the_other_lists(
    users: BrowserUsers, terminal_user: ChatClientProcess, raw_user: RawUser
) -> None:
    alice = users.join("alice")
    bob = users.join("bob")
    expect(users_list(bob).get_by_role("listitem")).to_have_count(4)
    alice.get_by_role("button", name="Leave").click()
    expect(alice.get_by_role("status")).to_contain_text("Offline")
    expect(alice.get_by_label("Username")).to_be_visible()
    expect(users_list(bob).get_by_role("listitem")).to_have_count(3)
    expect(users_list(bob)).not_to_contain_text("alice")
    terminal_user.wait_for("alice left the chat")
    assert "alice" not in "\n".join(terminal_user.list_users())
    assert [user["name"] for user in raw_user.users()] == ["bob", "carol", "dave"]


def test_conversation_with_a_peer_shows_them_leave_and_come_back(
    users: BrowserUsers, core: RestartableCore
) -> None:
    alice = users.join("alice")
    bob = RawUser(core.address, "bob")
    try:
        bob.send("alice", "brb")
        expect_in_browser(alice, "bob", "bob", "brb")
        assert bob.request("exit")["type"] == "bye"  # leaving for good: left, not away
    finally:
        bob.close()
    notices = log_of(alice).locator(".entry.notice")
    expect(notices).to_have_text(["bob left"])
    bob = RawUser(core.address, "bob")
    try:
        expect(notices).to_have_text(["bob left", "bob joined"])
        expect(alice.get_by_label("To", exact=True)).to_have_value("bob")
    finally:
        bob.close()


# --- the connection ----------------------------------------------------------------------------


def test_core_restart_shows_the_status_and_recovers(
    users: BrowserUsers, core: RestartableCore, results_dir: Path
) -> None:
    alice = users.join("alice")
    bob = users.join("bob")
    core.stop()
    for page in (alice, bob):
        status = page.get_by_role("status")
        expect(status).to_have_attribute("data-status", "reconnecting")
        expect(status).to_contain_text("Reconnecting")
    # While the core is down, the gateway's own refusal is what the status tells.
    expect(alice.get_by_role("status")).to_contain_text("attempt 2", timeout=RECOVERY_S * 1000)
    alice.screenshot(path=results_dir / "reconnecting.png")
    core.start()
    for page, name in ((alice, "alice"), (bob, "bob")):
        expect(page.get_by_role("status")).to_have_text(
            f"Online as {name}", timeout=RECOVERY_S * 1000
        )
    for page in (alice, bob):
        expect(users_list(page).get_by_role("listitem")).to_have_count(2)
    send_from_browser(alice, "bob", "back again")
    expect_in_browser(bob, "alice", "alice", "back again")


def test_the_page_fetches_nothing_from_elsewhere(users: BrowserUsers) -> None:
    requested: list[str] = []
    page = users.open()
    page.on("request", lambda request: requested.append(request.url))
    page.reload()
    page.get_by_label("Username").fill("alice")
    page.get_by_role("button", name="Join").click()
    expect(page.get_by_role("status")).to_have_text("Online as alice")
    assert requested, "the page loaded nothing?"
    foreign = [url for url in requested if not url.startswith((users.url, users.url.replace(
        "http://", "ws://")))]
    assert foreign == []


# --- the keyboard and a phone ------------------------------------------------------------------


def focused_outline(page: Page) -> str:
    style: str = page.evaluate("() => getComputedStyle(document.activeElement).outlineStyle")
    return style


def test_keyboard_alone_joins_sends_and_leaves(users: BrowserUsers, raw_user: RawUser) -> None:
    page = users.open()
    page.keyboard.press("Tab")
    expect(page.get_by_label("Username")).to_be_focused()
    page.keyboard.type("alice")
    page.keyboard.press("Enter")
    expect(page.get_by_role("status")).to_have_text("Online as alice")
    box = page.get_by_label("Message", exact=True)
    expect(box).to_be_focused()
    page.keyboard.type("typed without a mouse")
    page.keyboard.press("Enter")
    assert raw_user.wait_message("alice", "typed without a mouse")["to"] == "*"
    # To the To chooser, and pick dave with the arrow keys.
    page.keyboard.press("Shift+Tab")
    expect(page.get_by_label("To", exact=True)).to_be_focused()
    assert focused_outline(page) != "none"
    page.keyboard.press("ArrowDown")
    expect(page.get_by_label("To", exact=True)).to_have_value("dave")
    page.keyboard.press("Tab")
    page.keyboard.type("just for you")
    page.keyboard.press("Enter")
    assert raw_user.wait_message("alice", "just for you")["to"] == "dave"
    page.keyboard.press("Tab")
    expect(page.get_by_role("button", name="Send")).to_be_focused()
    assert focused_outline(page) != "none"
    page.get_by_role("button", name="Leave").focus()
    page.keyboard.press("Enter")
    expect(page.get_by_label("Username")).to_be_focused()


def test_room_fits_a_phone_width_screen(users: BrowserUsers, raw_user: RawUser) -> None:
    page = users.join("alice", viewport={"width": 375, "height": 740})
    raw_user.send("*", "a rather long message that has to wrap on a narrow screen " * 3)
    expect(log_of(page)).to_contain_text("narrow screen")
    for locator in (page.get_by_label("Message", exact=True), page.get_by_label("To", exact=True),
                    page.get_by_role("button", name="Send"), users_list(page),
                    page.get_by_role("button", name="Leave")):
        expect(locator).to_be_in_viewport()
    width = page.evaluate("() => document.documentElement.scrollWidth")
    assert width <= 375


def test_screenshots_of_the_room_with_messages(
    users: BrowserUsers, terminal_user: ChatClientProcess, raw_user: RawUser, results_dir: Path
) -> None:
    """Saves test-results/room.png and room-375.png for a look by eye."""
    alice = users.join("alice", viewport={"width": 1100, "height": 680})
    bob = users.join("bob", viewport={"width": 375, "height": 740})
    send_from_browser(alice, "*", "Hello everyone! 👋")
    send_from_browser(bob, "*", "Hi alice, hi all")
    terminal_user.send("*", "carol here, from a terminal")
    raw_user.send("*", XSS)
    send_from_browser(alice, "*", "Two lines:\nthis is the second")
    raw_user.send("alice", "psst, a direct message")
    terminal_user.send("bob", "a direct one for bob")
    for page in (alice, bob):
        open_conversation(page, "*")
        expect(log_of(page)).to_contain_text("this is the second")
    conversations = alice.get_by_role("navigation", name="Conversations")
    expect(conversations.get_by_role("button", name="dave 1 unread")).to_be_visible()
    alice.screenshot(path=results_dir / "room.png")
    bob.screenshot(path=results_dir / "room-375.png")
    assert (results_dir / "room.png").stat().st_size > 0
    assert (results_dir / "room-375.png").stat().st_size > 0
