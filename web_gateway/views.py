"""The gateway's routes: the frontend's files, and the websocket /ws relayed to the core."""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from flask import Blueprint, Response, current_app, g, request, send_from_directory
from flask_sock import Sock

from tcp_server.addresses import address_group, canonical_ip
from tcp_server.display import for_log
from tcp_server.lograte import held_back
from web_gateway.budget import ErrorBudget
from web_gateway.config import normalize_origin
from web_gateway.registry import Gateway, Refused, gateway_of
from web_gateway.relay import (
    CLOSE_TRY_LATER,
    CORE_UNREACHABLE,
    RECV_BYTES,
    Ending,
    Relay,
    end_websocket,
    peer_name,
)
from web_gateway.websocket import BrowserSocket, refuse_compression

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

log = logging.getLogger(__name__)

bp = Blueprint("gateway", __name__)
sock = Sock()

NO_SECRET = Ending(
    CLOSE_TRY_LATER, "the web gateway is not configured",
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


def _refused(gateway: Gateway, ip: str, what: str, *args: object) -> bool:
    """Count a refused handshake or websocket against its address's budget (False: over
    it, answer as cheaply as possible) and log it, at most once a minute per address (with
    the count of those not logged)."""
    within = gateway.refusals.refused(ip)
    if (held := gateway.refusal_log.allow(address_group(ip))) is not None:
        log.warning("websocket from %s refused: " + what + "%s", ip, *args,
                    held_back(held, "refusals from this address"))
    return within


# An address over its refusal budget (web_gateway.budget) gets this for its websocket
# attempts, before Flask, flask-sock or a log line: what a flood of refused attempts costs.
THROTTLED_STATUS = "429 Too Many Requests"
THROTTLED_BODY = b"websocket refused: too many refused attempts from your address; wait a little\n"
THROTTLED_HEADERS = [("Content-Type", "text/plain; charset=utf-8"),
                     ("Content-Length", str(len(THROTTLED_BODY))), ("Retry-After", "1")]


class RefusalGate:
    """WSGI middleware in front of the gateway's app: a websocket attempt from an address
    over its refusal budget gets a bare 429 at once; everything else goes to the app."""

    def __init__(self, app: WSGIApplication, gateway: Gateway) -> None:
        self._app = app
        self._gateway = gateway

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse
                 ) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == "/ws":
            ip = _refusal_key(environ, self._gateway.config.trust_forwarded)
            if self._gateway.refusals.throttled(ip):
                log_throttled(self._gateway, ip)
                start_response(THROTTLED_STATUS, THROTTLED_HEADERS)
                return [THROTTLED_BODY]
        return self._app(environ, start_response)


def log_throttled(gateway: Gateway, ip: str) -> None:
    """An attempt from an address over its refusal budget: counted for the next line about
    the address, which is logged at most once a minute."""
    if (held := gateway.refusal_log.allow(address_group(ip))) is not None:
        log.warning("websocket from %s refused: too many refused attempts%s", ip,
                    held_back(held, "refusals from this address"))


def _refusal_key(environ: Mapping[str, Any], trust_forwarded: bool) -> str:
    """The address whose refusals are counted: the browser's (behind a proxy, the forwarded
    one, never the proxy's own), or the connection's when that is not an IP address."""
    try:
        return browser_address(environ, trust_forwarded=trust_forwarded)[0]
    except ValueError:
        return str(environ.get("REMOTE_ADDR") or "")


@bp.before_request
def _check_websocket_handshake() -> Response | None:
    """Refuse a bad handshake before flask-sock accepts it: cross-site origin, bad address."""
    if request.endpoint != "gateway.ws":
        return None
    gateway = _gateway()
    config = gateway.config
    origin = request.headers.get("Origin")
    local = local_address(request.environ)
    if not origin_allowed(origin, own_origins(config.host, local) | set(config.allow_origins)):
        _refused(gateway, _refusal_key(request.environ, config.trust_forwarded),
                 "origin %s is not allowed", for_log(origin))
        return Response(
            "websocket refused: this page's origin may not use this chat gateway\n",
            status=403,
            mimetype="text/plain",
        )
    try:
        g.browser = browser_address(request.environ, trust_forwarded=config.trust_forwarded)
    except ValueError as error:
        _refused(gateway, _refusal_key(request.environ, config.trust_forwarded), "%s", error)
        return Response(f"websocket refused: {error}\n", status=400, mimetype="text/plain")
    refuse_compression(request.environ)
    return None


def local_address(environ: Mapping[str, Any]) -> tuple[str, int] | None:
    """The address the browser's connection reached (the listening socket's own, never a
    header): from the server's socket in the WSGI environment."""
    for key in ("gunicorn.socket", "werkzeug.socket"):
        if (conn := environ.get(key)) is not None:
            try:
                host, port = conn.getsockname()[:2]
            except OSError:
                return None
            return str(host), int(port)
    return None


LOCALHOST_FORMS = ("localhost", "127.0.0.1", "[::1]")


def own_origins(listen_host: str, local: tuple[str, int] | None) -> set[str]:
    """The gateway's own origins for a connection that reached `local`: http:// with the
    port it reached, and as host the configured --host (unless a wildcard), the address the
    connection reached, or a localhost form. The Host header plays no part: a page of
    http://evil.example that resolves to this gateway (DNS rebinding) is not among them."""
    if local is None:
        return set()
    ip, port = local
    hosts = {*LOCALHOST_FORMS, f"[{ip}]" if ":" in ip else ip}
    if listen_host not in ("", "0.0.0.0", "::"):
        hosts.add(f"[{listen_host}]" if ":" in listen_host else listen_host)
    origins = set()
    for host in hosts:
        try:
            origins.add(normalize_origin(f"http://{host}:{port}"))
        except ValueError:  # a --host that is no URL host: it names no origin
            continue
    return origins


def origin_allowed(origin: str | None, allowed: set[str]) -> bool:
    """Whether a handshake's Origin is one of `allowed` (normalized origins).

    Browsers always send Origin with a websocket handshake, and a page cannot forge it: a
    handshake without one is not from a browser page, and is refused like a foreign one.
    """
    if origin is None:
        return False
    try:
        return normalize_origin(origin) in allowed
    except ValueError:
        return False


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
        ip = canonical_ip(ip)
    except ValueError:
        raise ValueError(f"the browser's address {for_log(ip, 60)} is not an IP address") from None
    if not 0 <= port <= 65_535:
        port = 0
    return ip, port


def ws(server: Any) -> None:
    """One browser: connect to a core for it, say who it is (proxy), relay until the end.

    `server` is simple-websocket's Server after the handshake; BrowserSocket reads it.
    """
    gateway = _gateway()
    config = gateway.config
    peer: tuple[str, int] = g.browser
    server.sock.settimeout(None)  # the header timeout of the request's socket ends here
    browser = BrowserSocket(server, max_message_bytes=config.max_message_bytes,
                            recv_bytes=RECV_BYTES)
    if not config.gateway_secret:
        _end_refused(gateway, browser, peer[0], NO_SECRET)
        return
    try:
        with gateway.relays.slot(peer[0]) as slot:
            core = gateway.cores.connect(peer_name(peer))
            if core is None:
                slot.give_back()
                _end_refused(gateway, browser, peer[0], CORE_UNREACHABLE)
                return
            relay = Relay(
                browser,
                core,
                peer=peer,
                secret=config.gateway_secret,
                number=slot.number,
                max_queue_bytes=config.max_queue_bytes,
                close_timeout=config.close_timeout,
                errors=ErrorBudget(config.max_errors, config.error_window),
                on_signed_in=slot.give_back,
            )
            slot.attach(relay)
            _keep_alive(browser.sock)
            relay.run()
    except Refused as refused:
        _end_refused(gateway, browser, peer[0], refused.ending)


def _end_refused(gateway: Gateway, browser: BrowserSocket, ip: str, ending: Ending) -> None:
    """A websocket refused after its handshake: tell the browser why and close, waiting up
    to close_timeout for its answer; over the address's refusal budget, without waiting."""
    within = _refused(gateway, ip, "%s", ending.error)
    end_websocket(browser, ending, gateway.config.close_timeout if within else 0.0)


# flask-sock does the handshake (after _check_websocket_handshake) and hands over the socket.
sock.route("/ws", bp=bp)(ws)


# A browser that vanishes without closing (a laptop lid, a lost network) is found by the
# registry's websocket pings within 30 s; TCP keep-alive probes are the backstop when pings are
# turned off (--ping-interval 0) and notice it within about 2 minutes.
KEEPALIVE_IDLE_S = 60
KEEPALIVE_INTERVAL_S = 10
KEEPALIVE_PROBES = 6


def _keep_alive(browser: socket.socket) -> None:
    try:
        # Small frames go out at once: Nagle's algorithm would hold one back until the
        # browser's delayed ACK of the one before (up to 40 ms).
        browser.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        browser.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        if hasattr(socket, "TCP_KEEPIDLE"):  # Linux; elsewhere the system's defaults apply
            browser.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, KEEPALIVE_IDLE_S)
            browser.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, KEEPALIVE_INTERVAL_S)
            browser.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, KEEPALIVE_PROBES)
    except OSError as error:  # the browser is gone already: the relay will notice at once
        log.debug("cannot enable keep-alive: %s", error)
