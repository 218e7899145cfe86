"""Nothing forgotten (docs/history-and-sessions.md), in the browser: a reload or a lost network
takes the session back without the join form, conversations and unread counts come back from
the server, earlier history loads on scrolling up, and search finds old messages."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from playwright.sync_api import Locator, Page, WebSocketRoute, expect

from tests.e2e.conftest import BrowserUsers, RawUser, RestartableCore
from tests.e2e.test_chat import expect_in_browser, log_of, open_conversation, send_from_browser

pytestmark = pytest.mark.e2e

# docs/history-and-sessions.md, "Dead peers": the gateway pings every 10 s and closes a
# websocket without a pong for 20 s, so a vanished browser is away within 30 s.
DEAD_PEER_S = 30.0
RECONNECT_S = 20.0  # back online, the page's backoff (at most 15 s) decides how soon it returns


def conversations_of(page: Page) -> Locator:
    return page.get_by_role("navigation", name="Conversations")


def users_list(page: Page) -> Locator:
    return page.get_by_role("list", name="Users")


def expect_online(page: Page, name: str, timeout_s: float = 10.0) -> None:
    expect(page.get_by_role("status")).to_have_text(f"Online as {name}",
                                                    timeout=timeout_s * 1000)


def test_reload_keeps_the_name_conversations_and_unread_counts(
    users: BrowserUsers, raw_user: RawUser
) -> None:
    alice = users.join("alice")
    raw_user.wait_event("joined", "alice")
    send_from_browser(alice, "*", "hello before the reload")
    raw_user.send("alice", "one")
    raw_user.send("alice", "two")
    expect(conversations_of(alice).get_by_role("button", name="dave 2 unread")).to_be_visible()
    alice.reload()
    expect_online(alice, "alice")
    expect(alice.get_by_label("Username")).to_be_hidden()
    expect(conversations_of(alice).get_by_role("button", name="dave 2 unread")).to_be_visible()
    expect(log_of(alice).locator(".entry.out .text")).to_have_text(["hello before the reload"])
    conversations_of(alice).get_by_role("button", name="dave 2 unread").click()
    expect(log_of(alice).locator(".entry.in .text")).to_have_text(["one", "two"])
    # The same session all along: the others never saw alice leave or join; away and back if
    # the old page's connection ended before the new page resumed (else the resume took the
    # session from it and nobody saw a thing).
    raw_user.users()  # what the core sent before this reply is in the inbox now
    assert raw_user.events_about("alice") in (["away", "back"], [])


def is_reply(kind: str, conversation: str) -> Callable[[str | bytes], bool]:
    """A predicate for websocket frames: the server's reply `kind` about `conversation`."""

    def matches(frame: str | bytes) -> bool:
        obj = json.loads(frame)
        return bool(obj.get("type") == kind and obj.get("with") == conversation)

    return matches


def test_conversation_read_before_a_reload_stays_read(
    users: BrowserUsers, raw_user: RawUser
) -> None:
    alice = users.open()
    with alice.expect_websocket() as opened:
        alice.get_by_label("Username").fill("alice")
        alice.get_by_role("button", name="Join").click()
    websocket = opened.value
    expect_online(alice, "alice")
    raw_user.send("alice", "read me")
    with websocket.expect_event("framereceived", predicate=is_reply("read", "dave")):
        conversations_of(alice).get_by_role("button", name="dave 1 unread").click()
    expect(log_of(alice)).to_contain_text("read me")
    alice.reload()
    expect_online(alice, "alice")
    dave = conversations_of(alice).get_by_role("button", name="dave")
    expect(dave).to_have_attribute("aria-current", "true")  # the conversation shown stays shown
    expect(dave).not_to_contain_text("unread")
    expect(log_of(alice).locator(".entry.in .text")).to_have_text(["read me"])


def test_message_sent_while_the_tab_reloads_shows_after_the_reload(
    users: BrowserUsers, raw_user: RawUser
) -> None:
    alice = users.join("alice")
    raw_user.send("alice", "before")
    expect_in_browser(alice, "dave", "dave", "before")
    # Between unloading and loading the page again: the tab is away.
    alice.goto("about:blank")
    raw_user.wait_event("away", "alice")
    raw_user.send("alice", "while you were reloading")
    alice.goto(users.url + "/")
    expect_online(alice, "alice")
    # The tab showed dave's conversation: it shows it again, the new message after the old.
    expect(log_of(alice).locator(".entry.in .text")).to_have_text(
        ["before", "while you were reloading"])


def test_leave_ends_the_session_and_a_reload_shows_the_join_form(
    users: BrowserUsers, raw_user: RawUser
) -> None:
    alice = users.join("alice")
    alice.get_by_role("button", name="Leave").click()
    expect(alice.get_by_label("Username")).to_be_visible()
    raw_user.wait_event("left", "alice")
    assert alice.evaluate("() => sessionStorage.getItem('chatroom.session')") is None
    alice.reload()
    expect(alice.get_by_label("Username")).to_be_visible()
    expect(alice.get_by_role("status")).to_have_text("Not connected")


@pytest.mark.parametrize("core_options", [{"resume_grace": 0}])
def test_expired_session_joins_again_under_the_same_name_and_says_so(
    users: BrowserUsers, raw_user: RawUser
) -> None:
    # With no grace, leaving the page without exit ends the session: coming back, the resume
    # gets session_expired, and the page starts a new session under the same name.
    alice = users.join("alice")
    raw_user.wait_event("joined", "alice")
    raw_user.send("alice", "from the old session")
    expect(conversations_of(alice).get_by_role("button", name="dave 1 unread")).to_be_visible()
    alice.goto("about:blank")
    raw_user.wait_event("left", "alice")
    alice.goto(users.url + "/")
    expect_online(alice, "alice")
    expect(alice.locator("#notice")).to_contain_text("earlier session had ended")
    raw_user.wait_event("joined", "alice")
    # A new session does not see the old one's direct messages.
    expect(conversations_of(alice).get_by_role("button", name="dave")).to_have_count(0)


def test_tab_offline_goes_away_within_30_s_and_back_online_shows_what_it_missed(
    users: BrowserUsers, raw_user: RawUser, results_dir: Path
) -> None:
    alice = users.join("alice")
    bob = users.join("bob")
    expect(users_list(bob).get_by_role("listitem")).to_have_count(3)
    alice.context.set_offline(True)
    started = time.monotonic()
    away = users_list(bob).get_by_role("listitem").filter(has_text="alice")
    expect(away).to_contain_text("away", timeout=(DEAD_PEER_S + 5) * 1000)
    bob.screenshot(path=results_dir / "away.png")
    raw_user.wait_event("away", "alice", timeout=5)
    assert time.monotonic() - started <= DEAD_PEER_S + 5
    # An away user can be written to: the server keeps the messages for the session.
    send_from_browser(bob, "alice", "for you while you were offline")
    raw_user.send("*", "to everyone while alice was offline")
    alice.context.set_offline(False)
    expect_online(alice, "alice", RECONNECT_S)
    expect_in_browser(alice, "bob", "bob", "for you while you were offline")
    expect_in_browser(alice, "*", "dave", "to everyone while alice was offline")
    expect(away).not_to_contain_text("away")
    raw_user.wait_event("back", "alice")


def test_search_finds_an_old_message_with_sender_conversation_and_time(
    users: BrowserUsers, raw_user: RawUser, results_dir: Path
) -> None:
    raw_user.send("*", "the quarterly report is due friday")
    raw_user.send("*", "something else entirely")
    alice = users.join("alice")
    raw_user.send("alice", "<b>friday</b> lunch?")
    search = alice.get_by_role("searchbox", name="Search")
    search.fill("friday")
    search.press("Enter")
    results = alice.get_by_role("list", name="Search results").get_by_role("listitem")
    expect(results).to_have_count(2)
    # Newest first: the direct message, then the one to everyone from before alice joined.
    expect(results.nth(0)).to_contain_text("dave")
    expect(results.nth(0)).to_contain_text("with dave")
    expect(results.nth(0)).to_contain_text("<b>friday</b> lunch?")
    expect(results.nth(1)).to_contain_text("to everyone")
    expect(results.nth(1)).to_contain_text("the quarterly report is due friday")
    expect(results.nth(1).locator("time")).to_have_attribute("datetime", re.compile(r"^\d{4}-"))
    assert alice.locator("#search-results b").count() == 0
    alice.screenshot(path=results_dir / "search.png")
    results.nth(1).get_by_role("button").click()
    expect(alice.get_by_role("heading", name="Everyone")).to_be_visible()
    search.fill("nothing like this")
    search.press("Enter")
    expect(alice.locator("#search-status")).to_contain_text("No messages match")
    expect(results).to_have_count(0)


def test_scrolling_up_loads_earlier_history(
    users: BrowserUsers, raw_user: RawUser, core: RestartableCore
) -> None:
    # Two senders, each within the core's burst of requests (60 at once).
    erin = RawUser(core.address, "erin")
    try:
        for number in range(70):
            (raw_user if number < 35 else erin).send("*", f"old message {number:02d}")
    finally:
        erin.close()
    alice = users.join("alice")
    entries = log_of(alice).locator(".entry .text")
    # The newest page (50) comes with the join; the rest waits until alice scrolls up.
    expect(entries).to_have_count(50)
    expect(entries.first).to_have_text("old message 20")
    expect(entries.last).to_have_text("old message 69")
    log_of(alice).hover()
    for _ in range(20):
        alice.mouse.wheel(0, -2000)
        if entries.count() == 70:
            break
        alice.wait_for_timeout(100)  # one wheel step at a time, as a user scrolls
    expect(entries).to_have_count(70)
    expect(entries.first).to_have_text("old message 00")
    expect(entries.nth(20)).to_have_text("old message 20")
    expect(alice.get_by_role("button", name="Load earlier messages")).to_be_hidden()


def test_core_restart_resumes_the_session_and_delivers_what_was_sent_meanwhile(
    users: BrowserUsers, core: RestartableCore
) -> None:
    alice = users.join("alice")
    open_conversation(alice, "*")
    core.stop()
    expect(alice.get_by_role("status")).to_contain_text("Reconnecting")
    core.start()
    expect_online(alice, "alice", 30)
    dave = RawUser(core.address, "dave")
    try:
        dave.send("alice", "after the restart")
        expect_in_browser(alice, "dave", "dave", "after the restart")
    finally:
        dave.close()


@pytest.mark.slow
def test_a_silently_dead_connection_is_replaced_and_misses_nothing(
    users: BrowserUsers, raw_user: RawUser
) -> None:
    # Playwright relays the page's websocket; "dead" drops every frame both ways while the
    # sockets stay open, as on a network that vanished without a reset.
    lines: list[dict[str, bool]] = []

    def relay(page_side: WebSocketRoute) -> None:
        line = {"dead": False}
        lines.append(line)
        server_side = page_side.connect_to_server()
        page_side.on_message(lambda frame: None if line["dead"] else server_side.send(frame))
        server_side.on_message(lambda frame: None if line["dead"] else page_side.send(frame))

    alice = users.open()
    alice.route_web_socket(re.compile(r"/ws$"), relay)
    alice.reload()  # the route takes effect in pages loaded after it
    alice.get_by_label("Username").fill("alice")
    alice.get_by_role("button", name="Join").click()
    expect_online(alice, "alice")
    assert len(lines) == 1, "the page's websocket is not relayed"
    # Every text the status line shows from now on (the reconnect may take only moments).
    alice.evaluate("""() => {
        const status = document.getElementById("status");
        window.statusTexts = [];
        new MutationObserver(() => statusTexts.push(status.textContent))
            .observe(status, { childList: true, characterData: true, subtree: true });
    }""")
    for line in lines:
        line["dead"] = True
    raw_user.send("alice", "while the line was dead")
    # No pong within 10 s of a ping (one every 10 s): the page gives the connection up.
    alice.wait_for_function(
        "() => statusTexts.some((text) => text.includes('no answer from the server'))",
        timeout=DEAD_PEER_S * 1000,
    )
    expect_online(alice, "alice", RECONNECT_S)
    expect_in_browser(alice, "dave", "dave", "while the line was dead")
    assert len(lines) == 2


def test_leave_while_disconnected_frees_the_name_at_once(
    users: BrowserUsers, raw_user: RawUser
) -> None:
    alice = users.join("alice")
    raw_user.wait_event("joined", "alice")
    # The browser says the network is gone (only the event: the network itself still works,
    # as when it comes back a moment later): the page gives its socket up and waits.
    alice.evaluate("() => window.dispatchEvent(new Event('offline'))")
    raw_user.wait_event("away", "alice")
    expect(alice.get_by_role("status")).to_contain_text("the network is offline")
    # Leave now: the page ends the session on a socket of its own.
    alice.get_by_role("button", name="Leave").click()
    expect(alice.get_by_label("Username")).to_be_visible()
    raw_user.wait_event("left", "alice")
    users.join("alice")  # the name is free again, not reserved for the grace
