"""The gateway under gunicorn: one gevent worker, a greenlet per connection.

gunicorn's gevent worker monkey-patches `socket` and `threading` before it loads the app, so
each connection, and each relay's core reader (and a writer while a socket is full:
web_gateway.relay), is a greenlet of a few kilobytes instead of a system thread: thousands of
idle websockets and half-sent requests cost little, and a page still opens among them. A
request's head must arrive within `--header-timeout` (gunicorn's keepalive setting bounds
the read of every request head, the first included), so half-sent requests are cut. Nothing
in the process blocks outside gevent: the relay's sockets and locks are the patched ones, and
tcp_server is imported for its codec.

On SIGTERM (graceful) and SIGINT/SIGQUIT (quick) the worker first ends every websocket itself
(each browser gets an error object and a close frame, each core connection is closed so that
the others see the user away), so that gunicorn is not left waiting for connections that
would never end on their own.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import socket
import struct
import time
from types import FrameType
from typing import Any

import gevent
from flask import Flask
from gunicorn.app.base import BaseApplication
from gunicorn.arbiter import Arbiter
from gunicorn.workers.ggevent import GeventWorker

from tcp_server.protocol import format_address
from tcp_server.reclaim import find_malloc_trim
from web_gateway import create_app, gateway_of
from web_gateway.config import GatewayConfig
from web_gateway.views import log_throttled

log = logging.getLogger(__name__)


# After a thousand websockets have come and gone the worker would keep their peak for good:
# their relays' reference cycles wait for a full collection, and glibc keeps freed memory in
# its heaps. Every few seconds, if websockets ended meanwhile, both are handed back.
MALLOC_TRIM_EVERY_S = 5.0
MALLOC_TRIM = find_malloc_trim()
RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() resets the connection


def _let_conditions_see_their_lock_is_held() -> None:
    """threading.Condition asks its lock whether the caller holds it (`_is_owned`); gevent's
    Lock cannot say, so Condition tries `acquire(False)`, and gevent's failing non-blocking
    acquire yields to the event loop: every notify() (each put into a relay's queue) became a
    trip around the loop with the queue's lock held, which cost the relay tens of milliseconds
    under load (bench load 6/2). A held lock is the caller's wherever Condition asks (notify
    and wait are only called with it held), so `locked()` answers the question."""
    from gevent.thread import LockType

    if not hasattr(LockType, "_is_owned"):
        LockType._is_owned = LockType.locked


class GatewayWorker(GeventWorker):  # type: ignore[misc]  # gunicorn has no type hints
    """gunicorn's gevent worker that ends the gateway's websockets when told to stop, and
    gives freed memory back to the system."""

    _quitting = False
    _next_trim = 0.0
    _ended_before = 0

    def patch(self) -> None:
        """gunicorn's gevent patching, before the app (and any Condition) is made."""
        super().patch()
        _let_conditions_see_their_lock_is_held()

    def notify(self) -> None:
        """gunicorn's heartbeat, every second in the worker's main loop."""
        super().notify()
        now = time.monotonic()
        if now >= self._next_trim:
            self._next_trim = now + MALLOC_TRIM_EVERY_S
            self._give_back_memory()

    def handle(self, listener: Any, client: socket.socket, addr: Any) -> None:
        """One accepted connection (in its own greenlet): from an address over its refusal
        budget (web_gateway.budget) it is reset at once, before gunicorn reads a byte; a
        refused attempt then costs an accept and a close, not a request's parsing and its
        answer. Behind a proxy (--trust-forwarded) every connection comes from the proxy's
        address: the browser's is only known from the request, where views.RefusalGate
        answers instead."""
        app = self._gateway_app()
        if app is not None and isinstance(addr, tuple):
            gateway = gateway_of(app)
            if not gateway.config.trust_forwarded and gateway.refusals.throttled(addr[0]):
                log_throttled(gateway, addr[0])
                with contextlib.suppress(OSError):
                    # A reset (linger 0): a flood leaves no TIME_WAIT sockets behind.
                    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RESET)
                client.close()
                return
        super().handle(listener, client, addr)

    def _gateway_app(self) -> Flask | None:
        app = getattr(self, "wsgi", None)  # None until the worker has loaded the app
        return app if isinstance(app, Flask) else None

    def _give_back_memory(self) -> None:
        # Only after websockets ended: a relay's objects form reference cycles that only a
        # full collection frees (a long-lived relay's objects sit in the oldest generation).
        app = self._gateway_app()
        ended = gateway_of(app).relays.ended_count() if app is not None else 0
        if ended == self._ended_before:
            return
        self._ended_before = ended
        gc.collect()
        if MALLOC_TRIM is not None:
            MALLOC_TRIM(0)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """SIGTERM: end the websockets, then let gunicorn finish its graceful stop."""
        if (app := self._gateway_app()) is not None:
            # In a greenlet of its own: a signal handler must not wait for a lock that the
            # greenlet it interrupted may hold.
            gevent.spawn(gateway_of(app).relays.stop_all)
        super().handle_exit(sig, frame)

    def handle_quit(self, sig: int, frame: FrameType | None) -> None:
        """SIGINT/SIGQUIT: end the websockets and wait (bounded) for them, then exit at once."""
        if self._quitting:  # Ctrl-C sends SIGINT, then the arbiter SIGQUIT: once is enough
            return
        self._quitting = True
        gevent.spawn(self._quit, sig, frame)  # waiting has no place in a signal handler

    def _quit(self, sig: int, frame: FrameType | None) -> None:
        if (app := self._gateway_app()) is not None:
            gateway = gateway_of(app)
            gateway.relays.stop_all()
            # gunicorn's quick exit would otherwise cut the websockets without a word.
            if not gateway.relays.wait_stopped(gateway.config.stop_grace + 2.0):
                log.warning("%d websockets did not end in time", gateway.relays.count())
        # gunicorn's own quick exit (GeventWorker's would spawn yet another greenlet for it).
        super(GeventWorker, self).handle_quit(sig, frame)

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
            "worker_connections": config.max_connections,
            "graceful_timeout": round(config.graceful_timeout),  # gunicorn wants whole seconds
            # The gevent worker reads every request head, the first included, under a timeout
            # of this many seconds: the header timeout (a positive whole number for gunicorn).
            "keepalive": max(1, round(config.header_timeout)),
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
