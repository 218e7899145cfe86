from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator

import pytest

from tcp_server.server import ChatServer
from tests.support.core import running_server
from tests.support.redis_server import RedisServer


@pytest.fixture(scope="session", autouse=True)
def private_data_home() -> Iterator[str]:
    """Every core a test starts without --data-dir (a process started as the README or a unit
    file does) keeps its store under a directory of this test session, never the user's."""
    with tempfile.TemporaryDirectory(prefix="chatroom-tests-") as data_home:
        previous = os.environ.get("XDG_DATA_HOME")
        os.environ["XDG_DATA_HOME"] = data_home
        try:
            yield data_home
        finally:
            if previous is None:
                del os.environ["XDG_DATA_HOME"]
            else:
                os.environ["XDG_DATA_HOME"] = previous


@pytest.fixture(autouse=True)
def private_data_home_per_test(private_data_home: str) -> Iterator[str]:
    """Each test's cores started without --data-dir get a store of their own: an earlier
    test's sessions (resumable for two minutes) are never restored into a later test's core.
    (Under two workers, the files' order changed, and a test counting the users found an away
    `alice` left by another file.) Session- and module-scoped fixtures, set up before this,
    keep the session's directory."""
    data_home = tempfile.mkdtemp(prefix="test-", dir=private_data_home)
    previous = os.environ["XDG_DATA_HOME"]
    os.environ["XDG_DATA_HOME"] = data_home
    try:
        yield data_home
    finally:
        os.environ["XDG_DATA_HOME"] = previous


@pytest.fixture
def server() -> Iterator[ChatServer]:
    with running_server() as server:
        yield server


@pytest.fixture
def address(server: ChatServer) -> tuple[str, int]:
    return server.address


@pytest.fixture(scope="session")
def redis_session() -> Iterator[RedisServer]:
    """One redis-server for the test session (`redis-server --save '' --appendonly no` on a
    free port, stopped by pid at the end)."""
    server = RedisServer()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def redis_url(redis_session: RedisServer) -> str:
    """The session's Redis, emptied for this test."""
    redis_session.flush()
    return redis_session.url
