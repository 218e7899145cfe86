"""The gateway under gunicorn: one gthread worker, one server thread per open websocket.

flask-sock runs under gunicorn's threaded worker; every websocket holds one of its threads
for its whole life, so `threads` is the number of websockets allowed plus a few spare ones
for the page and its files. On SIGTERM (graceful) and SIGINT/SIGQUIT (quick) the worker first
ends every websocket itself (each browser gets an error object and a close frame, each core
connection is closed so that the others see left), so that gunicorn is not left waiting
for connections that would never end on their own.
"""

from __future__ import annotations

import logging
from types import FrameType
from typing import Any

from flask import Flask
from gunicorn.app.base import BaseApplication
from gunicorn.arbiter import Arbiter
from gunicorn.workers.gthread import ThreadWorker

from tcp_server.protocol import format_address
from web_gateway import create_app, gateway_of
from web_gateway.config import GatewayConfig

log = logging.getLogger(__name__)


class GatewayWorker(ThreadWorker):  # type: ignore[misc]  # gunicorn has no type hints
    """gunicorn's gthread worker that ends the gateway's websockets when told to stop."""

    _quitting = False

    def _gateway_app(self) -> Flask | None:
        app = getattr(self, "wsgi", None)  # None until the worker has loaded the app
        return app if isinstance(app, Flask) else None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """SIGTERM: end the websockets, then let gunicorn finish its graceful stop."""
        if (app := self._gateway_app()) is not None:
            gateway_of(app).relays.stop_all()
        super().handle_exit(sig, frame)

    def handle_quit(self, sig: int, frame: FrameType | None) -> None:
        """SIGINT/SIGQUIT: end the websockets and wait (bounded) for them, then exit at once."""
        if self._quitting:  # Ctrl-C sends SIGINT, then the arbiter SIGQUIT: once is enough
            return
        self._quitting = True
        if (app := self._gateway_app()) is not None:
            gateway = gateway_of(app)
            gateway.relays.stop_all()
            # gunicorn's quick exit would otherwise wait for the websockets' threads to end.
            if not gateway.relays.wait_stopped(gateway.config.stop_grace + 2.0):
                log.warning("%d websockets did not end in time", gateway.relays.count())
        super().handle_quit(sig, frame)

    def run(self) -> None:
        """gunicorn's loop; after a SIGTERM it returns once every connection ended."""
        super().run()
        if (app := self._gateway_app()) is not None:
            gateway = gateway_of(app)
            gateway.relays.stop_all()  # a no-op after SIGTERM; needed if the arbiter died
            gateway.relays.wait_stopped(gateway.config.stop_grace + 2.0)  # joins gateway-stop


def _announce(arbiter: Arbiter) -> None:
    # when_ready: the listening socket is bound (with its real port when --port 0 was given).
    for listener in arbiter.LISTENERS:
        host, port = listener.sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        log.info("open http://%s:%d/ in a browser (websocket /ws)", shown, port)


class GatewayServer(BaseApplication):  # type: ignore[misc]  # gunicorn has no type hints
    """`chat-web` as a gunicorn application; run() returns only by SystemExit."""

    def __init__(self, config: GatewayConfig) -> None:
        self._config = config
        super().__init__(prog="chat-web")

    def load_config(self) -> None:
        config = self._config
        settings: dict[str, Any] = {
            "bind": [format_address(config.host, config.port)],
            "workers": 1,  # websockets hold threads; state lives in the core, one is enough
            "worker_class": GatewayWorker,
            "threads": config.threads,
            "worker_connections": config.threads + 64,  # the rest: idle keep-alive pages
            "graceful_timeout": round(config.graceful_timeout),  # gunicorn wants whole seconds
            "keepalive": 2,
            "loglevel": config.log_level.lower(),
            "errorlog": "-",
            "accesslog": None,
            "proc_name": "chat-web",
            "when_ready": _announce,
            "control_socket_disable": True,  # no gunicorn.ctl file: nothing uses it
        }
        for key, value in settings.items():
            self.cfg.set(key, value)

    def load(self) -> Flask:
        return create_app(self._config)
