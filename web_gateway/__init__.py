"""The chatroom's web gateway: serves the browser frontend and relays its websocket to the core.

`create_app(config)` builds the Flask application (there is no module-level app);
`python -m web_gateway` / `chat-web` runs it under gunicorn (web_gateway.server).
"""

from __future__ import annotations

import logging

from flask import Flask

from web_gateway.config import GatewayConfig
from web_gateway.registry import EXTENSION, Gateway, RelayRegistry, gateway_of
from web_gateway.relay import RECV_BYTES, WebSocketEvent, WebSocketThread

__all__ = ["GatewayConfig", "create_app", "gateway_of"]

log = logging.getLogger(__name__)


def create_app(config: GatewayConfig | None = None) -> Flask:
    """A new gateway application; `gateway_of(app).relays` holds its open websockets."""
    from web_gateway import views  # the routes need the package's modules, not the reverse

    config = config or GatewayConfig()
    app = Flask(__name__, static_folder=None)
    # Over-long frames get error line_too_long from the relay; only beyond this much larger
    # cap does simple-websocket close the websocket (1009) instead of buffering the frame.
    app.config["SOCK_SERVER_OPTIONS"] = {
        "max_message_size": config.max_message_bytes,
        "thread_class": WebSocketThread,
        "event_class": WebSocketEvent,
        # Reading the browser 64 KiB at a time (simple-websocket's default is 4 KiB): fewer
        # system calls, and more frames decoded per wake-up of the relay, under load.
        "receive_bytes": RECV_BYTES,
    }
    relays = RelayRegistry(config.max_websockets, stop_grace_s=config.stop_grace)
    app.extensions[EXTENSION] = Gateway(config, relays)
    app.register_blueprint(views.bp)
    if not (config.static_dir / "index.html").is_file():
        log.warning("the web frontend is missing: %s has no index.html; / answers 404",
                    config.static_dir)
    if not config.gateway_secret:
        log.warning("no gateway secret: websockets will be refused (set CHAT_GATEWAY_SECRET)")
    return app
