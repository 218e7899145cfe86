"""Fixtures for the gateway tests: a real core, a real gateway in-process, browser clients."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from tcp_server.server import ChatServer
from tests.support.core import running_server
from tests.support.gateway import SECRET, InProcessGateway, WsClient, running_gateway
from web_gateway.config import GatewayConfig

INDEX_HTML = "<!doctype html><title>test frontend</title>\n"


@pytest.fixture
def static_dir(tmp_path: Path) -> Path:
    """A stand-in frontend: the tests check serving, not the real frontend's content."""
    static = tmp_path / "static"
    (static / "css").mkdir(parents=True)
    (static / "index.html").write_text(INDEX_HTML)
    (static / "css" / "app.css").write_text("body { margin: 0 }\n")
    return static


@pytest.fixture
def core() -> Iterator[ChatServer]:
    with running_server(gateway_secret=SECRET) as server:
        yield server


@pytest.fixture
def gateway_config(core: ChatServer, static_dir: Path) -> GatewayConfig:
    host, port = core.address
    return GatewayConfig(core_host=host, core_port=port, gateway_secret=SECRET,
                         static_dir=static_dir)


@pytest.fixture
def gateway(gateway_config: GatewayConfig) -> Iterator[InProcessGateway]:
    with running_gateway(gateway_config) as gateway:
        yield gateway


@pytest.fixture
def open_browser(gateway: InProcessGateway) -> Iterator[Callable[[], WsClient]]:
    """Opens browser-like websockets (with the gateway's own Origin); all closed after."""
    with ExitStack() as stack:
        yield lambda: stack.enter_context(WsClient(gateway.url, origin=gateway.origin))
