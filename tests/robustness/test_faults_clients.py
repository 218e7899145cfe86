"""Faults under real clients: the core or the gateway restarted beneath browsers and terminals,
and what a browser shows for text that tries to break it.

Browsers are headless Chromium pages on the real frontend through the real gateway (in-process,
restartable on its port); terminal users are the real `chat-client` process; raw users speak
protocol v1 over a socket.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import replace

import pytest
from flask import Flask
from playwright.sync_api import Browser, Page, expect
from werkzeug.serving import BaseWSGIServer, make_server

from tests.e2e.conftest import SECRET, STATIC_DIR, BrowserUsers, RestartableCore
from tests.e2e.test_chat import expect_in_browser, log_of, send_from_browser, users_list
from tests.support.chat_client_process import ChatClientProcess
from tests.support.core import WAIT_S, wait_until
from tests.support.gateway import relay_threads
from tests.support.robustness import CollectingClient
from web_gateway import create_app, gateway_of
from web_gateway.config import GatewayConfig

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

RECOVERY_S = 30.0  # the browsers' reconnect backoff decides how soon they are back


class RestartableGateway:
    """The real gateway in-process, which a test can stop and start again on the same port."""

    def __init__(self, core: RestartableCore) -> None:
        self._config = GatewayConfig(core_host=core.address[0], core_port=core.port,
                                     gateway_secret=SECRET, static_dir=STATIC_DIR)
        self.port = 0
        self._server: BaseWSGIServer | None = None
        self._app: Flask | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        assert self._server is None, "already running"
        app = create_app(replace(self._config, host="127.0.0.1", port=self.port))
        self._server = make_server("127.0.0.1", self.port, app, threaded=True)
        self.port = self._server.server_port
        self._app = app
        thread = threading.Thread(target=self._server.serve_forever, name="test-gateway")
        thread.start()
        self._thread = thread

    def stop(self) -> None:
        """Like a stopping gateway process: every websocket ends with a reason, then the port
        closes."""
        if self._server is None or self._app is None or self._thread is None:
            return
        relays = gateway_of(self._app).relays
        relays.stop_all()
        idle = relays.wait_stopped(WAIT_S)
        self._server.shutdown()
        self._thread.join(WAIT_S)
        self._server.server_close()
        self._server = None
        assert idle, "websockets still open after stop_all()"
        wait_until(lambda: not relay_threads(), what="relay threads to end")


@pytest.fixture
def core() -> Iterator[RestartableCore]:
    core = RestartableCore()
    core.start()
    try:
        yield core
    finally:
        core.stop()


@pytest.fixture
def gateway(core: RestartableCore) -> Iterator[RestartableGateway]:
    gateway = RestartableGateway(core)
    gateway.start()
    try:
        yield gateway
    finally:
        gateway.stop()


@pytest.fixture
def users(browser: Browser, gateway: RestartableGateway) -> Iterator[BrowserUsers]:
    users = BrowserUsers(browser, gateway.url)
    try:
        yield users
    finally:
        users.close()
    assert users.page_errors == [], f"JavaScript errors: {users.page_errors}"


@contextlib.contextmanager
def terminal(core: RestartableCore, name: str) -> Iterator[ChatClientProcess]:
    with ChatClientProcess(core.address, name) as client:
        client.wait_for(f"Welcome, {name}!")
        yield client


@contextlib.contextmanager
def raw(core: RestartableCore, name: str) -> Iterator[CollectingClient]:
    with CollectingClient(core.address, name) as client:
        client.hello(name)
        yield client


def expect_online(page: Page, name: str) -> None:
    expect(page.get_by_role("status")).to_have_text(f"Online as {name}",
                                                    timeout=RECOVERY_S * 1000)


def raw_message(client: CollectingClient, sender: str, text: str) -> dict[str, object]:
    return client.wait_for(
        lambda o: o["type"] == "message" and o["from"] == sender and o["text"] == text,
        what=f"{sender}'s message",
    )


# --- restarts ----------------------------------------------------------------------------------


def test_core_restart_tells_browsers_terminals_and_raw_clients_and_they_recover(
    core: RestartableCore, users: BrowserUsers
) -> None:
    alice, bob = users.join("alice"), users.join("bob")
    with terminal(core, "carol") as carol, CollectingClient(core.address, "dave") as dave:
        dave.hello("dave")
        expect(users_list(alice).get_by_role("listitem")).to_have_count(4)

        core.stop()
        # Everyone is told, each in its own way.
        dave.wait_closed()
        bye = dave.last()
        assert bye is not None
        assert bye["type"] == "bye"
        assert bye.get("reason")
        carol.wait_for("The server is closing the connection: server shutting down")
        # The terminal client tries to take its session back; its input ending while the
        # core is down ends it without a goodbye.
        carol.wait_for("Connection to the server lost; reconnecting...")
        assert carol.close() == 1  # lost, not a goodbye
        for page in (alice, bob):
            expect(page.get_by_role("status")).to_have_attribute("data-status", "reconnecting")

        core.start()
        # Browsers come back by themselves; a terminal user starts chat-client again.
        for page, name in ((alice, "alice"), (bob, "bob")):
            expect_online(page, name)
        with terminal(core, "carol") as carol_again, raw(core, "dave") as dave_again:
            for page in (alice, bob):
                expect(users_list(page).get_by_role("listitem")).to_have_count(4)
            send_from_browser(alice, "carol", "welcome back, carol")
            carol_again.wait_for("alice (to you): welcome back, carol")
            carol_again.send("*", "hello again, everyone")
            expect_in_browser(bob, "*", "carol", "hello again, everyone")
            raw_message(dave_again, "carol", "hello again, everyone")
            dave_again.send(type="send", to="bob", text="dave is back", id="back")
            dave_again.wait_for(lambda o: o.get("id") == "back" and o["type"] == "sent")
            expect_in_browser(bob, "dave", "dave", "dave is back")


def test_gateway_restart_reconnects_the_browsers_and_the_terminals_see_them_return(
    core: RestartableCore, gateway: RestartableGateway, users: BrowserUsers
) -> None:
    alice, bob = users.join("alice"), users.join("bob")
    with terminal(core, "carol") as carol, raw(core, "dave") as dave:
        expect(users_list(alice).get_by_role("listitem")).to_have_count(4)

        gateway.stop()
        for page in (alice, bob):
            expect(page.get_by_role("status")).to_have_attribute("data-status", "reconnecting")
        # A gateway restart is a disconnect without exit (docs/history-and-sessions.md): the
        # browsers' sessions wait for them, shown away, and their names stay reserved.
        dave.wait_until(
            lambda got: {o["name"] for o in got if o["type"] == "away"} == {"alice", "bob"},
            WAIT_S, "told that both browsers are away",
        )
        dave.send(type="list", id="away")
        away = dave.wait_for(lambda o: o.get("id") == "away")
        assert [(u["name"], u["status"]) for u in away["users"]] == [
            ("alice", "away"), ("bob", "away"), ("carol", "online"), ("dave", "online")
        ]
        carol.send("alice", "sent while the gateway was down")

        gateway.start()
        for page, name in ((alice, "alice"), (bob, "bob")):
            expect_online(page, name)
        dave.wait_until(
            lambda got: {o["name"] for o in got if o["type"] == "back"} == {"alice", "bob"},
            RECOVERY_S, "told that both browsers are back",
        )
        assert not [o for o in dave.snapshot() if o["type"] in ("left", "joined")]
        # What was sent to the away session reached the page once it resumed.
        expect_in_browser(alice, "carol", "carol", "sent while the gateway was down")
        carol.send("alice", "you are back")
        expect_in_browser(alice, "carol", "carol", "you are back")
        send_from_browser(bob, "dave", "through the new gateway")
        raw_message(dave, "bob", "through the new gateway")
        dave.send(type="list", id="all")
        everyone = dave.wait_for(lambda o: o.get("id") == "all")
        assert [(u["name"], u["via"]) for u in everyone["users"]] == [
            ("alice", "web"), ("bob", "web"), ("carol", "tcp"), ("dave", "tcp")
        ]


# --- what a browser shows ----------------------------------------------------------------------

LONG_TEXT = ("x" * 1_000 + " ") * 3 + "y" * 997  # 4,000 characters, words wider than a screen
RTL_EMOJI = "שלום עולם! مرحبا بالعالم 👋🏽 👨‍👩‍👧 🇫🇷 \u202eevil\u202c done"
HTML_LOOKING = '<script>alert(1)</script><iframe src="javascript:alert(2)"></iframe> &lt;b&gt;'


def text_of_last_entry(page: Page) -> str:
    return log_of(page).locator(".entry .text").last.inner_text()


def test_message_of_4000_characters_shows_whole_and_fits_the_screen(
    core: RestartableCore, users: BrowserUsers
) -> None:
    assert len(LONG_TEXT) == 4_000
    alice = users.join("alice")
    with raw(core, "dave") as dave:
        dave.send(type="send", to="alice", text=LONG_TEXT)
        expect_in_browser(alice, "dave", "dave", "y" * 997)
        assert text_of_last_entry(alice) == LONG_TEXT
        # Long words wrap inside the log instead of widening the page.
        assert alice.evaluate(
            "document.documentElement.scrollWidth <= document.documentElement.clientWidth"
        )
        send_from_browser(alice, "dave", LONG_TEXT)
        raw_message(dave, "alice", LONG_TEXT)


def test_message_of_4001_characters_is_refused_in_the_browser_and_not_sent(
    core: RestartableCore, users: BrowserUsers
) -> None:
    alice = users.join("alice")
    with raw(core, "dave") as dave:
        box = alice.get_by_label("Message", exact=True)
        alice.get_by_label("To", exact=True).select_option("dave")
        box.fill(LONG_TEXT + "z")
        box.press("Enter")
        expect(alice.get_by_text("A message is at most 4,000 characters.")).to_be_visible()
        send_from_browser(alice, "dave", "a short one")
        raw_message(dave, "alice", "a short one")
        assert [o for o in dave.snapshot() if o["type"] == "message"] == [
            o for o in dave.snapshot() if o["type"] == "message" and o["text"] == "a short one"
        ]


def test_right_to_left_and_emoji_text_shows_exactly_and_reads_right_to_left(
    core: RestartableCore, users: BrowserUsers
) -> None:
    alice = users.join("alice")
    with raw(core, "dave") as dave:
        dave.send(type="send", to="*", text=RTL_EMOJI)
        expect_in_browser(alice, "*", "dave", "done")
        text = log_of(alice).locator(".entry .text").last
        # Exactly, but for the override, shown escaped (it would make "evil" read "live").
        assert text.inner_text() == RTL_EMOJI.replace("\u202e", "\\u202e").replace(
            "\u202c", "\\u202c")
        # Its direction comes from its own first strong character, not from the page: Hebrew
        # first means right to left.
        assert text.evaluate("node => getComputedStyle(node).direction") == "rtl"
        expect(log_of(alice).locator(".entry .from").last).to_have_text("dave")
        send_from_browser(alice, "dave", RTL_EMOJI)
        raw_message(dave, "alice", RTL_EMOJI)
        dave.send(type="send", to="alice", text="plain English")
        expect_in_browser(alice, "dave", "dave", "plain English")
        last = log_of(alice).locator(".entry .text").last
        assert last.evaluate("node => getComputedStyle(node).direction") == "ltr"


def test_html_looking_text_shows_literally_and_runs_nothing(
    core: RestartableCore, users: BrowserUsers
) -> None:
    alice = users.join("alice")
    with raw(core, "dave") as dave:
        dave.send(type="send", to="alice", text=HTML_LOOKING)
        expect_in_browser(alice, "dave", "dave", "&lt;b&gt;")
        assert text_of_last_entry(alice) == HTML_LOOKING
        assert alice.locator("#log script, #log iframe, iframe").count() == 0
        send_from_browser(alice, "*", HTML_LOOKING)
        raw_message(dave, "alice", HTML_LOOKING)
    assert users.dialogs == []


def test_name_clash_with_a_terminal_user_in_another_case_is_refused_beside_the_field(
    core: RestartableCore, users: BrowserUsers
) -> None:
    with terminal(core, "Carol"):
        page = users.open()
        page.get_by_label("Username").fill("carol")
        page.get_by_role("button", name="Join").click()
        expect(page.get_by_text("the name carol is taken")).to_be_visible()
        expect(page.get_by_label("Username")).to_be_visible()
        page.get_by_label("Username").fill("carol2")
        page.get_by_role("button", name="Join").click()
        expect_online(page, "carol2")
        expect(users_list(page).get_by_role("listitem")).to_have_count(2)


def test_two_browsers_racing_for_one_name_get_it_once(users: BrowserUsers) -> None:
    pages = [users.open(), users.open()]
    for page in pages:
        page.get_by_label("Username").fill("zoe")
    for page in pages:
        page.get_by_role("button", name="Join").click()
    statuses = [page.get_by_role("status") for page in pages]
    wait_until(
        lambda: sum("Online as zoe" in s.inner_text() for s in statuses) == 1
        and any(p.get_by_text("the name zoe is taken").is_visible() for p in pages),
        timeout=WAIT_S, what="one browser to win the name and the other to be told",
    )
