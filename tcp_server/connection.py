"""One client connection: a reader loop (the connection's own thread) and a writer thread.

The reader turns bytes into requests through the connection's codec and hands them to the
commands; replies and deliveries are encoded and queued in the outbox, which only the writer
drains into the socket. Every wait has a wake-up path: the hello deadline bounds the reader's
first wait, shutting down the socket's read side wakes a blocked recv(), and closing the outbox
wakes the writer.
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import threading
import time
from collections.abc import Callable

from tcp_server.commands import Commands, Session
from tcp_server.config import ServerConfig
from tcp_server.outbox import Outbox
from tcp_server.protocol import (
    Bye,
    ErrorCode,
    Event,
    Exit,
    JsonLinesCodec,
    ProtocolError,
    Request,
)
from tcp_server.ratelimit import TokenBucket
from tcp_server.registry import Envelope

log = logging.getLogger(__name__)

RECV_BYTES = 65_536


class Connection:
    def __init__(
        self,
        sock: socket.socket,
        address: tuple[str, int],
        config: ServerConfig,
        commands: Commands,
    ) -> None:
        self._sock = sock
        self._sock_lock = threading.Lock()  # serializes shutdown() against close()
        self._config = config
        self._commands = commands
        self._codec = JsonLinesCodec()
        self._outbox = Outbox(config.max_outbox_bytes)
        self._bucket = TokenBucket(config.rate_limit, config.rate_burst)
        self.session = Session(ip=address[0], port=address[1], deliver=self.deliver)
        self._writer = threading.Thread(
            target=self._write_loop, name=f"writer-{self.session.peer}"
        )

    @property
    def peer(self) -> str:
        return self.session.peer

    # --- called from any thread -------------------------------------------------------------

    def deliver(self, envelope: Envelope) -> None:
        """Queue an event for this client without blocking; drop the client if it is full."""
        if not self._outbox.put(envelope.encoded(self._codec)):
            self._drop(f"send queue full ({self._config.max_outbox_bytes} bytes): not reading")

    def close(self, reason: str) -> None:
        """End the connection after what is queued, with a bye. Idempotent."""
        if self._outbox.close(self._codec.encode(Bye(reason=reason))):
            self._shutdown(socket.SHUT_RD)  # wakes the reader, which finishes the connection

    # --- the reader thread --------------------------------------------------------------------

    def run(self) -> None:
        log.info("%s connected", self.peer)
        self._writer.start()
        try:
            self._read_loop()
        except OSError as error:
            log.info("%s connection error: %s", self.peer, error)
        except Exception:
            log.exception("%s unexpected error; closing this connection", self.peer)
        finally:
            self._finish()

    def _read_loop(self) -> None:
        poller = select.poll()
        poller.register(self._sock, select.POLLIN)
        hello_deadline = time.monotonic() + self._config.hello_timeout
        while not self._outbox.closed:
            # Checked before every read, not only once the socket is quiet: a client that keeps
            # sending would otherwise outlive the deadline.
            if self.session.member is None and time.monotonic() >= hello_deadline:
                log.info("%s sent no hello in time", self.peer)
                self._reply(Bye(reason=f"no hello within {self._config.hello_timeout:g} s"))
                return
            wait_s = self._wait_limit(hello_deadline)
            if wait_s is not None and not poller.poll(max(0.0, wait_s) * 1000):
                if not self._process_all(self._codec.flush()):
                    return
                continue
            data = self._sock.recv(RECV_BYTES)
            if not data or not self._process_all(self._codec.feed(data)):
                return

    def _wait_limit(self, hello_deadline: float) -> float | None:
        limits = [self._codec.flush_timeout()]
        if self.session.member is None:
            limits.append(hello_deadline - time.monotonic())
        present = [limit for limit in limits if limit is not None]
        return min(present) if present else None

    def _process_all(self, items: list[Request | ProtocolError]) -> bool:
        """Handle requests in order; False when the connection is to close."""
        for item in items:
            if self._outbox.closed:  # dropped or shut down meanwhile: handle nothing more
                return False
            if isinstance(item, ProtocolError):
                self._reply(item.to_event())
                if item.code.closes_connection:
                    return False
                continue
            if not isinstance(item, Exit) and not self._bucket.take():
                self._reply(
                    ProtocolError(
                        ErrorCode.RATE_LIMITED,
                        f"slow down: at most {self._config.rate_limit:g} requests a second",
                        item.id,
                    ).to_event()
                )
                continue
            outcome = self._commands.handle(self.session, item)
            for reply in outcome.replies:
                self._reply(reply)
            if outcome.close:
                return False
        return True

    def _reply(self, event: Event) -> None:
        if not self._outbox.put(self._codec.encode(event)):
            self._drop("send queue full: not reading replies")

    def _finish(self) -> None:
        self._commands.leave(self.session)
        self._outbox.close()
        self._writer.join(self._config.close_timeout)
        if self._writer.is_alive():  # the peer does not take our last bytes: cut it off
            self._shutdown(socket.SHUT_RDWR)
            self._writer.join(self._config.close_timeout)
            if self._writer.is_alive():
                log.error("%s writer did not stop", self.peer)
        with self._sock_lock:
            self._sock.close()
        log.info("%s disconnected", self.peer)

    # --- the writer thread --------------------------------------------------------------------

    def _write_loop(self) -> None:
        try:
            while (batch := self._outbox.take()) is not None:
                self._sock.sendall(batch)
        except OSError as error:
            log.debug("%s write failed: %s", self.peer, error)
            self._abort()
        except Exception:
            log.exception("%s writer failed; closing this connection", self.peer)
            self._abort()

    # --- helpers ----------------------------------------------------------------------------

    def _drop(self, reason: str) -> None:
        if self._outbox.close(self._codec.encode(Bye(reason=reason)), discard=True):
            log.warning("%s dropped: %s", self.peer, reason)
            self._shutdown(socket.SHUT_RD)

    def _abort(self) -> None:
        self._outbox.close(discard=True)
        self._shutdown(socket.SHUT_RD)

    def _shutdown(self, how: int) -> None:
        # OSError: already disconnected or closed, so there is nothing left to wake.
        with self._sock_lock, contextlib.suppress(OSError):
            self._sock.shutdown(how)


def run_connection(connection: Connection, on_done: Callable[[Connection], None]) -> None:
    """Thread body: serve the connection, then tell its owner it is gone."""
    try:
        connection.run()
    finally:
        on_done(connection)
