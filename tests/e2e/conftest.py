"""Fixtures of the browser tests: Debian's Chromium for pytest-playwright (see
/work/shared/NOTES-playwright.md), and the real system: a core that can be stopped and started
again on its port, the real web gateway in-process on a free port, and one browser context per
simulated user.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext, ConsoleMessage, Page, expect

from tcp_server.server import ChatServer
from tests.support.core import WAIT_S, RawClient, running_server
from tests.support.gateway import running_gateway
from web_gateway import GatewayConfig

ROOT = Path(__file__).resolve().parents[2]
STATIC_DIR = ROOT / "static"
RESULTS_DIR = ROOT / "test-results"
SECRET = "e2e-gateway-secret"

# Debian's chromium: Playwright cannot download its own browsers on this kind of machine.
# Elsewhere (a laptop), no chromium found means Playwright's own browser is used.
CHROMIUM = os.environ.get("CHROMIUM_PATH") or shutil.which("chromium")


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args: dict[str, Any]) -> dict[str, Any]:
    if not CHROMIUM:
        return browser_type_launch_args
    return {
        **browser_type_launch_args,
        "executable_path": CHROMIUM,
        "args": ["--no-sandbox", "--disable-gpu", "--disable-quic"],
    }


@pytest.fixture(scope="session")
def base_url() -> str | None:
    """No session-wide address: every test starts its own gateway and opens its contexts on it
    (see `open_user`). Defining it here also replaces pytest-playwright's own base_url fixture,
    which pytest 9 warns about."""
    return None


class RestartableCore:
    """A real core on a free port that a test can stop and start again on that same port; with a
    `data_dir`, on the same store each time (so sessions and history outlive a restart),
    otherwise on a new empty one."""

    def __init__(self, data_dir: Path | None = None, **options: Any) -> None:
        self.port = 0
        self._data_dir = data_dir
        self._options = options
        self._running: contextlib.ExitStack | None = None
        self.server: ChatServer | None = None

    @property
    def address(self) -> tuple[str, int]:
        return "127.0.0.1", self.port

    def start(self) -> None:
        assert self._running is None, "already running"
        with contextlib.ExitStack() as stack:
            self.server = stack.enter_context(
                running_server(
                    gateway_secret=SECRET,
                    port=self.port,
                    data_dir=None if self._data_dir is None else str(self._data_dir),
                    **self._options,
                )
            )
            self.port = self.server.address[1]
            self._running = stack.pop_all()

    def stop(self) -> None:
        """Stop serving (everyone connected gets a bye) and join the server's thread."""
        if self._running is not None:
            running, self._running = self._running, None
            running.close()


@pytest.fixture
def core_options() -> dict[str, Any]:
    """ServerConfig fields for the core; a test parametrizes this name to change them."""
    return {}


@pytest.fixture
def core(tmp_path: Path, core_options: dict[str, Any]) -> Iterator[RestartableCore]:
    core = RestartableCore(tmp_path / "core-data", **core_options)
    core.start()
    try:
        yield core
    finally:
        core.stop()


@pytest.fixture
def gateway_url(core: RestartableCore) -> Iterator[str]:
    """The real web gateway, in-process on a free port, relaying to `core`; its http:// URL."""
    config = GatewayConfig(
        core_host=core.address[0],
        core_port=core.port,
        gateway_secret=SECRET,
        static_dir=STATIC_DIR,
    )
    with running_gateway(config) as gateway:
        yield gateway.http


class BrowserUsers:
    """Opens the chat page in a new browser context per simulated user, and closes them all.

    JavaScript errors, Content-Security-Policy violations and alert()/confirm() dialogs on any
    page are recorded: a test about markup in messages checks that no dialog opened, and
    teardown fails on any page error or CSP violation.
    """

    def __init__(self, browser: Browser, url: str) -> None:
        self._browser = browser
        self.url = url
        self.contexts: list[BrowserContext] = []
        self.page_errors: list[str] = []
        self.dialogs: list[str] = []

    def open(self, viewport: dict[str, int] | None = None) -> Page:
        """A new user's page at the join form."""
        context = self._browser.new_context(
            base_url=self.url, viewport=viewport or {"width": 1100, "height": 720}
        )
        self.contexts.append(context)
        page = context.new_page()
        page.on("pageerror", lambda error: self.page_errors.append(str(error)))
        page.on("console", self._on_console)

        def on_dialog(dialog: Any) -> None:
            self.dialogs.append(dialog.message)
            dialog.dismiss()

        page.on("dialog", on_dialog)
        page.goto("/")
        return page

    def _on_console(self, message: ConsoleMessage) -> None:
        if message.type == "error" and "Content Security Policy" in message.text:
            self.page_errors.append(message.text)

    def join(self, name: str, viewport: dict[str, int] | None = None) -> Page:
        """A new user's page, joined as `name` and online."""
        page = self.open(viewport)
        page.get_by_label("Username").fill(name)
        page.get_by_role("button", name="Join").click()
        expect(page.get_by_role("status")).to_have_text(f"Online as {name}")
        return page

    def close(self) -> None:
        for context in self.contexts:
            context.close()


@pytest.fixture
def users(browser: Browser, gateway_url: str) -> Iterator[BrowserUsers]:
    users = BrowserUsers(browser, gateway_url)
    try:
        yield users
    finally:
        users.close()
    assert users.page_errors == [], f"JavaScript errors: {users.page_errors}"


@pytest.fixture
def results_dir() -> Path:
    """test-results/ (gitignored), where screenshots are kept for a look by eye."""
    RESULTS_DIR.mkdir(exist_ok=True)
    return RESULTS_DIR


class RawUser:
    """A raw protocol-v1 client that keeps the events it reads while waiting for replies."""

    def __init__(self, address: tuple[str, int], name: str) -> None:
        self.name = name
        self.client = RawClient(address)
        self.client.hello(name)
        self.inbox: list[dict[str, Any]] = []
        self._ids = itertools.count(1)

    def close(self) -> None:
        self.client.close()

    def request(self, kind: str, **fields: Any) -> dict[str, Any]:
        request_id = f"raw{next(self._ids)}"
        self.client.send(type=kind, id=request_id, **fields)
        deadline = time.monotonic() + WAIT_S
        while True:
            obj = self.client.recv(max(0.01, deadline - time.monotonic()))
            if obj.get("id") == request_id:
                return obj
            self.inbox.append(obj)

    def users(self) -> list[dict[str, Any]]:
        reply = self.request("list")
        assert reply["type"] == "users", reply
        users: list[dict[str, Any]] = reply["users"]
        return users

    def send(self, to: str, text: str) -> dict[str, Any]:
        reply = self.request("send", to=to, text=text)
        assert reply["type"] == "sent", reply
        return reply

    def wait_event(self, kind: str, name: str, timeout: float = WAIT_S) -> dict[str, Any]:
        """The event `kind` (joined, away, back, left) about `name`, read now or earlier."""
        deadline = time.monotonic() + timeout
        while True:
            for obj in self.inbox:
                if obj.get("type") == kind and obj.get("name") == name:
                    self.inbox.remove(obj)
                    return obj
            self.inbox.append(self.client.recv(max(0.01, deadline - time.monotonic())))

    def events_about(self, name: str) -> list[str]:
        """The types of the presence events about `name` read so far, in order."""
        kinds = ("joined", "away", "back", "left")
        return [o["type"] for o in self.inbox if o.get("type") in kinds and o.get("name") == name]

    def wait_message(self, sender: str, text: str) -> dict[str, Any]:
        """The message event from `sender` with `text`, read now or earlier."""
        deadline = time.monotonic() + WAIT_S
        while True:
            for obj in self.inbox:
                if obj.get("type") == "message" and obj["from"] == sender and obj["text"] == text:
                    self.inbox.remove(obj)
                    return obj
            self.inbox.append(self.client.recv(max(0.01, deadline - time.monotonic())))


@pytest.fixture
def raw_user(core: RestartableCore) -> Iterator[RawUser]:
    user = RawUser(core.address, "dave")
    try:
        yield user
    finally:
        user.close()
