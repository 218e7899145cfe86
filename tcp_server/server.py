"""The accept loop: one thread per client connection (its reader; the shared flusher writes
every socket), and a clean shutdown bounded by one deadline for all connections."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import selectors
import socket
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path
from typing import TYPE_CHECKING

from tcp_server.addresses import address_group
from tcp_server.commands import Commands
from tcp_server.config import ServerConfig
from tcp_server.connection import Connection, ShutdownGate, run_connection
from tcp_server.flusher import Flusher
from tcp_server.lograte import LogRate, held_back
from tcp_server.memory_store import MemoryStore
from tcp_server.protocol import ErrorCode, JsonLinesCodec, ProtocolError, format_address
from tcp_server.reclaim import Reclaimer
from tcp_server.registry import LocalRoom, Room
from tcp_server.store import DB_FILE, MessageStore, Retention, SqliteStore

if TYPE_CHECKING:  # imported when used: a core without --redis never loads redis-py
    from tcp_server.redis_room import RedisRoom

log = logging.getLogger(__name__)

# Connections the kernel completes before accept(): a restart brings every client back at once
# (10,000 resuming within a second). Linux caps it at net.core.somaxconn (4096 by default).
LISTEN_BACKLOG = 4_096
# A reader thread's stack: it runs the codec, the commands and SQLite reads, never deep
# recursion (JSON nesting is bounded in protocol.py). Only touched pages count in RSS, but a
# smaller reservation keeps 10,000 threads' address space and page tables small. Measured:
# json's C decoder on 3.13 needs about 100 bytes of stack per nesting level.
READER_STACK_BYTES = 512 * 1024
# At a shutdown, readers are woken this many at a time (see ShutdownGate), each batch once
# the one before has arrived or after WAKE_BATCH_WAIT_S (a reader busy with a request).
WAKE_BATCH = 64
WAKE_BATCH_WAIT_S = 0.02
ACCEPTS_PER_WAKEUP = 64
KEEPALIVE_IDLE_S = 10
KEEPALIVE_INTERVAL_S = 5
KEEPALIVE_PROBES = 3
USER_TIMEOUT_MS = 25_000


class ChatServer:
    """Binds at construction (so `address` is known at once); serve_forever() runs it.

    stop() may be called from any thread or a signal handler; serve_forever() then says bye to
    every client, waits for their threads and returns.
    """

    def __init__(self, config: ServerConfig, room: Room | None = None) -> None:
        self._config = config
        self._listener = _listen(config.host, config.port)
        self._redis_room: RedisRoom | None = None
        if config.redis is not None and room is None:  # several nodes: docs/operations.md
            from tcp_server.redis_room import RedisRoom

            room = self._redis_room = RedisRoom(
                config.redis, self.node_id, config.node_timeout, config.resume_grace)
        self.room: Room = room if room is not None else LocalRoom()
        self._scratch: tempfile.TemporaryDirectory[str] | None = None
        try:
            self.store = self._open_store(config)
            if self._redis_room is not None:
                self._redis_room.start(self.store.end_session)
        except BaseException:
            self._listener.close()
            raise
        self._commands = Commands(
            self.room, self.store, config.gateway_secret, resume_grace=config.resume_grace,
            max_away=config.max_away or config.max_clients,
            max_per_address=config.max_clients_per_ip,
            joins_per_minute=config.max_joins_per_ip,
            connects_per_minute=config.max_connects_per_ip,
        )
        try:
            self._commands.start()
        except BaseException:
            self._commands.stop()
            self.store.close()
            if self._redis_room is not None:
                self._redis_room.close()
            self._listener.close()
            raise
        self._wake_reader, self._wake_writer = socket.socketpair()
        self._stop_reason = "server shutting down"
        # _lock guards _threads; _all_gone (its condition) is notified when it becomes empty.
        self._lock = threading.Lock()
        self._all_gone = threading.Condition(self._lock)
        self._threads: dict[Connection, threading.Thread] = {}
        self._flusher = Flusher()
        self._gate = ShutdownGate()
        self._reclaimer = Reclaimer()  # memory back to the system after crowds leave
        # 30 connections from one address logged at once, then one a second: see lograte.py
        self._connection_lines = LogRate(every=1.0, burst=30)
        # Held in reserve for accepting (and refusing) a client when descriptors run out.
        self._spare_fd = os.open(os.devnull, os.O_RDONLY)

    @property
    def node_id(self) -> str:
        """This node's name in Redis: --node-id, else the hostname and the port."""
        return self._config.node_id or f"{socket.gethostname()}:{self.address[1]}"

    def _open_store(self, config: ServerConfig) -> MessageStore:
        retention = Retention(config.history_max_messages, config.history_max_days)
        if config.redis is not None:
            from tcp_server.redis_store import RedisStore

            # Never the URL itself: it may hold a password.
            log.info("node %s: room in redis at %s", self.node_id,
                     urllib.parse.urlsplit(config.redis).hostname or config.redis[:8])
            return RedisStore(config.redis, self.node_id, retention=retention)
        if config.store == "memory":
            return MemoryStore(on_commit=self.room.publish, retention=retention)
        if not config.data_dir:  # tests, embedding: a private store that goes with the server
            self._scratch = tempfile.TemporaryDirectory(prefix="chatroom-")
        data_dir = config.data_dir or self._scratch.name  # type: ignore[union-attr]
        log.info("message store: %s", Path(data_dir).resolve() / DB_FILE)
        return SqliteStore(data_dir, on_commit=self.room.publish, retention=retention)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._listener.getsockname()[:2]
        return host, port

    def connection_count(self) -> int:
        with self._lock:
            return len(self._threads)

    def stop(self, reason: str = "server shutting down") -> None:
        """Ask serve_forever() to finish. Safe from any thread and from signal handlers."""
        self._stop_reason = reason
        with contextlib.suppress(OSError):  # already stopped and closed: nothing to wake
            self._wake_writer.send(b"\0")

    def serve_forever(self) -> None:
        host, port = self.address
        log.info("listening on %s:%d", host, port)
        with selectors.DefaultSelector() as selector:
            selector.register(self._listener, selectors.EVENT_READ)
            selector.register(self._wake_reader, selectors.EVENT_READ)
            self._flusher.start()
            self._reclaimer.start()
            try:
                while not any(
                    key.fileobj is self._wake_reader for key, _ in selector.select()
                ):
                    self._accept_pending()
            finally:
                self._listener.close()
                self._reclaimer.stop()
                self._close_all(self._stop_reason)
                closed = time.monotonic()
                self._commands.stop()
                self.store.close()
                log.info("store closed in %.2f s", time.monotonic() - closed)
                if self._redis_room is not None:
                    self._redis_room.close()
                if self._scratch is not None:
                    self._scratch.cleanup()
                self._wake_reader.close()
                self._wake_writer.close()
                os.close(self._spare_fd)
        log.info("stopped")

    def _accept_pending(self) -> None:
        for _ in range(ACCEPTS_PER_WAKEUP):
            try:
                sock, address = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:
                if error.errno in (errno.EMFILE, errno.ENFILE):
                    self._refuse_without_descriptors()
                else:
                    log.error("accept failed: %s", error)
                return
            self._start(sock, address)

    def _refuse_without_descriptors(self) -> None:
        """Out of file descriptors: the pending client would keep the listener readable and
        the loop spinning. Free the spare descriptor, take the client, refuse it, re-arm."""
        log.error("out of file descriptors with %d connections", self.connection_count())
        os.close(self._spare_fd)
        try:
            sock, address = self._listener.accept()
        except OSError:
            pass  # it went away, or another process took the descriptor: nothing to refuse
        else:
            self._refuse_full(sock, address)
        finally:
            self._spare_fd = os.open(os.devnull, os.O_RDONLY)

    def _start(self, sock: socket.socket, address: tuple[str, int]) -> None:
        admission = self._commands.admission
        charged = admission.admit(address[0])
        if charged is None:
            self._refuse(sock, address, admission.refusal(address[0]),
                         "too many connections from this address that did not sign in")
            return
        sock.setblocking(True)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        set_keepalive(sock)
        with self._lock:
            full = len(self._threads) >= self._config.max_clients
            if not full:
                connection = Connection(
                    sock, address, self._config, self._commands, self._flusher, self._gate,
                    logged=self._connection_lines.allow(address_group(address[0])),
                    charged=charged,
                )
                thread = threading.Thread(
                    target=run_connection,
                    args=(connection, self._forget),
                    name=f"reader-{connection.peer}",
                )
                self._threads[connection] = thread
                self._reclaimer.count(len(self._threads))
        if full:  # refused for the server's sake, not the address's: not charged
            self._commands.admission.release(charged)
            self._refuse_full(sock, address)
            return
        try:
            _start_with_stack(thread, READER_STACK_BYTES)
        except RuntimeError as error:  # "can't start new thread": the system's limit
            log.error("%s refused: %s", connection.peer, error)
            self._forget(connection)
            self._commands.admission.release(charged)
            self._refuse_full(sock, address)

    def _refuse_full(self, sock: socket.socket, address: tuple[str, int]) -> None:
        self._refuse(sock, address, ProtocolError(
            ErrorCode.SERVER_FULL,
            f"the server is full ({self._config.max_clients} connections); try again later",
        ), f"{self._config.max_clients} clients already")

    def _refuse(self, sock: socket.socket, address: tuple[str, int], error: ProtocolError,
                why: str) -> None:
        """Tell a connection why it is not served (`why`: for the log), and close it."""
        held = self._connection_lines.allow(address_group(address[0]))
        if held is not None:
            log.warning("%s refused: %s%s", format_address(*address), why,
                        held_back(held, "from this address"))
        try:
            # A fresh socket's send buffer always has room for one short line: never blocks.
            sock.send(JsonLinesCodec().encode(error.to_event()), socket.MSG_DONTWAIT)
            # Closing with unread bytes (a hello sent at once) would reset the connection and
            # the client could lose the error: end our side first, then read what came.
            sock.shutdown(socket.SHUT_WR)
            sock.recv(65_536, socket.MSG_DONTWAIT)
        except OSError:
            pass  # the client is gone already, or sent nothing yet
        finally:
            sock.close()

    def _forget(self, connection: Connection) -> None:
        with self._lock:
            self._threads.pop(connection, None)
            self._reclaimer.count(len(self._threads))
            if not self._threads:
                self._all_gone.notify_all()

    def _wait_all_gone(self, deadline: float) -> bool:
        """Until every reader thread has ended, or the deadline; True if they all have."""
        with self._all_gone:
            return self._all_gone.wait_for(
                lambda: not self._threads, max(0.0, deadline - time.monotonic())
            )

    def _close_all(self, reason: str) -> None:
        """Stop every connection with a bye, within shutdown_timeout for all of them.

        First every reader finishes the request in hand, arrives at the gate and ends (see
        ShutdownGate), so that each message already acknowledged with "sent" is in its
        recipients' outboxes; then their sessions end (away, resumable, unannounced: the room is
        quiet; the store records them all in one write, while the byes are queued and the
        flusher writes them all with one deadline). No reader thread is joined one by one,
        and no lock or condition is waited on by every reader at once.
        """
        with self._lock:
            connections = list(self._threads)
        log.info("closing %d connections: %s", len(connections), reason)
        started = time.monotonic()
        deadline = started + self._config.shutdown_timeout
        self.room.shutdown()
        quiet_by = started + self._config.shutdown_timeout / 2
        woken = 0
        for first in range(0, len(connections), WAKE_BATCH):
            batch = connections[first : first + WAKE_BATCH]
            for connection in batch:
                connection.stop_reading()
            woken += len(batch)
            # Until the batch before this one has arrived: a few readers run at a time.
            self._gate.wait_for(woken - WAKE_BATCH,
                                min(WAKE_BATCH_WAIT_S, max(0.0, quiet_by - time.monotonic())))
        if not self._gate.wait_for(len(connections), max(0.0, quiet_by - time.monotonic())):
            log.warning("readers still busy after %.2f s; closing them",
                        time.monotonic() - started)
        readers_s = time.monotonic() - started
        # Not before the byes: the listener is closed, nobody can resume meanwhile.
        ender = self._end_sessions(self._gate.open())
        for connection in connections:
            connection.close(reason, flush_deadline=deadline)
        # Readers still busy (a replay, a store that is slow, a crowd that disconnected just
        # before) see the close and end; they are waited for until the byes' deadline only: what
        # they were recording is the next start's to restore (every open session comes back
        # as away), and 10,000 held make the process's own exit take most of a second.
        if not self._wait_all_gone(deadline):
            with self._lock:
                names = [thread.name for thread in self._threads.values()]
            log.warning("%d readers still busy at the deadline: %s", len(names),
                        ", ".join(names[:10]))
        byes_s = time.monotonic() - started
        self._flusher.stop(deadline, self._config.close_timeout)
        sessions_s = self._sessions_ended(ender, until=deadline, started=started)
        took = time.monotonic() - started
        log.log(logging.WARNING if took > self._config.shutdown_timeout else logging.INFO,
                "closed %d connections in %.2f s (readers stopped at %.2f s, byes queued and "
                "readers ended at %.2f s, sessions away by %s)", len(connections),
                took, readers_s, byes_s, sessions_s)

    def _end_sessions(self, connections: list[Connection]) -> threading.Thread | None:
        """Start ending the sessions of stopped connections (away, resumable) in one write of
        the store, by a thread of its own (see _sessions_ended)."""
        taken = [session for connection in connections
                 if (session := connection.take_session()) is not None]
        if not taken:
            return None
        ender = threading.Thread(target=self._commands.disconnect_many, args=(taken,),
                                 name=f"end-sessions-{len(taken)}", daemon=True)
        ender.start()
        return ender

    def _sessions_ended(self, ender: threading.Thread | None, until: float,
                        started: float) -> str:
        """Wait for `ender` until `until` (a slow store cannot hold the shutdown): what is not
        recorded then is restored as away at the next start. Says when it ended, for the log."""
        if ender is None:
            return "-"
        ender.join(max(0.0, until - time.monotonic()))
        if ender.is_alive():
            log.warning("%s sessions not recorded as away in time (restored at the next start)",
                        ender.name.rsplit("-", 1)[1])
            return "-"
        return f"{time.monotonic() - started:.2f} s"


def _start_with_stack(thread: threading.Thread, stack_bytes: int) -> None:
    """Start `thread` with a stack of `stack_bytes` (threading.stack_size is process-wide:
    only the accept loop starts threads while the server runs, and it restores the size)."""
    previous = threading.stack_size(stack_bytes)
    try:
        thread.start()
    finally:
        threading.stack_size(previous)


def set_keepalive(sock: socket.socket) -> None:
    """Find a peer that vanished without closing (lid shut, network gone) within 25 s: TCP
    keepalive probes after 10 s of silence, every 5 s, 3 unanswered mean dead; and data that
    stays unacknowledged for 25 s fails the connection (docs/history-and-sessions.md)."""
    with contextlib.suppress(OSError, AttributeError):  # not Linux: the system's defaults
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, KEEPALIVE_IDLE_S)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, KEEPALIVE_INTERVAL_S)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, KEEPALIVE_PROBES)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, USER_TIMEOUT_MS)


def _listen(host: str, port: int) -> socket.socket:
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    listener = socket.create_server((host, port), family=family, backlog=LISTEN_BACKLOG)
    listener.setblocking(False)
    return listener
