from __future__ import annotations

from collections.abc import Iterator

import pytest

from tcp_server.server import ChatServer
from tests.support.core import running_server


@pytest.fixture
def server() -> Iterator[ChatServer]:
    with running_server() as server:
        yield server


@pytest.fixture
def address(server: ChatServer) -> tuple[str, int]:
    return server.address
