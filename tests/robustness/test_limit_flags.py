"""Every limit of the core and the gateway can be set by a flag, and defaults to its config."""

from __future__ import annotations

from dataclasses import fields

import pytest

from tcp_server.config import ServerConfig
from tcp_server.config import config_from_args as core_config_from_args
from web_gateway.config import GatewayConfig
from web_gateway.config import config_from_args as gateway_config_from_args

GATEWAY_LIMITS = [
    ("--max-websockets", "max_websockets", "7", 7),
    ("--max-message-bytes", "max_message_bytes", "2097152", 2_097_152),
    ("--max-queue-bytes", "max_queue_bytes", "65536", 65_536),
    ("--connect-timeout", "connect_timeout", "2.5", 2.5),
    ("--close-timeout", "close_timeout", "0.5", 0.5),
    ("--graceful-timeout", "graceful_timeout", "20", 20.0),
]


@pytest.mark.parametrize(("flag", "field", "text", "value"), GATEWAY_LIMITS)
def test_every_gateway_limit_is_a_flag(flag: str, field: str, text: str, value: object) -> None:
    assert getattr(gateway_config_from_args([flag, text], {}), field) == value


def test_gateway_flags_default_to_the_gateway_config() -> None:
    assert gateway_config_from_args([], {}) == GatewayConfig()


@pytest.mark.parametrize(("flag", "field", "text", "value"), GATEWAY_LIMITS)
def test_negative_gateway_limits_are_refused(
    flag: str, field: str, text: str, value: object
) -> None:
    with pytest.raises(SystemExit):
        gateway_config_from_args([flag, "-1"], {})


@pytest.mark.parametrize("field", [f for f in fields(ServerConfig) if f.type in ("int", "float")],
                         ids=lambda f: f.name)
def test_every_numeric_core_setting_is_a_flag(field: object) -> None:
    name = field.name  # type: ignore[attr-defined]
    config = core_config_from_args([f"--{name.replace('_', '-')}", "3"], {})
    assert getattr(config, name) == 3
