"""Fixtures of the robustness suite: every test here also proves the core logged no error.

The core turns an unexpected exception in a connection into `log.exception(...)` and closes only
that connection, so a crash would otherwise pass unnoticed: `no_core_errors` fails any test
during which a `tcp_server` logger wrote at ERROR or above.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

# The browser tests here use Debian's Chromium exactly as tests/e2e does.
from tests.e2e.conftest import base_url, browser_type_launch_args  # noqa: F401


class _ErrorRecords(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(autouse=True)
def no_core_errors() -> Iterator[None]:
    handler = _ErrorRecords()
    core_log = logging.getLogger("tcp_server")
    core_log.addHandler(handler)
    try:
        yield
    finally:
        core_log.removeHandler(handler)
    messages = [
        f"{record.name}: {record.getMessage()}"
        + (f"\n{logging.Formatter().formatException(record.exc_info)}" if record.exc_info else "")
        for record in handler.records
    ]
    assert not messages, "the core logged errors:\n" + "\n".join(messages)
