"""The room's layout at a desktop and a phone width: nothing a user types or the server lists may
push the page wider than the screen or out of reach. Screenshots go to test-results/ for a look
by eye."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests.e2e.conftest import BrowserUsers, RawUser, RestartableCore

pytestmark = pytest.mark.e2e

DESKTOP = {"width": 1200, "height": 720}
PHONE = {"width": 375, "height": 740}
VIEWPORTS = {"1200": DESKTOP, "375": PHONE}

# What a new user pasted: a long link, and a text one over the limit, neither with a break.
UNBROKEN_TEXTS = {
    "long-url": "https://example.com/" + "a" * 100,
    "4001-chars": "x" * 4001,
}


def page_width(page: Page) -> int:
    width: int = page.evaluate("() => document.documentElement.scrollWidth")
    return width


def window_width(page: Page) -> int:
    width: int = page.evaluate("() => window.innerWidth")
    return width


@pytest.mark.parametrize("viewport", VIEWPORTS, ids=list(VIEWPORTS))
@pytest.mark.parametrize("text", UNBROKEN_TEXTS, ids=list(UNBROKEN_TEXTS))
def test_unbroken_text_in_the_message_box_keeps_the_page_as_wide_as_the_screen(
    users: BrowserUsers, results_dir: Path, viewport: str, text: str
) -> None:
    page = users.join("alice", viewport=VIEWPORTS[viewport])
    box = page.get_by_label("Message", exact=True)
    box.fill(UNBROKEN_TEXTS[text])
    expect(box).to_have_value(UNBROKEN_TEXTS[text])
    page.screenshot(path=results_dir / f"unbroken-{text}-{viewport}.png")
    assert page_width(page) <= window_width(page)
    expect(page.get_by_role("button", name="Send")).to_be_in_viewport()
    expect(box).to_be_in_viewport()


@pytest.fixture
def many_raw_users(core: RestartableCore) -> Iterator[list[RawUser]]:
    """Twelve users on raw sockets: more than a phone's sidebar shows at once."""
    crowd: list[RawUser] = []
    try:
        for number in range(12):
            crowd.append(RawUser(core.address, f"user{number:02d}"))
        yield crowd
    finally:
        for user in crowd:
            user.close()


def test_every_user_in_a_long_list_can_be_reached_on_a_phone(
    users: BrowserUsers, many_raw_users: list[RawUser], results_dir: Path
) -> None:
    page = users.join("alice", viewport=PHONE)
    items = page.get_by_role("list", name="Users").get_by_role("listitem")
    expect(items).to_have_count(len(many_raw_users) + 1)
    page.screenshot(path=results_dir / "users-375.png")
    last = items.last
    last.scroll_into_view_if_needed()
    expect(last).to_be_in_viewport(ratio=1)
    # Reaching the last user must not push the conversation itself off the screen.
    expect(page.get_by_role("button", name="Send")).to_be_in_viewport()
    last.get_by_role("button", name="user11").click()
    expect(page.get_by_role("heading", name="user11")).to_be_visible()
    page.screenshot(path=results_dir / "users-375-scrolled.png")


@pytest.fixture
def three_raw_users(core: RestartableCore) -> Iterator[list[RawUser]]:
    """A small room: three more users, on raw sockets."""
    crowd: list[RawUser] = []
    try:
        for name in ("bob", "carol", "dave"):
            crowd.append(RawUser(core.address, name))
        yield crowd
    finally:
        for user in crowd:
            user.close()


LONG_NAME = "a_very-long_user_name_of_32_chrs"  # as long as a name may be, without a break


@pytest.fixture
def long_named_user(core: RestartableCore) -> Iterator[RawUser]:
    user = RawUser(core.address, LONG_NAME)
    try:
        yield user
    finally:
        user.close()


def test_a_small_room_shows_every_user_whole_on_a_phone(
    users: BrowserUsers, three_raw_users: list[RawUser], results_dir: Path
) -> None:
    page = users.join("alice", viewport=PHONE)
    items = page.get_by_role("list", name="Users").get_by_role("listitem")
    expect(items).to_have_count(4)
    page.screenshot(path=results_dir / "small-room-375.png")
    for index in range(4):
        expect(items.nth(index)).to_be_in_viewport(ratio=1)


@pytest.mark.parametrize("viewport", VIEWPORTS, ids=list(VIEWPORTS))
def test_a_long_user_name_shows_whole_in_the_users_list(
    users: BrowserUsers, long_named_user: RawUser, viewport: str, results_dir: Path
) -> None:
    page = users.join("alice", viewport=VIEWPORTS[viewport])
    name = page.get_by_role("list", name="Users").get_by_role("button", name=LONG_NAME)
    expect(name).to_be_visible()
    page.screenshot(path=results_dir / f"long-name-{viewport}.png")
    # An ellipsis would hide the end: the text must fit the box it is drawn in.
    clipped = name.evaluate("(node) => node.scrollWidth > node.clientWidth")
    assert clipped is False
    assert page_width(page) <= window_width(page)


@pytest.mark.parametrize("viewport", VIEWPORTS, ids=list(VIEWPORTS))
def test_search_results_with_unbroken_text_keep_the_page_as_wide_as_the_screen(
    users: BrowserUsers, long_named_user: RawUser, viewport: str, results_dir: Path
) -> None:
    long_named_user.send("*", "needle " + UNBROKEN_TEXTS["long-url"])
    page = users.join("alice", viewport=VIEWPORTS[viewport])
    search = page.get_by_role("searchbox", name="Search")
    search.fill("needle")
    search.press("Enter")
    result = page.get_by_role("list", name="Search results").get_by_role("listitem")
    expect(result).to_have_count(1)
    result.scroll_into_view_if_needed()
    expect(result).to_be_in_viewport()
    page.screenshot(path=results_dir / f"search-{viewport}.png")
    assert page_width(page) <= window_width(page)
    expect(page.get_by_role("button", name="Send")).to_be_in_viewport()
