"""Fixtures for the terminal client's tests: client subprocesses of the test's core
(`server`, from tests/conftest.py)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import pytest

from tcp_server.server import ChatServer
from tests.support.cli import ClientProcess, client_command, running_client

StartClient = Callable[..., ClientProcess]


@pytest.fixture
def port(server: ChatServer) -> int:
    return server.address[1]


@pytest.fixture
def start_client(port: int) -> Iterator[StartClient]:
    """start_client("--name", "alice", pty_mode=False): a client of the test's server.

    Every client started is killed (if still running) and reaped at the end of the test.
    """
    with contextlib.ExitStack() as stack:

        def start(*args: str, pty_mode: bool = False) -> ClientProcess:
            return stack.enter_context(
                running_client(client_command(port, *args), pty_mode=pty_mode)
            )

        yield start
