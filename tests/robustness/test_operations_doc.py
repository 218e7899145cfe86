"""docs/operations.md documents every flag of the core and the gateway, with its variable."""

from __future__ import annotations

from dataclasses import fields

import pytest

from tcp_server.config import ServerConfig, env_name
from tests.support.process import ROOT
from web_gateway.config import build_parser

OPERATIONS = (ROOT / "docs" / "operations.md").read_text()


@pytest.mark.parametrize("field", [f.name for f in fields(ServerConfig)])
def test_every_core_flag_is_documented_with_its_variable(field: str) -> None:
    row = next((line for line in OPERATIONS.splitlines()
                if line.startswith(f"| `--{field.replace('_', '-')}`")), None)
    assert row is not None, f"--{field.replace('_', '-')} is not in docs/operations.md"
    assert f"`{env_name(field)}`" in row


@pytest.mark.parametrize(
    "flag",
    [a.option_strings[0] for a in build_parser()._actions if a.option_strings[0] != "-h"],
)
def test_every_gateway_flag_is_documented(flag: str) -> None:
    assert f"| `{flag}" in OPERATIONS, f"{flag} of chat-web is not in docs/operations.md"
