"""Every setting of the core in one frozen object, built from flags and CHAT_* variables.

Each flag `--some-limit` may also be given as the environment variable `CHAT_SOME_LIMIT`; a flag
on the command line wins. docs/operations.md lists them with the reasons for their defaults.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 9000
    max_clients: int = 1_000
    max_clients_per_ip: int = 50
    max_joins_per_ip: int = 60
    max_connects_per_ip: int = 60
    hello_timeout: float = 10.0
    rate_limit: float = 20.0
    rate_burst: int = 60
    max_outbox_bytes: int = 1_048_576
    close_timeout: float = 1.0
    shutdown_timeout: float = 1.5
    text_pause: float = 0.1
    gateway_secret: str | None = None
    log_level: str = "INFO"
    store: str = "sqlite"
    data_dir: str | None = None
    resume_grace: float = 120.0
    max_away: int = 0
    history_max_messages: int = 1_000_000
    history_max_days: float = 365.0
    redis: str | None = None
    node_id: str | None = None
    node_timeout: float = 10.0


_HELP: dict[str, str] = {
    "host": "address to listen on (use :: or 0.0.0.0 for every interface)",
    "port": "TCP port to listen on (0 picks a free one)",
    "max_clients": "connections allowed at once; more get error server_full",
    "max_clients_per_ip": "users (online or away) registered from one address (an IPv6 "
    "address counts as its /64); a browser counts by its own address, never the gateway's "
    "(0: no limit)",
    "max_joins_per_ip": "new users (hellos that register) a minute from one address (an IPv6 "
    "address counts as its /64), after a first as many as this or max_clients_per_ip, "
    "whichever is more; each session may also be resumed 6 times a minute after a first 10; "
    "each node counts its own (0: neither limit)",
    "max_connects_per_ip": "connections a minute from one address (an IPv6 address counts as "
    "its /64) that come to nothing (close or are closed before they register), after a first "
    "as many as this or max_clients_per_ip, whichever is more; more are closed at once with "
    "rate_limited. A connection that registers does not count, nor one refused because the "
    "server is full, nor any from an address that a gateway proved its own with the right "
    "secret (0: no limit)",
    "hello_timeout": "seconds a new connection has to complete hello before it is closed",
    "rate_limit": "requests a second allowed per connection on average; a conversations "
    "counts as 10, a search as 5 per word (at least 10), a history of over 100 messages as 2 "
    "(0: no limit)",
    "rate_burst": "requests a connection may send at once before rate_limit applies",
    "max_outbox_bytes": "bytes queued for a client that does not read before it is dropped",
    "close_timeout": "seconds to flush the last bytes (a bye) to a closing connection",
    "shutdown_timeout": "seconds a shutdown may take to finish requests in hand and flush "
    "every client's queue and bye (then the rest is cut off)",
    "text_pause": "seconds of silence that end a plain-text command sent without a newline",
    "gateway_secret": "shared secret of the trusted web gateway (none: refuse proxy requests)",
    "log_level": "DEBUG, INFO, WARNING or ERROR; message texts are only logged at DEBUG",
    "store": "sqlite (history and sessions on disk, in data_dir) or memory (forgotten at "
    "every restart)",
    "data_dir": "directory of the message store (history, sessions, read markers)",
    "resume_grace": "seconds a session whose connection ended without exit stays resumable "
    "(the user is shown away); 0: it ends at once",
    "max_away": "sessions kept away (resumable) at once; past it the oldest ends early "
    "(0: as many as max_clients)",
    "history_max_messages": "messages kept in history; older ones are deleted (0: no limit)",
    "history_max_days": "days a message is kept in history (0: no limit)",
    "redis": "redis://HOST:PORT/DB: join the room kept in that Redis with the other nodes "
    "using it (history, sessions and presence there; store and data_dir are then unused)",
    "node_id": "this node's name in Redis and in logs (none: HOST:PORT, from the hostname)",
    "node_timeout": "seconds without a heartbeat after which a node is taken for dead and "
    "its users are marked away (with --redis)",
}


def default_data_dir(environ: Mapping[str, str]) -> str:
    """$XDG_DATA_HOME/chatroom, else ~/.local/share/chatroom (systemd: /var/lib/chatroom)."""
    base = environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(base, "chatroom")


def env_name(field_name: str) -> str:
    return "CHAT_" + field_name.upper()


def non_negative(kind: type[int] | type[float]) -> Callable[[str], Any]:
    """An argparse type: `kind` from text, refusing negative values."""

    def parse(text: str) -> Any:
        value = kind(text)
        if value < 0:
            raise argparse.ArgumentTypeError(f"must not be negative: {text}")
        return value

    parse.__name__ = kind.__name__
    return parse


def build_parser(environ: Mapping[str, str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chat-server",
        description="The chatroom core: a threaded TCP chat server speaking protocol v1.",
        epilog="Every flag can also be set as CHAT_<FLAG> in the environment, "
        "e.g. CHAT_PORT=9001 or CHAT_GATEWAY_SECRET=...",
    )
    for field in fields(ServerConfig):
        default = field.default
        if field.name == "data_dir":
            default = default_data_dir(environ)
        shown = default  # before the environment's value: never print a secret
        kind: type = type(default) if default is not None else str
        flag = "--" + field.name.replace("_", "-")
        env_value = environ.get(env_name(field.name))
        parse = non_negative(kind) if kind in (int, float) else kind
        if env_value is not None:
            try:
                default = parse(env_value)
            except (ValueError, argparse.ArgumentTypeError) as error:
                parser.error(f"{env_name(field.name)}={env_value!r}: {error}")
        parser.add_argument(
            flag,
            type=parse,
            default=default,
            metavar=field.name.upper(),
            help=f"{_HELP[field.name]} (default: {shown}; env {env_name(field.name)})",
        )
    return parser


STORES = ("sqlite", "memory")


def config_from_args(argv: Sequence[str] | None, environ: Mapping[str, str]) -> ServerConfig:
    parser = build_parser(environ)
    args = parser.parse_args(argv)
    values = {field.name: getattr(args, field.name) for field in fields(ServerConfig)}
    if values["store"] not in STORES:
        parser.error(f"--store must be one of {', '.join(STORES)}, not {values['store']!r}")
    for optional in ("gateway_secret", "redis", "node_id"):
        if values[optional] == "":
            values[optional] = None
    if values["redis"] is not None and not values["redis"].startswith(
        ("redis://", "rediss://", "unix://")
    ):
        parser.error(f"--redis must be a redis:// URL, not {values['redis']!r}")
    if values["node_timeout"] < 1:
        parser.error("--node-timeout must be at least 1 second")
    return ServerConfig(**values)
