"""Every setting of the web gateway in one frozen object, built from flags (and one variable).

Only `__main__` reads the environment: it passes `os.environ` to `config_from_args`. The
gateway secret comes from `CHAT_GATEWAY_SECRET` only, never from a flag, so that it does not
show up in `ps` output or shell history.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from tcp_server.config import non_negative
from web_gateway.budget import ERROR_WINDOW_S, MAX_ERRORS, MAX_REFUSALS, REFUSAL_WINDOW_S

SECRET_ENV = "CHAT_GATEWAY_SECRET"

# static/ sits next to the package in the repository (an editable install serves it from here).
DEFAULT_STATIC_DIR = Path(__file__).resolve().parent.parent / "static"

# A browser frame is refused with line_too_long above the protocol's line limit; this is the
# hard cap above which simple-websocket closes the websocket (1009) instead of buffering the
# frame in full (it counts characters for text frames, bytes for binary ones). It is far
# above the line limit so that every over-long frame a real browser sends gets an error
# object, and low enough that one websocket cannot take much memory.
MAX_MESSAGE_BYTES = 1_048_576
# Per websocket and direction, like the core's send queue: a browser that does not read what
# it is sent for this many bytes is dropped, and so is one whose core stops reading.
MAX_QUEUE_BYTES = 1_048_576
# Dead peers (docs/history-and-sessions.md): every open websocket gets a ping this often, and
# one whose browser has answered none of them for PONG_TIMEOUT_S is closed, so a browser that
# vanished without closing (a laptop lid, a lost network) is found within the sum, 30 s. The
# core then sees its connection end without exit and marks the user away.
PING_INTERVAL_S = 10.0
PONG_TIMEOUT_S = 20.0
# Open websockets on one gateway process. Under the gevent worker one costs no thread and
# tens of kilobytes (docs/operations.md has the measured figure); the core has its own limit.
MAX_WEBSOCKETS = 5_000
# Like the core's --max-clients-per-ip: enough for a school or an office behind one NAT
# address (ngIRCd allows 5 per address, which would lock a classroom out), few enough that one
# address cannot take a noticeable share of the gateway.
MAX_WEBSOCKETS_PER_IP = 50
# Websockets opened a minute from one address that come to nothing (not welcomed by the core),
# after a first burst of MAX_WEBSOCKETS_PER_IP (or this, whichever is more): a page opens one,
# and one more on each reload or reconnection (with a backoff from a quarter of a second,
# doubling); a loop that opens and closes them makes the core accept and prove a connection
# each time.
MAX_OPENS_PER_IP = 60
# Every connection at once, websockets included (gunicorn's worker_connections): beyond it
# new connections wait in the listen backlog. Connections that are not websockets yet cost a
# greenlet and a small buffer each, and are cut after HEADER_TIMEOUT_S.
MAX_CONNECTIONS = 10_000
# A request's head (request line and headers) must arrive within this much time, and an idle
# keep-alive connection is closed after it: a half-sent request ("slowloris") costs little and
# not for long.
HEADER_TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    core_host: str = "127.0.0.1"
    core_port: int = 9000
    # --core A,B,...: the nodes after the first (core_host, core_port), same room.
    more_cores: tuple[tuple[str, int], ...] = ()
    gateway_secret: str | None = field(default=None, repr=False)
    allow_origins: tuple[str, ...] = ()
    trust_forwarded: bool = False
    static_dir: Path = DEFAULT_STATIC_DIR
    max_websockets: int = MAX_WEBSOCKETS
    max_websockets_per_ip: int = MAX_WEBSOCKETS_PER_IP
    max_opens_per_ip: int = MAX_OPENS_PER_IP
    max_connections: int = MAX_CONNECTIONS
    header_timeout: float = HEADER_TIMEOUT_S
    max_message_bytes: int = MAX_MESSAGE_BYTES
    max_queue_bytes: int = MAX_QUEUE_BYTES
    connect_timeout: float = 5.0
    close_timeout: float = 1.0
    # Error objects one websocket may earn (web_gateway.budget), and refusals one address.
    max_errors: int = MAX_ERRORS
    error_window: float = ERROR_WINDOW_S
    max_refusals: int = MAX_REFUSALS
    refusal_window: float = REFUSAL_WINDOW_S
    ping_interval: float = PING_INTERVAL_S
    pong_timeout: float = PONG_TIMEOUT_S
    graceful_timeout: float = 10.0
    log_level: str = "INFO"

    @property
    def core_address(self) -> tuple[str, int]:
        """The first core node (the only one unless --core lists several)."""
        return self.core_host, self.core_port

    @property
    def core_addresses(self) -> tuple[tuple[str, int], ...]:
        """Every core node, in the order given."""
        return (self.core_address, *self.more_cores)

    @property
    def stop_grace(self) -> float:
        """Seconds a stopping gateway gives each websocket to close before cutting it: enough
        to send what is queued, the error and the close frame, and to hear the browser's."""
        return 3 * self.close_timeout

    @property
    def open_files(self) -> int:
        """File descriptors the gateway may need at its limits: one per connection, one more
        per websocket (its core connection), and some for the process itself."""
        return self.max_connections + self.max_websockets + 64


def normalize_origin(origin: str) -> str:
    """The form in which origins are compared: lower case, no trailing slash or path.

    Raises ValueError for anything that is not scheme://host[:port].
    """
    parts = urlsplit(origin.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/"):
        raise ValueError(f"not an origin (scheme://host[:port]): {origin!r}")
    if parts.query or parts.fragment or "@" in parts.netloc:
        raise ValueError(f"not an origin (scheme://host[:port]): {origin!r}")
    netloc = parts.netloc.lower()
    default_port = {"http": ":80", "https": ":443"}[parts.scheme]
    if netloc.endswith(default_port):  # Origin headers never carry the scheme's own port
        netloc = netloc.removesuffix(default_port)
    return f"{parts.scheme}://{netloc}"


def _address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) <= 65_535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def _addresses(text: str) -> list[tuple[str, int]]:
    addresses = [_address(part.strip()) for part in text.split(",")]
    if len(set(addresses)) != len(addresses):
        raise argparse.ArgumentTypeError(f"a core is listed twice in {text!r}")
    return addresses


def _origin(text: str) -> str:
    try:
        return normalize_origin(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def build_parser() -> argparse.ArgumentParser:
    defaults = GatewayConfig()
    parser = argparse.ArgumentParser(
        prog="chat-web",
        description="The chatroom's web gateway: serves the browser frontend and relays its "
        "websocket /ws to the chat core, one core connection per browser.",
        epilog=f"The gateway secret is read from {SECRET_ENV}; the core must be started "
        "with the same one.",
    )
    parser.add_argument("--host", default=defaults.host,
                        help=f"address to listen on (default: {defaults.host})")
    parser.add_argument("--port", type=non_negative(int), default=defaults.port,
                        help=f"HTTP port to listen on, 0 for a free one (default: {defaults.port})")
    parser.add_argument("--core", type=_addresses, metavar="HOST:PORT[,HOST:PORT...]",
                        default=[defaults.core_address],
                        help="the chat core to relay to, or several nodes of one room: new "
                        "websockets go to each in turn, and to the next when one cannot be "
                        "reached (default: 127.0.0.1:9000)")
    parser.add_argument("--allow-origin", type=_origin, action="append", default=[],
                        metavar="ORIGIN",
                        help="another origin allowed to open websockets, e.g. "
                        "https://chat.example.com (repeatable; the gateway's own is always "
                        "allowed)")
    parser.add_argument("--trust-forwarded", action="store_true",
                        help="take the browser's IP from the last X-Forwarded-For entry; only "
                        "behind a reverse proxy that sets it")
    parser.add_argument("--static-dir", type=Path, default=defaults.static_dir,
                        help="the frontend's files (default: static/ of this repository)")
    parser.add_argument("--max-websockets", type=non_negative(int),
                        default=defaults.max_websockets,
                        help="websockets open at once; more are refused with error "
                        f"unavailable (default: {defaults.max_websockets})")
    parser.add_argument("--max-websockets-per-ip", type=non_negative(int),
                        default=defaults.max_websockets_per_ip,
                        help="websockets open at once from one browser address (an IPv6 "
                        "address counts as its /64; behind --trust-forwarded: the forwarded "
                        "one); more are refused with error "
                        f"unavailable (default: {defaults.max_websockets_per_ip})")
    parser.add_argument("--max-opens-per-ip", type=non_negative(int),
                        default=defaults.max_opens_per_ip,
                        help="websockets opened a minute from one browser address that come "
                        "to nothing (one the core welcomes does not count), after a first as "
                        "many as this or --max-websockets-per-ip, whichever is more; more are "
                        "refused with error unavailable; 0 for no limit "
                        f"(default: {defaults.max_opens_per_ip})")
    parser.add_argument("--max-connections", type=non_negative(int),
                        default=defaults.max_connections,
                        help="HTTP connections at once, websockets included; more wait to be "
                        f"accepted (default: {defaults.max_connections})")
    parser.add_argument("--header-timeout", type=non_negative(float),
                        default=defaults.header_timeout,
                        help="seconds for a request's headers to arrive, and for an idle "
                        "keep-alive connection, before it is closed "
                        f"(default: {defaults.header_timeout:g})")
    parser.add_argument("--max-message-bytes", type=non_negative(int),
                        default=defaults.max_message_bytes,
                        help="a browser frame this long closes its websocket (1009); longer "
                        "than a line is refused with line_too_long before that "
                        f"(default: {defaults.max_message_bytes})")
    parser.add_argument("--max-queue-bytes", type=non_negative(int),
                        default=defaults.max_queue_bytes,
                        help="bytes queued per websocket and direction before a peer that does "
                        f"not read is dropped (default: {defaults.max_queue_bytes})")
    parser.add_argument("--connect-timeout", type=non_negative(float),
                        default=defaults.connect_timeout,
                        help="seconds to reach the core for a new websocket "
                        f"(default: {defaults.connect_timeout:g})")
    parser.add_argument("--close-timeout", type=non_negative(float),
                        default=defaults.close_timeout,
                        help="seconds a closing websocket has to flush and answer the close "
                        f"(default: {defaults.close_timeout:g})")
    parser.add_argument("--max-errors", type=non_negative(int), default=defaults.max_errors,
                        help="error objects one websocket may earn (refused frames, and the "
                        "core's errors for its requests) within --error-window before it is "
                        f"closed (1008); 0 for no limit (default: {defaults.max_errors})")
    parser.add_argument("--error-window", type=non_negative(float),
                        default=defaults.error_window,
                        help="seconds in which --max-errors come back "
                        f"(default: {defaults.error_window:g})")
    parser.add_argument("--max-refusals", type=non_negative(int),
                        default=defaults.max_refusals,
                        help="websockets refused from one address within --refusal-window "
                        "before its further attempts get a bare 429; 0 for no limit "
                        f"(default: {defaults.max_refusals})")
    parser.add_argument("--refusal-window", type=non_negative(float),
                        default=defaults.refusal_window,
                        help="seconds in which --max-refusals come back "
                        f"(default: {defaults.refusal_window:g})")
    parser.add_argument("--ping-interval", type=non_negative(float),
                        default=defaults.ping_interval,
                        help="seconds between websocket pings to each browser, 0 for none "
                        f"(default: {defaults.ping_interval:g})")
    parser.add_argument("--pong-timeout", type=non_negative(float),
                        default=defaults.pong_timeout,
                        help="a browser that answers no ping for this many seconds is closed "
                        f"as gone (default: {defaults.pong_timeout:g})")
    parser.add_argument("--graceful-timeout", type=non_negative(float),
                        default=defaults.graceful_timeout,
                        help="seconds gunicorn gives a stopping worker "
                        f"(default: {defaults.graceful_timeout:g})")
    parser.add_argument("--log-level", default=defaults.log_level,
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help=f"(default: {defaults.log_level})")
    return parser


def config_from_args(argv: Sequence[str] | None, environ: Mapping[str, str]) -> GatewayConfig:
    """Parse the command line; the secret comes from `environ` (None when unset or empty)."""
    args = build_parser().parse_args(argv)
    (core_host, core_port), *more_cores = args.core
    return GatewayConfig(
        host=args.host,
        port=args.port,
        core_host=core_host,
        core_port=core_port,
        more_cores=tuple(more_cores),
        gateway_secret=environ.get(SECRET_ENV) or None,
        allow_origins=tuple(args.allow_origin),
        trust_forwarded=args.trust_forwarded,
        static_dir=args.static_dir,
        max_websockets=args.max_websockets,
        max_websockets_per_ip=args.max_websockets_per_ip,
        max_opens_per_ip=args.max_opens_per_ip,
        max_connections=args.max_connections,
        header_timeout=args.header_timeout,
        max_message_bytes=args.max_message_bytes,
        max_queue_bytes=args.max_queue_bytes,
        connect_timeout=args.connect_timeout,
        close_timeout=args.close_timeout,
        max_errors=args.max_errors,
        error_window=args.error_window,
        max_refusals=args.max_refusals,
        refusal_window=args.refusal_window,
        ping_interval=args.ping_interval,
        pong_timeout=args.pong_timeout,
        graceful_timeout=args.graceful_timeout,
        log_level=args.log_level,
    )
