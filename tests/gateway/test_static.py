"""The gateway serves the frontend's files from static/, and says so when they are missing."""

from __future__ import annotations

import http.client
from dataclasses import replace
from pathlib import Path

import pytest

from tests.support.core import WAIT_S
from tests.support.gateway import InProcessGateway, running_gateway
from web_gateway.config import GatewayConfig

from .conftest import INDEX_HTML


def get(gateway: InProcessGateway, path: str) -> tuple[int, dict[str, str], str]:
    connection = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=WAIT_S)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, dict(response.headers), response.read().decode()
    finally:
        connection.close()


def test_root_serves_index_html(gateway: InProcessGateway) -> None:
    status, headers, body = get(gateway, "/")
    assert status == 200
    assert headers["Content-Type"].startswith("text/html")
    assert body == INDEX_HTML


def test_files_are_served_from_the_static_directory(gateway: InProcessGateway) -> None:
    status, headers, body = get(gateway, "/css/app.css")
    assert status == 200
    assert headers["Content-Type"].startswith("text/css")
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert body == "body { margin: 0 }\n"


@pytest.mark.parametrize("path", ["/nothing.js", "/../conftest.py", "/%2e%2e/conftest.py",
                                  "/css/../../conftest.py"])
def test_missing_or_outside_files_are_404(gateway: InProcessGateway, path: str) -> None:
    (gateway.app.extensions["chat_gateway"].config.static_dir.parent / "conftest.py").write_text(
        "secret"
    )
    status, _headers, body = get(gateway, path)
    assert status == 404
    assert "secret" not in body


def test_missing_frontend_is_a_clear_404(gateway_config: GatewayConfig, tmp_path: Path) -> None:
    config = replace(gateway_config, static_dir=tmp_path / "no-such-dir")
    with running_gateway(config) as gateway:
        status, headers, body = get(gateway, "/")
    assert status == 404
    assert headers["Content-Type"].startswith("text/plain")
    assert "web frontend is not installed" in body


def test_pages_may_not_be_framed(gateway: InProcessGateway) -> None:
    _status, headers, _body = get(gateway, "/")
    assert headers["Content-Security-Policy"] == "frame-ancestors 'none'"
