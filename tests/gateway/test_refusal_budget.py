"""The cost of refused websocket attempts: each address may have --max-refusals of them (bad
Origin, bad address, its websocket limit, a full gateway, ...) within --refusal-window; past
that its further attempts are reset at accept (or, behind a proxy, answered with a bare 429)
until the budget has room again, while every other address is served as usual."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest

from tcp_server.server import ChatServer
from tests.gateway.rawws import connect, get_page, handshake, worker_pid
from tests.support.core import wait_until
from tests.support.gateway import WsClient, gateway_process, running_gateway
from web_gateway.budget import RefusalThrottle
from web_gateway.config import GatewayConfig

log = logging.getLogger(__name__)

BUDGET = 3
EVIL = "http://evil.example"


# --- the throttle ----------------------------------------------------------------------------


def test_an_address_is_throttled_only_past_its_budget() -> None:
    throttle = RefusalThrottle(BUDGET, 1_000.0)
    assert [throttle.refused("10.0.0.1") for _ in range(BUDGET + 1)] == [True] * BUDGET + [False]
    assert throttle.throttled("10.0.0.1")
    assert not throttle.throttled("10.0.0.2")  # another address is not


def test_a_throttled_address_is_let_through_once_its_budget_has_room() -> None:
    now = [0.0]
    throttle = RefusalThrottle(2, 10.0, clock=lambda: now[0])  # one back each 5 s
    assert throttle.refused("10.0.0.1")
    assert throttle.refused("10.0.0.1")
    assert not throttle.refused("10.0.0.1")
    now[0] = 4.9
    assert throttle.throttled("10.0.0.1")  # a flood's attempts count: it stays throttled
    now[0] = 10.0
    assert not throttle.throttled("10.0.0.1")
    assert not throttle.throttled("10.0.0.1")  # no longer over: not even looked at


def test_a_zero_budget_never_throttles() -> None:
    throttle = RefusalThrottle(0, 10.0)
    assert all(throttle.refused("10.0.0.1") for _ in range(1_000))
    assert not throttle.throttled("10.0.0.1")


# --- against a gateway in-process (the WSGI path: 429) ---------------------------------------


@pytest.fixture
def budget_config(gateway_config: GatewayConfig) -> GatewayConfig:
    return replace(gateway_config, max_refusals=BUDGET, refusal_window=1_000.0)


def status(port: int, **options: str) -> bytes:
    sock, head = handshake(port, **options)
    sock.close()
    return head.split(b"\r\n", 1)[0]


def test_refusals_past_the_budget_get_a_bare_429_and_other_addresses_get_in(
    budget_config: GatewayConfig,
) -> None:
    with running_gateway(budget_config) as gateway:
        statuses = [status(gateway.port, source="127.0.0.2", origin=EVIL)
                    for _ in range(BUDGET + 2)]
        # The refusal over the budget is still answered in full; the next one is not.
        assert statuses == [b"HTTP/1.1 403 FORBIDDEN"] * (BUDGET + 1) + [
            b"HTTP/1.1 429 Too Many Requests"]
        # Even with the right origin now: the address is over its budget.
        assert status(gateway.port, source="127.0.0.2", origin=gateway.origin).startswith(
            b"HTTP/1.1 429")
        with WsClient(gateway.url, gateway.origin, socket=connect(gateway.port, "127.0.0.3")
                      ) as other:
            other.hello("other")
        page, _ = get_page(gateway.port, source="127.0.0.2")  # pages are not refusals
        assert page == b"HTTP/1.1 200 OK"


def test_behind_a_proxy_refusals_count_per_forwarded_address(
    budget_config: GatewayConfig,
) -> None:
    """Every connection comes from the proxy: counting its address would let one browser
    lock every other out."""
    with running_gateway(replace(budget_config, trust_forwarded=True)) as gateway:
        for _ in range(BUDGET + 2):
            status(gateway.port, origin=EVIL, forwarded_for="10.6.6.6")
        assert status(gateway.port, origin=EVIL, forwarded_for="10.6.6.6").startswith(
            b"HTTP/1.1 429")
        assert status(gateway.port, origin=gateway.origin, forwarded_for="10.7.7.7").startswith(
            b"HTTP/1.1 101")


def test_behind_a_proxy_an_ipv6_browser_s_refusals_count_per_64(
    budget_config: GatewayConfig,
) -> None:
    """Each attempt from another address of one /64 (free for an IPv6 host) is one budget."""
    with running_gateway(replace(budget_config, trust_forwarded=True)) as gateway:
        for number in range(BUDGET + 2):
            status(gateway.port, origin=EVIL, forwarded_for=f"2001:db8:6:6::{number + 1:x}")
        assert status(gateway.port, origin=gateway.origin,
                      forwarded_for="2001:db8:6:6::abc").startswith(b"HTTP/1.1 429")
        assert status(gateway.port, origin=gateway.origin,
                      forwarded_for="2001:db8:6:7::1").startswith(b"HTTP/1.1 101")


def test_websockets_refused_after_the_handshake_count_too(
    budget_config: GatewayConfig,
) -> None:
    with running_gateway(replace(budget_config, max_websockets_per_ip=1)) as gateway, \
            WsClient(gateway.url, gateway.origin, socket=connect(gateway.port, "127.0.0.4")
                     ) as held:
        held.hello("held")
        for _ in range(BUDGET + 1):  # each gets its handshake, an error and a close
            sock, head = handshake(gateway.port, source="127.0.0.4", origin=gateway.origin)
            with sock:
                assert head.startswith(b"HTTP/1.1 101")
                # The refusal is counted before its error is sent: once that arrives, the
                # next attempt is judged with it (not racing it).
                assert head.split(b"\r\n\r\n", 1)[1] or sock.recv(4096)
        assert status(gateway.port, source="127.0.0.4", origin=gateway.origin).startswith(
            b"HTTP/1.1 429")


# --- the flood against the real gateway process -------------------------------------------------


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


@pytest.mark.slow
def test_a_flood_of_refused_attempts_is_reset_while_another_address_is_served(
    core: ChatServer, static_dir: Path
) -> None:
    host, port = core.address
    attempts, senders = 2_000, 4
    outcomes: Counter[str] = Counter()
    lock = threading.Lock()

    def attack(gateway_port: int) -> None:
        for _ in range(attempts // senders):
            try:
                outcome = status(gateway_port, source="127.0.10.1", origin=EVIL).decode()
            except (ConnectionResetError, BrokenPipeError):
                outcome = "reset"
            with lock:
                outcomes[outcome or "closed"] += 1

    with gateway_process("--core", f"{host}:{port}", static_dir=static_dir) as gateway:
        worker = worker_pid(gateway.proc.pid)
        get_page(gateway.port)  # the app is loaded
        before = cpu_ticks(worker)
        started = time.monotonic()
        threads = [threading.Thread(target=attack, args=(gateway.port,), name="test-flood")
                   for _ in range(senders)]
        try:
            for thread in threads:
                thread.start()
            with contextlib.suppress(AssertionError):  # then during what is left of it
                wait_until(lambda: sum(outcomes.values()) >= attempts // 4, timeout=5.0)
            page, page_s = get_page(gateway.port, source="127.0.10.2")
            opened = time.monotonic()
            with WsClient(gateway.url, gateway.origin,
                          socket=connect(gateway.port, "127.0.10.2")) as other:
                other.hello("other")
                websocket_s = time.monotonic() - opened
            during = sum(outcomes.values())
        finally:
            for thread in threads:
                thread.join()
        elapsed = time.monotonic() - started
        used_s = (cpu_ticks(worker) - before) / 100
    refusals = [line for line in gateway.log if "refused" in line and "127.0.10.1" in line]
    log.warning("%d refused attempts from one address in %.2f s: %s; gateway CPU %.0f us an "
                "attempt; another address (after %d attempts): a page in %.1f ms, a websocket "
                "welcomed in %.1f ms; %d log lines", attempts, elapsed, dict(outcomes),
                used_s / attempts * 1e6, during, page_s * 1e3, websocket_s * 1e3,
                len(refusals))
    assert page == b"HTTP/1.1 200 OK"
    assert sum(outcomes.values()) == attempts
    # 20 at once, then 2 a second, each let through once and refused again (so about one
    # a second answered in full): the rest are reset before gunicorn reads them.
    assert outcomes["HTTP/1.1 403 FORBIDDEN"] <= 20 + 2 * elapsed + 1
    assert outcomes["reset"] + outcomes["closed"] >= attempts - 20 - 2 * elapsed - 1
    assert len(refusals) == 1, refusals
