"""The frontend's pure modules in the real browser, without any server.

state.js (the pure apply) and connection.js (backoff, resume, leave) are loaded from static/
through a routed fake origin; connection.js gets a scripted fake WebSocket and Playwright's fake
clock, so the backoff delays are checked exactly and nothing waits for real time.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, Route

from tcp_server.display import (
    AWAY_MARK,
    EXPIRED_SESSION,
    VIA_LABELS,
    YOU_MARK,
    display_text,
)

pytestmark = pytest.mark.e2e

STATIC_DIR = Path(__file__).resolve().parents[2] / "static"
ORIGIN = "http://frontend.test"
TYPES = {".js": "text/javascript", ".html": "text/html", ".css": "text/css"}

# A WebSocket stand-in: the test opens, feeds and closes it by hand and reads what was sent.
FAKE_SOCKET = """() => {
window.sockets = [];
window.FakeWebSocket = class {
  static CONNECTING = 0; static OPEN = 1; static CLOSING = 2; static CLOSED = 3;
  constructor(url) { this.url = url; this.readyState = 0; this.sent = []; sockets.push(this); }
  send(data) { this.sent.push(JSON.parse(data)); }
  close() { this.readyState = 3; }
  serverOpen() { this.readyState = 1; this.onopen && this.onopen({}); }
  serverSends(obj) { this.onmessage && this.onmessage({ data: JSON.stringify(obj) }); }
  serverCloses(reason = "") {
    this.readyState = 3;
    this.onclose && this.onclose({ code: 1006, reason });
  }
};
}"""


@pytest.fixture
def module_page(page: Page) -> Page:
    """A blank page on a fake origin that serves static/, with a fake clock installed."""

    def serve(route: Route) -> None:
        path = route.request.url.removeprefix(ORIGIN).split("?")[0]
        if path == "/":
            route.fulfill(body="<!doctype html><title>modules</title>", content_type="text/html")
            return
        file = (STATIC_DIR / path.lstrip("/")).resolve()
        if STATIC_DIR.resolve() not in file.parents or not file.is_file():
            route.fulfill(status=404, body="not found")
            return
        route.fulfill(body=file.read_bytes(), content_type=TYPES.get(file.suffix, "text/plain"))

    page.route(f"{ORIGIN}/**", serve)
    page.clock.install()
    page.goto(f"{ORIGIN}/")
    # From here on time moves only when a test says so (run_for): delays are exact.
    page.clock.pause_at(page.evaluate("() => Date.now()") + 1_000)
    page.evaluate(FAKE_SOCKET)
    return page


def run_state(page: Page, events: list[dict[str, Any]]) -> dict[str, Any]:
    """initialState() with `events` applied in order, as JSON."""
    result: dict[str, Any] = page.evaluate(
        """async (events) => {
             const { apply, initialState } = await import('/js/state.js');
             return events.reduce(apply, initialState());
           }""",
        events,
    )
    return result


WELCOME = {"type": "welcome", "name": "alice", "ip": "127.0.0.1", "port": 5000}


def test_direct_message_opens_a_conversation_with_an_unread_count(module_page: Page) -> None:
    state = run_state(module_page, [
        WELCOME,
        {"type": "message", "from": "Bob", "to": "alice", "text": "hi", "ts": 1.5},
    ])
    bob = state["conversations"]["bob"]
    assert bob["title"] == "Bob"
    assert bob["unread"] == 1
    assert [m["text"] for m in bob["messages"]] == ["hi"]
    assert state["conversations"]["*"]["messages"] == []


def test_selecting_a_conversation_clears_its_unread_count(module_page: Page) -> None:
    state = run_state(module_page, [
        WELCOME,
        {"type": "message", "from": "bob", "to": "alice", "text": "one", "ts": 1.0},
        {"type": "message", "from": "bob", "to": "alice", "text": "two", "ts": 2.0},
        {"type": "local/select", "key": "bob", "title": "bob"},
        {"type": "message", "from": "bob", "to": "alice", "text": "three", "ts": 3.0},
    ])
    assert state["active"] == "bob"
    assert state["conversations"]["bob"]["unread"] == 0


def test_message_to_everyone_counts_unread_only_when_not_shown(module_page: Page) -> None:
    state = run_state(module_page, [
        WELCOME,
        {"type": "message", "from": "bob", "to": "*", "text": "seen", "ts": 1.0},
        {"type": "local/select", "key": "carol", "title": "carol"},
        {"type": "message", "from": "bob", "to": "*", "text": "unseen", "ts": 2.0},
    ])
    assert state["conversations"]["*"]["unread"] == 1


def test_sent_confirms_the_pending_message_with_the_server_time(module_page: Page) -> None:
    state = run_state(module_page, [
        WELCOME,
        {"type": "local/send", "id": "b7", "to": "bob", "text": "hello"},
        {"type": "sent", "id": "b7", "to": "Bob", "ts": 1795610750.351},
    ])
    [message] = state["conversations"]["bob"]["messages"]
    assert (message["state"], message["ts"], message["to"]) == ("sent", 1795610750.351, "Bob")
    assert state["pending"] == {}


def test_error_reply_marks_the_pending_message_failed(module_page: Page) -> None:
    state = run_state(module_page, [
        WELCOME,
        {"type": "local/send", "id": "b7", "to": "carol", "text": "hello?"},
        {"type": "error", "id": "b7", "code": "no_such_user", "message": "no user named 'carol'"},
    ])
    [message] = state["conversations"]["carol"]["messages"]
    assert (message["state"], message["error"]) == ("failed", "no user named 'carol'")


def test_losing_the_connection_keeps_unconfirmed_messages_marked_failed(module_page: Page) -> None:
    state = run_state(module_page, [
        WELCOME,
        {"type": "local/send", "id": "b7", "to": "*", "text": "still here"},
        {"type": "local/status", "status": "reconnecting", "reason": "gone", "attempt": 1},
    ])
    [message] = state["conversations"]["*"]["messages"]
    assert message["text"] == "still here"
    assert message["state"] == "failed"
    assert state["pending"] == {}


def test_joined_lists_the_user_until_the_users_reply_fills_in_the_address(
    module_page: Page,
) -> None:
    state = run_state(module_page, [WELCOME, {"type": "joined", "name": "bob"}])
    assert state["users"] == [
        {"name": "bob", "ip": None, "port": None, "via": None, "status": "online"}]
    users = [{"name": "alice", "ip": "127.0.0.1", "port": 5000, "via": "web"},
             {"name": "bob", "ip": "10.0.0.2", "port": 6000, "via": "tcp"}]
    state = run_state(module_page, [WELCOME, {"type": "joined", "name": "bob"},
                                    {"type": "users", "users": users}])
    assert state["users"] == users


def entry(name: str, port: int, ip: str = "10.0.0.2", via: str = "tcp",
          status: str = "online") -> dict[str, Any]:
    return {"name": name, "ip": ip, "port": port, "via": via, "status": status}


def test_joined_with_the_users_entry_lists_them_with_their_address_at_once(
    module_page: Page,
) -> None:
    state = run_state(module_page, [
        WELCOME, {"type": "users", "users": [entry("alice", 5000)]},
        {"type": "joined", "name": "carol", "user": entry("carol", 7000, via="web")},
        {"type": "joined", "name": "Bob", "user": entry("Bob", 6000)},
    ])
    assert state["users"] == [entry("alice", 5000), entry("Bob", 6000),
                              entry("carol", 7000, via="web")]


def test_back_replaces_the_users_address_and_status_with_its_entry(module_page: Page) -> None:
    state = run_state(module_page, [
        WELCOME, {"type": "users", "users": [entry("alice", 5000), entry("bob", 6000)]},
        {"type": "away", "name": "BOB"},
        {"type": "back", "name": "bob", "user": entry("bob", 6001, ip="10.0.0.9", via="web")},
    ])
    assert state["users"] == [entry("alice", 5000), entry("bob", 6001, ip="10.0.0.9", via="web")]


def test_a_list_kept_from_events_matches_the_servers_after_joins_away_back_and_leaves(
    module_page: Page,
) -> None:
    """What the core would answer to list after the same events (docs/protocol.md)."""
    joins = [{"type": "joined", "name": f"u{n:02}", "user": entry(f"u{n:02}", 7000 + n)}
             for n in range(30)]
    state = run_state(module_page, [
        WELCOME, {"type": "users", "users": [entry("alice", 5000)]}, *joins,
        {"type": "away", "name": "u03"}, {"type": "left", "name": "U04"},
        {"type": "away", "name": "u05"},
        {"type": "back", "name": "u05", "user": entry("u05", 9005)},
        {"type": "joined", "name": "u04", "user": entry("u04", 9004, via="web")},
    ])
    expected = [entry("alice", 5000)] + [entry(f"u{n:02}", 7000 + n) for n in range(30)]
    expected[4] = entry("u03", 7003, status="away")
    expected[5] = entry("u04", 9004, via="web")
    expected[6] = entry("u05", 9005)
    assert state["users"] == expected


def test_back_of_someone_not_listed_and_an_entry_about_another_name_change_nothing_wrong(
    module_page: Page,
) -> None:
    state = run_state(module_page, [
        WELCOME, {"type": "users", "users": [entry("alice", 5000)]},
        {"type": "back", "name": "ghost", "user": entry("ghost", 1)},
        {"type": "joined", "name": "bob", "user": entry("mallory", 6666)},
    ])
    assert state["users"] == [entry("alice", 5000),
                              {"name": "bob", "ip": None, "port": None, "via": None,
                               "status": "online"}]


def test_left_removes_the_user_and_says_so(module_page: Page) -> None:
    users = [{"name": "alice", "ip": "127.0.0.1", "port": 5000, "via": "web"},
             {"name": "Bob", "ip": "10.0.0.2", "port": 6000, "via": "tcp"}]
    state = run_state(module_page, [
        WELCOME,
        {"type": "users", "users": users},
        {"type": "message", "from": "Bob", "to": "alice", "text": "bye", "ts": 1.0},
        {"type": "left", "name": "Bob"},
    ])
    assert [u["name"] for u in state["users"]] == ["alice"]
    assert state["conversations"]["*"]["messages"][-1]["text"] == "Bob left"
    assert state["conversations"]["bob"]["messages"][-1]["text"] == "Bob left"


def test_join_of_a_peer_shows_in_the_conversation_with_them_as_their_leave_does(
    module_page: Page,
) -> None:
    state = run_state(module_page, [
        WELCOME,
        {"type": "message", "from": "Bob", "to": "alice", "text": "brb", "ts": 1.0},
        {"type": "local/select", "key": "*", "title": "Everyone"},
        {"type": "left", "name": "Bob"},
        {"type": "joined", "name": "Bob"},
    ])
    bob = state["conversations"]["bob"]
    assert [m["text"] for m in bob["messages"]] == ["brb", "Bob left", "Bob joined"]
    assert bob["unread"] == 1  # the message; notices are not unread
    assert state["conversations"]["*"]["messages"][-1]["text"] == "Bob joined"


def test_join_of_someone_never_written_to_opens_no_conversation(module_page: Page) -> None:
    state = run_state(module_page, [WELCOME, {"type": "joined", "name": "bob"}])
    assert sorted(state["conversations"]) == ["*"]


def test_discard_removes_a_failed_message_for_its_retry(module_page: Page) -> None:
    state = run_state(module_page, [
        WELCOME,
        {"type": "local/send-failed", "to": "bob", "text": "lost", "reason": "not connected"},
        {"type": "local/send", "id": "b1", "to": "bob", "text": "kept"},
    ])
    [failed, _] = state["conversations"]["bob"]["messages"]
    assert failed["state"] == "failed"
    state = run_state(module_page, [
        WELCOME,
        {"type": "local/send-failed", "to": "bob", "text": "lost", "reason": "not connected"},
        {"type": "local/send", "id": "b1", "to": "bob", "text": "kept"},
        {"type": "local/discard", "key": failed["key"]},
    ])
    assert [m["text"] for m in state["conversations"]["bob"]["messages"]] == ["kept"]


def test_error_without_a_request_is_a_notice_only_while_online(module_page: Page) -> None:
    unavailable = {"type": "error", "code": "unavailable", "message": "core unreachable"}
    online = {"type": "local/status", "status": "online", "reason": "", "attempt": 0}
    lost = {"type": "local/status", "status": "reconnecting", "reason": "gone", "attempt": 1}
    assert run_state(module_page, [WELCOME, online, unavailable])["notice"] == "core unreachable"
    assert run_state(module_page, [WELCOME, online, lost, unavailable])["notice"] == ""
    assert run_state(module_page, [WELCOME, online, unavailable, lost])["notice"] == ""


def test_unknown_event_types_leave_the_state_unchanged(module_page: Page) -> None:
    same = module_page.evaluate(
        """async () => {
             const { apply, initialState } = await import('/js/state.js');
             const state = initialState();
             return apply(state, { type: "from_the_future", x: 1 }) === state;
           }"""
    )
    assert same is True


# --- connection.js ---------------------------------------------------------------------------

START_CONNECTION = """async () => {
  const { ChatConnection } = await import('/js/connection.js');
  window.statuses = [];
  window.refusals = [];
  window.conn = new ChatConnection("ws://gateway.test/ws",
                                   { WebSocket: FakeWebSocket, random: () => 0.5 });
  conn.addEventListener("status", (e) => statuses.push(e.detail));
  conn.addEventListener("refused", (e) => refusals.push(e.detail));
  conn.join("alice");
}"""


def js(page: Page, code: str) -> Any:
    return page.evaluate(code)


def last_socket_welcomes(page: Page, name: str = "alice") -> None:
    """The newest fake socket opens, gets the hello and answers welcome."""
    welcome = {"type": "welcome", "name": name, "ip": "127.0.0.1", "port": 5000}
    page.evaluate(
        """(welcome) => {
             const ws = sockets.at(-1);
             ws.serverOpen();
             const hello = ws.sent.at(-1);
             ws.serverSends({ ...welcome, id: hello.id });
           }""",
        welcome,
    )


def test_connection_sends_hello_under_the_name_and_goes_online(module_page: Page) -> None:
    js(module_page, START_CONNECTION)
    last_socket_welcomes(module_page)
    sent = js(module_page, "() => sockets[0].sent")
    assert [(m["type"], m["name"]) for m in sent] == [("hello", "alice")]
    assert js(module_page, "() => statuses.map((s) => s.status)") == ["connecting", "online"]


def test_reconnect_delays_double_up_to_the_cap(module_page: Page) -> None:
    js(module_page, START_CONNECTION)
    last_socket_welcomes(module_page)
    delays = []
    for _ in range(7):
        js(module_page, "() => sockets.at(-1).serverCloses('core down')")
        delay = js(module_page, "() => statuses.at(-1).retryInMs")
        delays.append(delay)
        module_page.clock.run_for(delay)
    # "Equal jitter" with random() = 0.5: three quarters of 500 ms, doubling, capped at 15 s.
    assert delays == [375, 750, 1500, 3000, 6000, 11250, 11250]
    assert js(module_page, "() => sockets.length") == 8


def test_reconnect_joins_again_under_the_same_name_and_resets_the_backoff(
    module_page: Page,
) -> None:
    js(module_page, START_CONNECTION)
    last_socket_welcomes(module_page)
    for _ in range(3):
        js(module_page, "() => sockets.at(-1).serverCloses()")
        module_page.clock.run_for(js(module_page, "() => statuses.at(-1).retryInMs"))
    last_socket_welcomes(module_page)
    hello = js(module_page, "() => sockets.at(-1).sent[0]")
    assert (hello["type"], hello["name"]) == ("hello", "alice")
    assert js(module_page, "() => conn.status") == "online"
    js(module_page, "() => sockets.at(-1).serverCloses()")
    assert js(module_page, "() => statuses.at(-1).retryInMs") == 375


def test_status_tells_the_reason_the_gateway_gave(module_page: Page) -> None:
    js(module_page, START_CONNECTION)
    last_socket_welcomes(module_page)
    js(module_page, """() => {
        sockets[0].serverSends({ type: "error", code: "unavailable",
                                 message: "the chat server is not reachable" });
        sockets[0].serverCloses();
    }""")
    last = js(module_page, "() => statuses.at(-1)")
    assert (last["status"], last["reason"]) == ("reconnecting", "the chat server is not reachable")


def test_the_gateways_reason_stays_while_later_attempts_fail_without_one(
    module_page: Page,
) -> None:
    js(module_page, START_CONNECTION)
    last_socket_welcomes(module_page)
    js(module_page, """() => {
        sockets[0].serverSends({ type: "bye", reason: "the web gateway is shutting down" });
        sockets[0].serverCloses();
    }""")
    since_bye = js(module_page, "() => statuses.length") - 1
    for _ in range(3):  # the gateway is gone: each attempt just fails, saying nothing
        module_page.clock.run_for(js(module_page, "() => statuses.at(-1).retryInMs"))
        js(module_page, "() => sockets.at(-1).serverCloses()")
    assert js(module_page, "() => sockets.length") == 4
    shown = js(module_page, f"() => statuses.slice({since_bye})")
    assert [s["status"] for s in shown] == ["reconnecting"] * 7
    assert {s["reason"] for s in shown} == {"the web gateway is shutting down"}


def test_a_newer_reason_replaces_an_older_one_while_reconnecting(module_page: Page) -> None:
    js(module_page, START_CONNECTION)
    last_socket_welcomes(module_page)
    js(module_page, """() => {
        sockets[0].serverSends({ type: "bye", reason: "the web gateway is shutting down" });
        sockets[0].serverCloses();
    }""")
    module_page.clock.run_for(js(module_page, "() => statuses.at(-1).retryInMs"))
    js(module_page, """() => {
        const ws = sockets.at(-1);
        ws.serverOpen();
        ws.serverSends({ type: "error", code: "unavailable",
                         message: "the chat server is not reachable" });
        ws.serverCloses();
    }""")
    assert js(module_page, "() => statuses.at(-1).reason") == "the chat server is not reachable"


def test_a_reason_is_forgotten_once_back_online(module_page: Page) -> None:
    js(module_page, START_CONNECTION)
    last_socket_welcomes(module_page)
    js(module_page, """() => {
        sockets[0].serverSends({ type: "bye", reason: "the web gateway is shutting down" });
        sockets[0].serverCloses();
    }""")
    module_page.clock.run_for(js(module_page, "() => statuses.at(-1).retryInMs"))
    last_socket_welcomes(module_page)
    js(module_page, "() => sockets.at(-1).serverCloses()")
    assert js(module_page, "() => statuses.at(-1).reason") == "the connection was closed"


def test_name_taken_at_first_join_is_a_refusal_without_retry(module_page: Page) -> None:
    js(module_page, START_CONNECTION)
    js(module_page, """() => {
        const ws = sockets[0];
        ws.serverOpen();
        ws.serverSends({ type: "error", code: "name_taken", message: "taken!",
                         id: ws.sent[0].id });
    }""")
    assert js(module_page, "() => refusals") == [{"code": "name_taken", "message": "taken!"}]
    assert js(module_page, "() => conn.status") == "offline"
    module_page.clock.run_for(60_000)
    assert js(module_page, "() => sockets.length") == 1


def test_name_taken_after_a_reconnect_is_retried(module_page: Page) -> None:
    js(module_page, START_CONNECTION)
    last_socket_welcomes(module_page)
    js(module_page, "() => sockets[0].serverCloses()")
    module_page.clock.run_for(js(module_page, "() => statuses.at(-1).retryInMs"))
    # Our old session still holds the name on the core: not a refusal, try again later.
    js(module_page, """() => {
        const ws = sockets[1];
        ws.serverOpen();
        ws.serverSends({ type: "error", code: "name_taken", message: "taken", id: ws.sent[0].id });
    }""")
    assert js(module_page, "() => refusals") == []
    assert js(module_page, "() => conn.status") == "reconnecting"
    module_page.clock.run_for(js(module_page, "() => statuses.at(-1).retryInMs"))
    last_socket_welcomes(module_page)
    assert js(module_page, "() => conn.status") == "online"
    assert js(module_page, "() => sockets.length") == 3


def test_name_taken_after_reconnect_gives_up_after_the_retry_limit(module_page: Page) -> None:
    js(module_page, START_CONNECTION)
    last_socket_welcomes(module_page)
    js(module_page, "() => sockets.at(-1).serverCloses()")
    for _ in range(9):  # maxNameRetries (8) retries, then the 9th answer is final
        module_page.clock.run_for(js(module_page, "() => statuses.at(-1).retryInMs"))
        js(module_page, """() => {
            const ws = sockets.at(-1);
            ws.serverOpen();
            ws.serverSends({ type: "error", code: "name_taken", message: "taken",
                             id: ws.sent[0].id });
        }""")
    assert js(module_page, "() => refusals") == [{"code": "name_taken", "message": "taken"}]
    assert js(module_page, "() => conn.status") == "offline"
    module_page.clock.run_for(60_000)
    assert js(module_page, "() => sockets.length") == 10


def test_leave_sends_exit_and_stays_offline_after_bye(module_page: Page) -> None:
    js(module_page, START_CONNECTION)
    last_socket_welcomes(module_page)
    js(module_page, "() => conn.leave()")
    exit_request = js(module_page, "() => sockets[0].sent.at(-1)")
    assert exit_request["type"] == "exit"
    module_page.evaluate(
        "(id) => { sockets[0].serverSends({ type: 'bye', id }); sockets[0].serverCloses(); }",
        exit_request["id"],
    )
    assert js(module_page, "() => conn.status") == "offline"
    module_page.clock.run_for(60_000)
    assert js(module_page, "() => sockets.length") == 1


def test_silent_connection_is_dropped_10_s_after_an_unanswered_ping(module_page: Page) -> None:
    # docs/history-and-sessions.md, "Dead peers": a ping every 10 s, a new connection when no
    # pong came within 10 s.
    js(module_page, START_CONNECTION)
    last_socket_welcomes(module_page)
    module_page.clock.run_for(9_999)
    assert js(module_page, "() => sockets[0].sent.at(-1).type") == "hello"
    module_page.clock.run_for(1)
    ping = js(module_page, "() => sockets[0].sent.at(-1)")
    assert ping["type"] == "ping"
    module_page.clock.run_for(9_999)
    assert js(module_page, "() => conn.status") == "online"
    module_page.clock.run_for(1)
    last = js(module_page, "() => statuses.at(-1)")
    assert (last["status"], last["reason"]) == ("reconnecting", "no answer from the server")


def test_answered_pings_keep_the_connection(module_page: Page) -> None:
    js(module_page, START_CONNECTION)
    last_socket_welcomes(module_page)
    for _ in range(3):
        module_page.clock.run_for(10_000)
        js(module_page, """() => {
            const ping = sockets[0].sent.at(-1);
            sockets[0].serverSends({ type: "pong", id: ping.id });
        }""")
    assert js(module_page, "() => sockets[0].sent.filter((m) => m.type === 'ping').length") == 3
    assert js(module_page, "() => conn.status") == "online"
    assert js(module_page, "() => sockets.length") == 1


def test_frames_that_break_the_protocol_are_ignored(module_page: Page) -> None:
    js(module_page, START_CONNECTION)
    last_socket_welcomes(module_page)
    events = module_page.evaluate(
        """(frames) => {
             const seen = [];
             conn.addEventListener("event", (e) => seen.push(e.detail.type));
             for (const frame of frames) sockets[0].onmessage({ data: frame });
             return seen;
           }""",
        ["not json", "[1]", json.dumps({"no": "type"}),
         json.dumps({"type": "message", "from": "bob"}),
         json.dumps({"type": "joined", "name": "bob"})],
    )
    assert events == ["joined"]
    assert js(module_page, "() => conn.status") == "online"


# --- sessions: resume, expiry, takeover (connection.js) ---------------------------------------

WATCH_SESSIONS = """() => {
  window.sessions = [];
  window.expiries = [];
  conn.addEventListener("session", (e) => sessions.push(e.detail));
  conn.addEventListener("expired", (e) => expiries.push(e.detail));
}"""


def welcome_with_session(page: Page, seq: int, resumed: bool = False) -> None:
    page.evaluate(
        """([seq, resumed]) => {
             const ws = sockets.at(-1);
             ws.serverOpen();
             ws.serverSends({ type: "welcome", name: "alice", ip: "127.0.0.1", port: 5000,
                              session: "tok", seq, resumed, id: ws.sent.at(-1).id });
           }""",
        [seq, resumed],
    )


def test_reconnect_resumes_after_the_highest_seq_seen(module_page: Page) -> None:
    js(module_page, START_CONNECTION)
    js(module_page, WATCH_SESSIONS)
    welcome_with_session(module_page, 40)
    assert js(module_page, "() => sessions.at(-1)") == {
        "name": "alice", "session": "tok", "lastSeq": 40}
    js(module_page, """() => {
        for (const seq of [41, 45]) {
          sockets[0].serverSends({ type: "message", from: "bob", to: "*", text: "hi", ts: 1,
                                   seq });
        }
        sockets[0].serverCloses();
    }""")
    assert js(module_page, "() => sessions.at(-1).lastSeq") == 45
    module_page.clock.run_for(js(module_page, "() => statuses.at(-1).retryInMs"))
    js(module_page, "() => sockets.at(-1).serverOpen()")
    hello = js(module_page, "() => sockets.at(-1).sent[0]")
    assert {k: hello[k] for k in ("type", "name", "resume", "after")} == {
        "type": "hello", "name": "alice", "resume": "tok", "after": 45}


def test_a_resumed_welcome_keeps_the_seq_the_replay_goes_on_from(module_page: Page) -> None:
    module_page.evaluate("""async () => {
        const { ChatConnection } = await import('/js/connection.js');
        window.statuses = [];
        window.conn = new ChatConnection("ws://gateway.test/ws",
                                         { WebSocket: FakeWebSocket, random: () => 0.5 });
        conn.addEventListener("status", (e) => statuses.push(e.detail));
        conn.resume("alice", "tok", 45);
    }""")
    js(module_page, WATCH_SESSIONS)
    welcome_with_session(module_page, 63, resumed=True)
    hello = js(module_page, "() => sockets[0].sent[0]")
    assert (hello["resume"], hello["after"]) == ("tok", 45)
    assert js(module_page, "() => sessions.at(-1).lastSeq") == 45
    assert js(module_page, "() => conn.status") == "online"


def test_session_expired_joins_again_with_a_plain_hello_on_the_same_socket(
    module_page: Page,
) -> None:
    module_page.evaluate("""async () => {
        const { ChatConnection } = await import('/js/connection.js');
        window.statuses = [];
        window.refusals = [];
        window.conn = new ChatConnection("ws://gateway.test/ws",
                                         { WebSocket: FakeWebSocket, random: () => 0.5 });
        conn.addEventListener("status", (e) => statuses.push(e.detail));
        conn.addEventListener("refused", (e) => refusals.push(e.detail));
        conn.resume("alice", "old", 45);
    }""")
    js(module_page, WATCH_SESSIONS)
    js(module_page, """() => {
        const ws = sockets[0];
        ws.serverOpen();
        ws.serverSends({ type: "error", code: "session_expired", message: "no such session",
                         id: ws.sent[0].id });
    }""")
    assert js(module_page, "() => expiries") == [{"message": "no such session"}]
    assert js(module_page, "() => sessions.at(-1)")["session"] is None
    hello = js(module_page, "() => sockets[0].sent.at(-1)")
    assert hello["type"] == "hello"
    assert "resume" not in hello
    welcome_with_session(module_page, 70)
    assert js(module_page, "() => conn.status") == "online"
    assert js(module_page, "() => sockets.length") == 1
    assert js(module_page, "() => refusals") == []


def test_a_session_resumed_elsewhere_goes_offline_without_retrying(module_page: Page) -> None:
    js(module_page, START_CONNECTION)
    js(module_page, WATCH_SESSIONS)
    welcome_with_session(module_page, 1)
    js(module_page, """() => {
        sockets[0].serverSends({ type: "bye", reason: "resumed elsewhere" });
        sockets[0].serverSends({ type: "error", code: "unavailable",
                                 message: "the chat server closed the connection" });
        sockets[0].serverCloses();
    }""")
    last = js(module_page, "() => statuses.at(-1)")
    assert (last["status"], last["reason"]) == (
        "offline", "the session was taken over by another tab")
    assert js(module_page, "() => sessions.at(-1).session") is None
    module_page.clock.run_for(60_000)
    assert js(module_page, "() => sockets.length") == 1


def test_leave_forgets_the_session(module_page: Page) -> None:
    js(module_page, START_CONNECTION)
    js(module_page, WATCH_SESSIONS)
    welcome_with_session(module_page, 3)
    js(module_page, "() => conn.leave()")
    assert js(module_page, "() => sockets[0].sent.at(-1).type") == "exit"
    assert js(module_page, "() => sessions.at(-1)") == {
        "name": None, "session": None, "lastSeq": 0}


def test_offline_browser_gives_the_socket_up_and_online_resumes_at_once(
    module_page: Page,
) -> None:
    js(module_page, START_CONNECTION)
    welcome_with_session(module_page, 5)
    js(module_page, "() => conn.setNetwork(false)")
    last = js(module_page, "() => statuses.at(-1)")
    assert (last["status"], last["reason"]) == ("reconnecting", "the network is offline")
    assert js(module_page, "() => sockets[0].readyState") == 3  # closed by us
    module_page.clock.run_for(60_000)
    assert js(module_page, "() => sockets.length") == 1  # no retries while offline
    js(module_page, "() => conn.setNetwork(true)")
    assert js(module_page, "() => sockets.length") == 2
    js(module_page, "() => sockets[1].serverOpen()")
    assert js(module_page, "() => sockets[1].sent[0].resume") == "tok"


# --- history, seq, read markers, away, search (state.js) --------------------------------------

WELCOME_S = {**WELCOME, "session": "tok", "seq": 10, "resumed": False}


def msg(seq: int, text: str, sender: str = "bob", to: str = "*") -> dict[str, Any]:
    return {"type": "message", "from": sender, "to": to, "text": text, "ts": float(seq),
            "seq": seq}


def texts(state: dict[str, Any], key: str = "*") -> list[str]:
    return [m["text"] for m in state["conversations"][key]["messages"]]


def test_a_message_seen_twice_shows_once_and_messages_keep_seq_order(module_page: Page) -> None:
    state = run_state(module_page, [
        WELCOME_S,
        msg(12, "twelve"),
        msg(11, "eleven"),  # e.g. from a history page that arrived late
        msg(12, "twelve"),  # a resume's replay of what history brought
        {"type": "history", "with": "*", "messages": [msg(11, "eleven"), msg(13, "thirteen")],
         "more": False},
    ])
    assert texts(state) == ["eleven", "twelve", "thirteen"]


def test_history_pages_go_before_what_is_shown_and_say_whether_more_exist(
    module_page: Page,
) -> None:
    state = run_state(module_page, [
        WELCOME_S,
        msg(30, "live"),
        {"type": "history", "with": "*", "messages": [msg(20, "b"), msg(30, "live")],
         "more": True},
    ])
    everyone = state["conversations"]["*"]
    assert (texts(state), everyone["more"], everyone["loaded"]) == (["b", "live"], True, True)
    state = run_state(module_page, [
        WELCOME_S,
        {"type": "history", "with": "*", "messages": [msg(20, "b"), msg(30, "c")], "more": True},
        {"type": "history", "with": "*", "messages": [msg(5, "a")], "more": False},
    ])
    assert texts(state) == ["a", "b", "c"]
    assert state["conversations"]["*"]["more"] is False


def test_history_of_my_own_direct_messages_is_mine_in_the_peers_conversation(
    module_page: Page,
) -> None:
    state = run_state(module_page, [
        WELCOME_S,
        {"type": "history", "with": "Bob", "more": False, "messages": [
            msg(3, "hi bob", sender="alice", to="Bob"), msg(4, "hi alice", to="alice")]},
    ])
    [mine, theirs] = state["conversations"]["bob"]["messages"]
    assert (mine["kind"], mine["state"], theirs["kind"]) == ("out", "sent", "in")
    assert state["conversations"]["bob"]["title"] == "Bob"


def test_sent_gives_the_pending_message_its_seq_and_place(module_page: Page) -> None:
    state = run_state(module_page, [
        WELCOME_S,
        {"type": "local/send", "id": "b1", "to": "*", "text": "mine"},
        msg(12, "bob's, accepted first"),
        {"type": "sent", "id": "b1", "to": "*", "ts": 1.0, "seq": 11},
    ])
    assert texts(state) == ["mine", "bob's, accepted first"]
    state = run_state(module_page, [
        WELCOME_S,
        {"type": "local/send", "id": "b1", "to": "*", "text": "mine"},
        {"type": "history", "with": "*", "more": False,
         "messages": [msg(11, "mine", sender="alice")]},
        {"type": "sent", "id": "b1", "to": "*", "ts": 1.0, "seq": 11},
    ])
    assert texts(state) == ["mine"]
    assert state["pending"] == {}


def test_unread_counts_come_from_the_server_and_late_copies_do_not_count_twice(
    module_page: Page,
) -> None:
    state = run_state(module_page, [
        WELCOME_S,
        {"type": "conversations", "conversations": [
            {"with": "*", "last": 10, "read": 10, "unread": 0},
            {"with": "Bob", "last": 58, "read": 50, "unread": 3}]},
        msg(58, "counted by the server already", to="alice"),
        msg(59, "new", to="alice"),
    ])
    bob = state["conversations"]["bob"]
    assert (bob["title"], bob["unread"], bob["readSeq"], bob["lastSeq"]) == ("Bob", 4, 50, 59)


def test_the_shown_conversation_needs_a_read_up_to_its_newest_seq(module_page: Page) -> None:
    needed = module_page.evaluate("""async (events) => {
        const { apply, initialState, readNeeded } = await import('/js/state.js');
        const state = events.reduce(apply, initialState());
        const afterRead = apply(state, { type: "local/read", key: "bob", seq: 59 });
        return [readNeeded(state), readNeeded(afterRead)];
    }""", [
        WELCOME_S,
        msg(59, "hi", sender="Bob", to="alice"),
        {"type": "local/select", "key": "bob", "title": "Bob"},
    ])
    assert needed == [{"key": "bob", "with": "Bob", "seq": 59}, None]


def test_away_and_back_change_the_users_status_and_away_users_can_be_written_to(
    module_page: Page,
) -> None:
    users = [{"name": "alice", "ip": "127.0.0.1", "port": 5000, "via": "web"},
             {"name": "bob", "ip": "10.0.0.2", "port": 6000, "via": "tcp", "status": "away"}]
    result = module_page.evaluate("""async (events) => {
        const { apply, initialState, recipients, peerStatus } = await import('/js/state.js');
        const states = [];
        let state = initialState();
        for (const event of events) { state = apply(state, event); states.push(state); }
        return states.map((s) => [peerStatus(s, "bob"), recipients(s).map((u) => u.name)]);
    }""", [WELCOME_S, {"type": "users", "users": users}, {"type": "back", "name": "bob"},
           {"type": "away", "name": "Bob"}, {"type": "left", "name": "bob"}])
    assert result[1:] == [["away", ["bob"]], ["online", ["bob"]], ["away", ["bob"]],
                          ["offline", []]]


def test_search_results_name_their_conversation_and_old_answers_are_ignored(
    module_page: Page,
) -> None:
    found = [msg(9, "lunch?", sender="alice", to="bob"), msg(4, "lunch friday")]
    state = run_state(module_page, [
        WELCOME_S,
        {"type": "local/search", "q": "old", "id": "b1"},
        {"type": "local/search", "q": "lunch", "id": "b2"},
        {"type": "results", "q": "old", "messages": [msg(1, "old")], "id": "b1"},
        {"type": "results", "q": "lunch", "messages": found, "id": "b2"},
    ])
    search = state["search"]
    assert (search["q"], search["state"]) == ("lunch", "done")
    assert [(r["from"], r["conv"], r["convTitle"]) for r in search["results"]] == [
        ("alice", "bob", "bob"), ("bob", "*", "Everyone")]


def test_an_expired_session_starts_again_without_the_old_conversations(
    module_page: Page,
) -> None:
    state = run_state(module_page, [
        {"type": "local/resume", "name": "alice", "active": {"key": "bob", "title": "bob"}},
        {"type": "local/expired", "message": "no such session; say hello without resume"},
    ])
    assert state["resuming"] is True  # the room stays while the new session joins
    assert sorted(state["conversations"]) == ["*"]
    # In a user's words: the server's are for programs.
    assert state["notice"] == (
        "Your earlier session had ended (you were away longer than the server keeps a session, "
        "or it was restarted without its data); you joined again as a new session.")


def test_a_truncated_resume_says_that_some_missed_messages_are_gone(module_page: Page) -> None:
    resumed = {**WELCOME_S, "resumed": True, "truncated": True}
    assert "no longer kept" in run_state(module_page, [resumed])["notice"]
    assert run_state(module_page, [{**WELCOME_S, "resumed": True}])["notice"] == ""


def test_leave_while_disconnected_ends_the_session_on_a_socket_of_its_own(
    module_page: Page,
) -> None:
    js(module_page, START_CONNECTION)
    welcome_with_session(module_page, 7)
    js(module_page, "() => sockets[0].serverCloses()")
    assert js(module_page, "() => conn.status") == "reconnecting"
    js(module_page, "() => conn.leave()")
    assert js(module_page, "() => conn.status") == "offline"
    js(module_page, "() => sockets[1].serverOpen()")
    hello = js(module_page, "() => sockets[1].sent[0]")
    assert (hello["type"], hello["resume"], hello["after"]) == ("hello", "tok", 7)
    js(module_page, """() => sockets[1].serverSends({
        type: "welcome", name: "alice", ip: "127.0.0.1", port: 5000, session: "tok", seq: 9,
        resumed: true, id: sockets[1].sent[0].id })""")
    assert js(module_page, "() => sockets[1].sent[1].type") == "exit"
    js(module_page, "() => sockets[1].serverSends({ type: 'bye', id: sockets[1].sent[1].id })")
    assert js(module_page, "() => sockets[1].readyState") == 3  # closed by the page
    module_page.clock.run_for(60_000)
    assert js(module_page, "() => sockets.length") == 2  # and nothing more
    assert js(module_page, "() => conn.status") == "offline"


# --- labels and the protocol's presence events ---------------------------------------------------


def test_the_browsers_labels_are_the_ones_of_the_terminal_and_plain_text_clients(
    module_page: Page,
) -> None:
    labels = module_page.evaluate("""async () => {
        const m = await import('/js/labels.js');
        return { via: { ...m.VIA_LABELS }, away: m.AWAY_MARK, you: m.YOU_MARK,
                 expired: m.EXPIRED_SESSION,
                 shown: ["tcp", "web", "carrier-pigeon", "constructor", "__proto__", null]
                   .map(m.viaLabel) };
    }""")
    assert labels["via"] == VIA_LABELS
    assert (labels["away"], labels["you"]) == (AWAY_MARK, YOU_MARK)
    assert labels["expired"] == EXPIRED_SESSION
    assert labels["shown"] == ["terminal", "browser", "carrier-pigeon", "constructor",
                               "__proto__", ""]


def test_text_from_others_is_shown_by_the_same_rule_as_in_the_terminal(
    module_page: Page,
) -> None:
    """The embeddings, overrides and isolates, which a page obeys even in textContent, are
    escaped as display_text escapes them; marks (used in Hebrew and Arabic), separators and
    everything else stay as they are."""
    reordering = "".join(chr(c) for c in [*range(0x202A, 0x202F), *range(0x2066, 0x206A)])
    kept = "plain caf\u00e9 \U0001f600 zero\u200bwidth \u200d \u200e\u200f\u061c \u2028 <b>"
    texts = ["RTL \u202eevil\u202c end", reordering, kept]  # the first reads "RTL live end"
    shown = module_page.evaluate("""async (texts) => {
        const { shownText } = await import('/js/labels.js');
        return [...texts.map(shownText), shownText(null), shownText(undefined), shownText(3)];
    }""", texts)
    assert shown[:2] == [display_text(text) for text in texts[:2]]
    assert shown[0] == "RTL \\u202eevil\\u202c end"
    assert shown[2] == kept
    assert shown[3:] == ["", "", "3"]


def parsed(page: Page, obj: dict[str, Any]) -> Any:
    return page.evaluate("""async (frame) => {
        const { parseEvent } = await import('/js/protocol.js');
        try { return parseEvent(frame); } catch (error) { return `refused: ${error.message}`; }
    }""", json.dumps(obj))


def test_joined_and_back_entries_are_checked_like_users_entries(module_page: Page) -> None:
    good = {"name": "Bob", "ip": "::1", "port": 1, "via": "web", "status": "away"}
    assert parsed(module_page, {"type": "joined", "name": "bob", "user": good})["user"] == {
        **good, "status": "away"}
    assert parsed(module_page, {"type": "back", "name": "bob"}) == {"type": "back", "name": "bob"}
    for bad in ({**good, "port": "1"}, {**good, "name": "mallory"}, "bob", [good]):
        for kind in ("joined", "back"):
            assert str(parsed(module_page, {"type": kind, "name": "bob", "user": bad})
                       ).startswith("refused: ")
