"""The chatroom's web gateway: serves the browser frontend and relays its websocket to the core.

`create_app(config)` builds the Flask application (there is no module-level app);
`python -m web_gateway` / `chat-web` runs it under gunicorn (web_gateway.server).
"""

from __future__ import annotations

import logging

from flask import Flask

from web_gateway.budget import RefusalThrottle
from web_gateway.config import GatewayConfig
from web_gateway.cores import CorePool
from web_gateway.registry import EXTENSION, Gateway, RelayRegistry, gateway_of
from web_gateway.websocket import NoReaderThread

__all__ = ["GatewayConfig", "create_app", "gateway_of"]

log = logging.getLogger(__name__)


def create_app(config: GatewayConfig | None = None) -> Flask:
    """A new gateway application; `gateway_of(app).relays` holds its open websockets."""
    from web_gateway import views  # the routes need the package's modules, not the reverse

    config = config or GatewayConfig()
    app = Flask(__name__, static_folder=None)
    # simple-websocket does the handshake only: the relay reads and writes the socket itself
    # (web_gateway.websocket), so simple-websocket's reader thread is not started.
    app.config["SOCK_SERVER_OPTIONS"] = {"thread_class": NoReaderThread}
    relays = RelayRegistry(
        config.max_websockets,
        stop_grace_s=config.stop_grace,
        max_per_ip=config.max_websockets_per_ip,
        opens_per_minute=config.max_opens_per_ip,
        ping_interval=config.ping_interval,
        pong_timeout=config.pong_timeout,
    )
    cores = CorePool(config.core_addresses, config.connect_timeout)
    gateway = Gateway(config, relays, cores,
                      RefusalThrottle(config.max_refusals, config.refusal_window))
    app.extensions[EXTENSION] = gateway
    app.register_blueprint(views.bp)
    app.wsgi_app = views.RefusalGate(app.wsgi_app, gateway)  # type: ignore[method-assign]
    if not (config.static_dir / "index.html").is_file():
        log.warning("the web frontend is missing: %s has no index.html; / answers 404",
                    config.static_dir)
    if not config.gateway_secret:
        log.warning("no gateway secret: websockets will be refused (set CHAT_GATEWAY_SECRET)")
    return app
