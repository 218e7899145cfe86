"""The gateway's routes: the frontend's files, and the websocket /ws relayed to the core."""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Mapping
from typing import Any

from flask import Blueprint, Response, current_app, g, request, send_from_directory
from flask_sock import Sock

from tcp_server.display import for_log
from web_gateway.config import normalize_origin
from web_gateway.registry import Gateway, Refused, gateway_of
from web_gateway.relay import (
    CLOSE_TRY_LATER,
    CORE_UNREACHABLE,
    Close,
    Ending,
    Relay,
    WebSocket,
    end_websocket,
    peer_name,
)

log = logging.getLogger(__name__)

bp = Blueprint("gateway", __name__)
sock = Sock()

NO_SECRET = Ending(
    Close(CLOSE_TRY_LATER, "the web gateway is not configured"),
    "the web gateway has no gateway secret (CHAT_GATEWAY_SECRET); ask its operator",
)


def _gateway() -> Gateway:
    return gateway_of(current_app)


# --- the frontend --------------------------------------------------------------------------


@bp.get("/")
def index() -> Response:
    return _static_file("index.html")


@bp.get("/<path:filename>")
def static_file(filename: str) -> Response:
    return _static_file(filename)


def _static_file(filename: str) -> Response:
    static_dir = _gateway().config.static_dir
    if not (static_dir / "index.html").is_file():
        log.error("the web frontend is missing: %s has no index.html", static_dir)
        return Response(
            "The chat's web frontend is not installed on this server "
            "(its static/index.html is missing).\n",
            status=404,
            mimetype="text/plain",
        )
    # send_from_directory refuses paths that leave static_dir ("../", absolute paths): 404.
    return send_from_directory(static_dir, filename)


@bp.after_app_request
def _security_headers(response: Response) -> Response:
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Content-Security-Policy", "frame-ancestors 'none'")
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    return response


# --- the websocket -------------------------------------------------------------------------


@bp.before_request
def _check_websocket_handshake() -> Response | None:
    """Refuse a bad handshake before flask-sock accepts it: cross-site origin, bad address."""
    if request.endpoint != "gateway.ws":
        return None
    config = _gateway().config
    origin = request.headers.get("Origin")
    if not _origin_allowed(origin, config.allow_origins):
        log.warning("websocket from %s refused: origin %s is not allowed",
                    request.remote_addr, for_log(origin))
        return Response(
            "websocket refused: this page's origin may not use this chat gateway\n",
            status=403,
            mimetype="text/plain",
        )
    try:
        g.browser = browser_address(request.environ, trust_forwarded=config.trust_forwarded)
    except ValueError as error:
        log.warning("websocket from %s refused: %s", request.remote_addr, error)
        return Response(f"websocket refused: {error}\n", status=400, mimetype="text/plain")
    return None


def _origin_allowed(origin: str | None, allowed: tuple[str, ...]) -> bool:
    # Browsers always send Origin with a websocket handshake, and a page cannot forge it: a
    # handshake without one is not from a browser page, and is refused like a foreign one.
    if origin is None:
        return False
    try:
        origin = normalize_origin(origin)
        own = normalize_origin(f"{request.scheme}://{request.host}")
    except ValueError:
        return False
    return origin == own or origin in allowed


def browser_address(environ: Mapping[str, Any], *, trust_forwarded: bool) -> tuple[str, int]:
    """The browser's IP and port as the gateway sees them (WSGI REMOTE_ADDR / REMOTE_PORT).

    With `trust_forwarded` (behind a reverse proxy), the IP is the last X-Forwarded-For entry,
    the address the proxy itself saw, and the port is 0: the proxy does not forward it.
    Raises ValueError when the address is not an IP address.
    """
    ip = str(environ.get("REMOTE_ADDR") or "")
    try:
        port = int(environ.get("REMOTE_PORT") or 0)
    except ValueError:
        port = 0
    forwarded = environ.get("HTTP_X_FORWARDED_FOR")
    if trust_forwarded and forwarded:
        ip, port = str(forwarded).split(",")[-1].strip(), 0
    try:
        ip = str(ipaddress.ip_address(ip))
    except ValueError:
        raise ValueError(f"the browser's address {for_log(ip, 60)} is not an IP address") from None
    if not 0 <= port <= 65_535:
        port = 0
    return ip, port


def ws(ws: WebSocket) -> None:
    """One browser: connect to the core for it, say who it is (proxy), relay until the end."""
    gateway = _gateway()
    config = gateway.config
    browser: tuple[str, int] = g.browser
    if not config.gateway_secret:
        end_websocket(ws, NO_SECRET, config.close_timeout)
        return
    try:
        with gateway.relays.slot() as slot:
            core = _connect_core(config.core_address, config.connect_timeout, browser)
            if core is None:
                end_websocket(ws, CORE_UNREACHABLE, config.close_timeout)
                return
            relay = Relay(
                ws,
                core,
                browser=browser,
                secret=config.gateway_secret,
                number=slot.number,
                max_queue_bytes=config.max_queue_bytes,
                close_timeout=config.close_timeout,
                ping_interval=config.ping_interval,
                pong_timeout=config.pong_timeout,
            )
            slot.attach(relay)
            _keep_alive(ws.sock)
            relay.run()
    except Refused as refused:
        log.warning("websocket from %s refused: %s", peer_name(browser), refused)
        end_websocket(ws, refused.ending, config.close_timeout)


# flask-sock does the handshake (after _check_websocket_handshake) and hands over the socket.
sock.route("/ws", bp=bp)(ws)


# A browser that vanishes without closing (a laptop lid, a lost network) is found by the
# relay's websocket pings within 30 s; TCP keep-alive probes are the backstop when pings are
# turned off (--ping-interval 0) and notice it within about 2 minutes.
KEEPALIVE_IDLE_S = 60
KEEPALIVE_INTERVAL_S = 10
KEEPALIVE_PROBES = 6


def _keep_alive(browser: socket.socket) -> None:
    try:
        browser.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        if hasattr(socket, "TCP_KEEPIDLE"):  # Linux; elsewhere the system's defaults apply
            browser.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, KEEPALIVE_IDLE_S)
            browser.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, KEEPALIVE_INTERVAL_S)
            browser.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, KEEPALIVE_PROBES)
    except OSError as error:  # the browser is gone already: the relay will notice at once
        log.debug("cannot enable keep-alive: %s", error)


def _connect_core(
    address: tuple[str, int], timeout: float, browser: tuple[str, int]
) -> socket.socket | None:
    try:
        core = socket.create_connection(address, timeout=timeout)
    except OSError as error:
        log.error("websocket from %s: cannot reach the core at %s: %s",
                  peer_name(browser), peer_name(address), error)
        return None
    core.settimeout(None)  # the relay's pumps block; their wake-up path is shutdown()
    core.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return core
