"""The gateway relays between a browser's websocket and the core, both ways, message by message."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import replace

import pytest

from tcp_server.server import ChatServer
from tests.support.core import RawClient, wait_until
from tests.support.gateway import InProcessGateway, WsClient, running_gateway
from web_gateway.config import GatewayConfig

Browser = Callable[[], WsClient]


def test_browser_request_gets_its_reply_from_the_core(open_browser: Browser) -> None:
    alice = open_browser()
    alice.send(type="ping", id=7)
    alice.expect("pong", id=7)


def test_welcome_reports_the_browsers_own_address(open_browser: Browser) -> None:
    alice = open_browser()
    ip, port = alice.address
    alice.send(type="hello", name="alice", id=1)
    alice.expect("welcome", name="alice", ip=ip, port=port, id=1)


def test_list_shows_the_browsers_address_with_via_web(
    open_browser: Browser, core: ChatServer
) -> None:
    alice = open_browser()
    alice.hello("alice")
    with RawClient(core.address) as bob:
        bob.hello("bob")
        users = {user["name"]: user for user in bob.request("list")["users"]}
    ip, port = alice.address
    assert users["alice"] == {"name": "alice", "ip": ip, "port": port, "via": "web",
                              "status": "online"}
    assert users["bob"]["via"] == "tcp"


def test_message_from_a_tcp_user_reaches_the_browser(
    open_browser: Browser, core: ChatServer
) -> None:
    alice = open_browser()
    alice.hello("alice")
    with RawClient(core.address) as bob:
        bob.hello("bob")
        bob.send(type="send", to="alice", text="hi alice\nline two 😀")
        bob.expect("sent", to="alice")
        alice.expect("joined", name="bob")
        message = alice.expect("message", to="alice", text="hi alice\nline two 😀")
        assert message["from"] == "bob"


def test_message_from_the_browser_reaches_a_tcp_user(
    open_browser: Browser, core: ChatServer
) -> None:
    alice = open_browser()
    alice.hello("alice")
    with RawClient(core.address) as bob:
        bob.hello("bob")
        alice.expect("joined", name="bob")
        alice.send(type="send", to="*", text="hello everyone", id="m1")
        alice.expect("sent", to="*", id="m1")
        message = bob.expect("message", to="*", text="hello everyone")
        assert message["from"] == "alice"


def test_each_frame_is_one_request_and_replies_keep_their_order(open_browser: Browser) -> None:
    alice = open_browser()
    for number in range(50):
        alice.send(type="ping", id=number)
    assert [alice.expect("pong")["id"] for _ in range(50)] == list(range(50))


def test_each_core_line_is_one_frame(
    open_browser: Browser, core: ChatServer
) -> None:
    alice = open_browser()
    alice.hello("alice")
    with RawClient(core.address) as bob:
        bob.hello("bob")
        alice.expect("joined", name="bob")
        texts = [f"message {number}" for number in range(50)]  # within the core's rate burst
        for text in texts:
            bob.send(type="send", to="alice", text=text)
        received = [alice.recv() for _ in texts]
    assert [obj["text"] for obj in received] == texts
    assert all(obj["type"] == "message" for obj in received)


def test_pretty_printed_json_with_raw_newlines_is_still_one_request(open_browser: Browser) -> None:
    alice = open_browser()
    alice.send_text(json.dumps({"type": "ping", "id": "pretty"}, indent=2))
    alice.send(type="ping", id="next")
    alice.expect("pong", id="pretty")
    alice.expect("pong", id="next")


def test_core_errors_are_relayed_unchanged(open_browser: Browser) -> None:
    alice = open_browser()
    alice.send(type="list", id=3)
    alice.expect("error", code="not_registered", id=3)


def test_trusted_forwarded_for_is_the_address_the_core_sees(
    gateway_config: GatewayConfig,
) -> None:
    config = replace(gateway_config, trust_forwarded=True)
    with running_gateway(config) as gateway, WsClient(
        gateway.url, gateway.origin, header=["X-Forwarded-For: 203.0.113.9, 198.51.100.7"]
    ) as alice:
        alice.send(type="hello", name="alice")
        alice.expect("welcome", ip="198.51.100.7", port=0)


def test_forwarded_for_is_ignored_unless_trusted(gateway: InProcessGateway) -> None:
    with WsClient(gateway.url, gateway.origin, header=["X-Forwarded-For: 203.0.113.9"]) as alice:
        ip, port = alice.address
        alice.send(type="hello", name="alice")
        alice.expect("welcome", ip=ip, port=port)


def test_history_search_read_and_conversations_pass_through_unchanged(
    open_browser: Browser, core: ChatServer
) -> None:
    alice = open_browser()
    alice.hello("alice")
    with RawClient(core.address) as bob:
        bob.hello("bob")
        bob.send(type="send", to="alice", text="lunch on friday?", id="s")
        sent = bob.expect("sent", id="s")
    seq = sent["seq"]
    history = alice.request("history", **{"with": "bob", "limit": 10})
    assert history["type"] == "history"
    assert [(m["from"], m["text"], m["seq"]) for m in history["messages"]] == [
        ("bob", "lunch on friday?", seq)]
    assert history["more"] is False
    results = alice.request("search", q="friday lunch")
    assert [m["seq"] for m in results["messages"]] == [seq]
    conversations = alice.request("conversations")
    unread = {c["with"]: c["unread"] for c in conversations["conversations"]}
    assert unread["bob"] == 1
    read = alice.request("read", **{"with": "bob", "seq": seq})
    assert (read["type"], read["seq"]) == ("read", seq)


def test_a_new_websocket_resumes_the_session_and_gets_what_was_missed(
    open_browser: Browser, core: ChatServer
) -> None:
    alice = open_browser()
    welcome = alice.hello("alice")
    with RawClient(core.address) as bob:
        bob.hello("bob")
        alice.close()  # a reload: no exit
        bob.expect("away", name="alice")
        bob.send(type="send", to="alice", text="are you there?", id="s")
        seq = bob.expect("sent", id="s")["seq"]
        again = open_browser()
        again.send(type="hello", name="alice", resume=welcome["session"],
                   after=welcome["seq"], id="h")
        resumed = again.expect("welcome", id="h")
        assert (resumed["resumed"], resumed["session"]) == (True, welcome["session"])
        replayed = again.expect("message", text="are you there?")
        assert replayed["seq"] == seq
        bob.expect("back", name="alice")


def test_a_gateway_whose_secret_the_core_refuses_says_so_in_its_log(
    core: ChatServer, gateway_config: GatewayConfig, caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A CHAT_GATEWAY_SECRET that is not the core's (an easy slip when the two are started in
    two shells) refuses every browser: the gateway's log says why, not only that the core
    closed each connection; once for many websockets."""
    from web_gateway import relay

    monkeypatch.setattr(relay, "REFUSED_SECRET_LOG_RATE", relay.LogRate(every=60.0))
    wrong = replace(gateway_config, gateway_secret="not-the-core-s")
    with caplog.at_level(logging.ERROR, logger="web_gateway.relay"), running_gateway(wrong) as gw:
        for _ in range(3):
            with WsClient(gw.url, origin=gw.origin) as browser:
                browser.send(type="hello", name="alice")
                refused = browser.recv()
                assert (refused["type"], refused["code"]) == ("error", "forbidden")
        wait_until(lambda: any("refuses this gateway's secret" in r.getMessage()
                               for r in caplog.records), what="the gateway's error line")
    said = [r for r in caplog.records if "refuses this gateway's secret" in r.getMessage()]
    assert len(said) == 1
    assert "CHAT_GATEWAY_SECRET" in said[0].getMessage()
