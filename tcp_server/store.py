"""The message store: messages with their room-wide seq, sessions and read markers.

`MessageStore` is the interface the rest of the core uses; `SqliteStore` is the embedded
implementation (the standard library's sqlite3, WAL). A store kept in Redis (streams for
history, a counter for the seq) is a second implementation of the same interface.

SQLite allows one writer at a time, so one thread at a time holds the writing connection (see
`SqliteStore`): every change is a job on one queue, and whoever commits takes every job it
finds waiting into one transaction (group commit). That is usually the thread that queued a
job itself (a connection's reader), not a writer thread woken for it: a hand-over to another
thread per message is a futex wake-up and a GIL transfer. A message is handed to `on_commit`
(the room, which delivers it) only after its commit, in seq order, and only then is its sender
answered: no seq is ever seen and then lost, and every connection receives messages in seq
order. Readers use a small pool of their own connections and never wait for the writer (WAL).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import queue
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

from tcp_server.protocol import EVERYONE, Conversation, Message, name_key

log = logging.getLogger(__name__)

DB_FILE: Final = "chat.sqlite3"
READ_CONNECTIONS: Final = 4
REPLAY_PAGE: Final = 500
PRUNE_EVERY_S: Final = 60.0
PRUNE_CHUNK: Final = 10_000
MAX_JOBS_PER_COMMIT: Final = 1_000
# A thread that queued a job commits what is queued, at most this many batches, then leaves
# the rest to the writer thread: a reader must not be kept from its own client for long.
LEADER_MAX_BATCHES: Final = 4
# Under load a committing thread waits a moment for more jobs (see gather_delay): from
# GATHER_MIN_RATE jobs a second, as long as GATHER_JOBS take to come at that rate, at most
# until GATHER_S after the oldest.
GATHER_MIN_RATE: Final = 4_000.0
GATHER_JOBS: Final = 32
GATHER_S: Final = 0.0005
RATE_WINDOW_S: Final = 0.1  # the rate that gather_delay is given: of about this long a past
CHECKPOINT_EVERY_S: Final = 1.0
# The checkpoint thread copies the WAL again while the last copy found more than this many
# new frames, at most CHECKPOINT_PASSES times, and leaves the rest to the writer.
CHECKPOINT_PASSES: Final = 4
FINISH_FRAMES: Final = 64
# The writer then waits at most this long for reads begun before to end, commits paused
# (_finish_checkpoint); twice as long after each time they outlasted it, up to the maximum.
FINISH_WAIT_MS: Final = 10
FINISH_WAIT_MAX_MS: Final = 40
BUSY_TIMEOUT_MS: Final = 10_000
# A WAL file that grew under load (before a checkpoint could start it over) is cut back to
# this size when it starts over.
WAL_SIZE_LIMIT: Final = 64 * 1024 * 1024
# Messages are indexed for search in their own transactions, after their commit (see
# _index_now): this long after the first unindexed one, at most INDEX_CHUNK rows at a time.
INDEX_DELAY_S: Final = 0.05
INDEX_CHUNK: Final = 2_000
SEARCH_SCAN: Final = 10_000  # matches looked through per search, newest first
MAX_CONVERSATIONS: Final = 200  # listed by conversations()
SECONDS_PER_DAY: Final = 86_400

SessionId = int


def token_hash(token: str) -> bytes:
    """What the store keeps of a session token: it never holds the token itself."""
    return hashlib.sha256(token.encode("utf-8")).digest()


# Not frozen: a frozen dataclass is built five times slower, and these are built per message.
@dataclass(slots=True)
class NewMessage:
    ts: float
    sender: str
    sender_session: SessionId
    to: str  # the recipient's registered name, or "*"
    recipient_session: SessionId | None  # None for "*"
    text: str


@dataclass(slots=True)
class StoredMessage:
    seq: int
    ts: float
    sender: str
    sender_session: SessionId
    to: str
    recipient_session: SessionId | None
    text: str

    def event(self) -> Message:
        return Message(sender=self.sender, to=self.to, text=self.text, ts=self.ts, seq=self.seq)


@dataclass(frozen=True, slots=True)
class SessionRecord:
    id: SessionId
    name: str
    ip: str
    port: int
    via: str
    start_seq: int  # the highest seq when the session began: its "*" replay starts after it
    delivered_seq: int  # the highest seq handed to its last connection, when it went away
    away_since: float | None  # None: it had a connection when last recorded


@dataclass(frozen=True, slots=True)
class Retention:
    max_messages: int = 1_000_000  # 0: no limit
    max_days: float = 365.0  # 0: no limit


# Results of sends, in the order they were submitted (see MessageStore.submit).
SendDone = Callable[["list[StoredMessage | StoreError]"], None]


class MessageStore(Protocol):
    """Messages, sessions and read markers. Thread-safe; every method may block briefly."""

    def last_seq(self) -> int:
        """The highest seq committed (0 when nothing was ever stored)."""

    def pruned_upto(self) -> int:
        """Every message with a seq up to this one has been deleted by retention."""

    def append(self, message: NewMessage) -> StoredMessage:
        """Store a message under the next seq; returns once it is committed and delivered."""

    def submit(self, message: NewMessage, then: SendDone) -> None:
        """append() without waiting: `then` gets the stored message (or the StoreError) once
        it is committed and delivered, on the store's thread, in seq order. So a sender goes
        on reading while its messages are stored, and consecutive ones share a commit.

        `then` gets a list: the results of sends submitted with the same (equal) `then` and
        committed together may come in one call, in the order they were submitted, so that
        a sender is answered once per commit, not once per message."""

    def open_session(
        self, name: str, token: str, ip: str, port: int, via: str
    ) -> SessionRecord:
        """Start a session for a name; `token` is kept only as its hash."""

    def find_session(self, token: str) -> SessionRecord | None:
        """The open session with this token, or None."""

    def reconnect_session(self, session: SessionId, ip: str, port: int, via: str) -> None:
        """The session has a connection again, from this address."""

    def set_away(self, session: SessionId, since: float, delivered_seq: int) -> None:
        """The session lost its connection (its grace period runs from `since`)."""

    def set_away_many(self, sessions: Sequence[tuple[SessionId, float, int]]) -> None:
        """set_away() for many (session, since, delivered_seq) at once, in one write: a
        server stopping or starting with thousands of sessions."""

    def end_session(self, session: SessionId) -> None:
        """The session is over: its token is dead. Its messages stay in history."""

    def open_sessions(self) -> list[SessionRecord]:
        """Every session not ended (after a restart: to be restored as away)."""

    def missed(self, session: SessionRecord, after: int) -> Iterator[list[StoredMessage]]:
        """What the session would have received live with seq > after, oldest first, in pages."""

    def history(
        self, session: SessionId, with_: str, before: int | None, limit: int
    ) -> tuple[list[StoredMessage], bool]:
        """The newest `limit` messages of a conversation below `before`, oldest first, and
        whether older ones exist. `with_` is "*" or a name (this session's direct messages
        with that name)."""

    def search(self, session: SessionId, words: Sequence[str], limit: int) -> list[StoredMessage]:
        """Messages this session may see containing every word, newest first, among the
        newest SEARCH_SCAN matches of the whole room (so one search costs little however
        common its words)."""

    def mark_read(self, session: SessionId, with_: str, seq: int) -> int:
        """Move a conversation's read marker forward; returns the marker as it now is."""

    def conversations(self, session: SessionRecord) -> list[Conversation]:
        """The session's conversations, the most recently active first: "*" and at most
        MAX_CONVERSATIONS - 1 direct ones."""

    def close(self) -> None:
        """Finish what is queued and release the database. Idempotent."""


_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY,
    ts REAL NOT NULL,
    sender TEXT NOT NULL,
    sender_key TEXT NOT NULL,
    sender_session INTEGER NOT NULL,
    recipient TEXT NOT NULL,
    recipient_key TEXT NOT NULL,
    recipient_session INTEGER,
    text TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_to_everyone ON messages (seq)
    WHERE recipient_session IS NULL;
CREATE INDEX IF NOT EXISTS messages_sent ON messages (sender_session, recipient_key, seq)
    WHERE recipient_session IS NOT NULL;
DROP INDEX IF EXISTS messages_received;
CREATE INDEX IF NOT EXISTS messages_received_direct
    ON messages (recipient_session, sender_key, seq) WHERE recipient_session IS NOT NULL;
CREATE VIRTUAL TABLE IF NOT EXISTS messages_fts USING fts5 (
    text, content='messages', content_rowid='seq', tokenize='unicode61 remove_diacritics 2'
);
DROP TRIGGER IF EXISTS messages_fts_insert;
CREATE TRIGGER IF NOT EXISTS messages_fts_delete AFTER DELETE ON messages BEGIN
    INSERT INTO messages_fts (messages_fts, rowid, text) VALUES ('delete', old.seq, old.text);
END;
CREATE TABLE IF NOT EXISTS sessions (
    id INTEGER PRIMARY KEY,
    token_hash BLOB NOT NULL UNIQUE,
    name TEXT NOT NULL,
    ip TEXT NOT NULL,
    port INTEGER NOT NULL,
    via TEXT NOT NULL,
    created REAL NOT NULL,
    start_seq INTEGER NOT NULL,
    delivered_seq INTEGER NOT NULL,
    away_since REAL,
    ended INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS sessions_open ON sessions (id) WHERE ended = 0;
CREATE TABLE IF NOT EXISTS read_markers (
    session_id INTEGER NOT NULL,
    conversation TEXT NOT NULL,
    seq INTEGER NOT NULL,
    PRIMARY KEY (session_id, conversation)
) WITHOUT ROWID;
"""

_MESSAGE_COLUMNS: Final = "seq, ts, sender, sender_session, recipient, recipient_session, text"
_SESSION_COLUMNS: Final = "id, name, ip, port, via, start_seq, delivered_seq, away_since"


def _message(row: Sequence[Any]) -> StoredMessage:
    return StoredMessage(*row)


def _session(row: Sequence[Any]) -> SessionRecord:
    return SessionRecord(*row)


def fts_query(words: Sequence[str]) -> str:
    """Each word as a quoted FTS5 string: user text is matched, never run as query syntax."""
    return " ".join('"' + word.replace('"', '""') + '"' for word in words)


class _Job:
    """One change for whoever commits next (see SqliteStore); its submitter waits for
    `finished`.

    No Event per job (creating one is a fifth of the server's time per message): a send is
    answered through `then` and nobody waits for it; a submitter that does wait makes a lock
    of its own only then (`waiter`), which the writer releases. Not one condition shared by
    every waiter: 10,000 sessions going away at a shutdown would each be woken by every commit.
    """

    __slots__ = (
        "action", "committed", "error", "finished", "queued", "result", "then", "waiter",
    )

    def __init__(
        self,
        action: Callable[[sqlite3.Cursor], Any] | NewMessage,
        committed: threading.Condition,
        then: SendDone | None = None,
    ) -> None:
        self.action = action
        self.committed = committed
        self.then = then
        self.result: Any = None
        self.error: BaseException | None = None
        self.finished = False  # set by the writer thread, under `committed`'s lock
        self.waiter: threading.Lock | None = None  # released by the writer once finished
        self.queued = time.monotonic()

    def wait(self) -> Any:
        if not self.finished:
            with self.committed:
                waiter = None
                if not self.finished:
                    waiter = self.waiter = threading.Lock()
                    waiter.acquire()
            if waiter is not None:
                waiter.acquire()
        if self.error is not None:
            raise self.error
        return self.result


class StoreError(Exception):
    """A write could not be committed."""


class StoreClosed(StoreError):
    """The store is closed: nothing more can be written."""


class SqliteStore:
    """The embedded store: one SQLite file in `data_dir`.

    Threads: the one holding `_committing` uses `_writer_db` and runs the queued jobs (group
    commit). A thread queueing a job tries to take it (`_drain`): if another thread holds it,
    that one commits the job, as it looks at the queue again after each batch and after it
    lets `_committing` go. So usually the submitting reader commits, with no hand-over to
    another thread; a leader stops after LEADER_MAX_BATCHES and wakes the writer thread to go
    on, which also prunes. Reading methods borrow one of a few read connections from
    `_readers`. `_last_seq` and `_pruned_upto` are written only under `_committing` (and
    `_lock`, read by anyone).

    Search: committing a message does not index it (a search index written in every commit
    was most of a small commit's cost: bench/README.md, "The cost per message"). The writer
    thread indexes what was committed since the last time, INDEX_DELAY_S after the first
    unindexed commit, in transactions of its own; `search` first indexes everything committed
    (under `_committing`), so it finds every message committed before it began. What a kill
    left unindexed is indexed at the next start (`indexed_upto` in the meta table).
    """

    def __init__(
        self,
        data_dir: str | Path,
        on_commit: Callable[[list[StoredMessage]], None] = lambda messages: None,
        retention: Retention | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = Path(data_dir) / DB_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._on_commit = on_commit
        self._retention = retention or Retention()
        self._clock = clock
        self._writer_db = self._connect()
        with self._writer_db:
            self._writer_db.executescript(_SCHEMA)
        self._lock = threading.Lock()
        self._pruned_upto = self._meta("pruned_upto")
        # Not written by every commit (a page written per commit): the highest seq ever given
        # is in the table, or was pruned (up to pruned_upto), or is meta's last_seq (written
        # when the index catches up, and at close) if both were deleted.
        (highest,) = self._writer_db.execute("SELECT max(seq) FROM messages").fetchone()
        self._last_seq = max(self._meta("last_seq"), self._pruned_upto, int(highest or 0))
        # A database from before the index had its own transactions was indexed in full.
        indexed = self._writer_db.execute(
            "SELECT value FROM meta WHERE key = 'indexed_upto'").fetchone()
        self._indexed_upto = int(indexed[0]) if indexed else self._meta("last_seq")
        self._index_due: float | None = None  # when the writer indexes (guarded by _lock)
        # Each connection is used through one cursor of its own, for good: sqlite3 (3.11) keeps
        # a weak reference to every cursor a connection makes, piling up with one per query.
        self._readers: queue.SimpleQueue[sqlite3.Cursor] = queue.SimpleQueue()
        self._all_readers = [self._connect() for _ in range(READ_CONNECTIONS)]
        for reader in self._all_readers:
            self._readers.put(reader.cursor())
        self._writer_cursor = self._writer_db.cursor()
        while self._index_now():  # what a kill left unindexed
            pass
        # Jobs not yet committed, oldest first: appended by any thread (see _queue), taken
        # only by the holder of _committing (deque append and popleft are atomic).
        self._jobs: deque[_Job] = deque()
        self._committing = threading.Lock()
        self._committed = threading.Condition(threading.Lock())  # see _Job
        self._closed = False
        # The writer thread's wake-up: a leader that left jobs queued, or close().
        self._writer_due = threading.Event()
        # Jobs a second lately (see gather_delay), kept by whoever holds _committing.
        self._rate = RecentRate(RATE_WINDOW_S)
        self._writer_stop = False
        self._writer_done = False  # its last batch is committed (set under _committing)
        # Daemon threads, unlike the rest of the core's: a store someone forgot to close must
        # not keep a process from exiting, and a kill at any point is safe (a transaction
        # commits whole or not at all, and nothing uncommitted was acknowledged).
        self._writer = threading.Thread(target=self._write_loop, name="store-writer",
                                        daemon=True)
        # Checkpoints (copying the WAL into the database, with an fsync) would stall the
        # writer, and every sender waiting on it, for milliseconds: a thread of their own
        # does them, beside the writer (WAL allows it), once a second.
        self._writer_db.execute("PRAGMA wal_autocheckpoint=0")
        self._writer_db.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
        # Set by the checkpoint thread, for the writer: finish the checkpoint (see
        # _checkpoint_loop). Guarded by _lock.
        self._checkpoint_due = False
        # The writer's row changes when it last finished one, and how long it waits for reads
        # next time (both kept under _committing).
        self._changes_checkpointed = 0
        self._finish_wait_ms = FINISH_WAIT_MS
        self._checkpoint_db = self._connect()
        self._stopping = threading.Event()
        self._checkpointer = threading.Thread(target=self._checkpoint_loop,
                                              name="store-checkpoint", daemon=True)
        self._checkpointer.start()
        self._writer.start()  # after the last use of _writer_db here: it prunes at once

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode: a commit survives the process being killed; only a power cut
        # can take the last commits (docs/operations.md).
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        return db

    def _meta(self, key: str) -> int:
        row = self._writer_db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return int(row[0]) if row else 0

    # --- reading ----------------------------------------------------------------------------

    def last_seq(self) -> int:
        with self._lock:
            return self._last_seq

    def pruned_upto(self) -> int:
        with self._lock:
            return self._pruned_upto

    @contextlib.contextmanager
    def _reading(self) -> Iterator[sqlite3.Cursor]:
        db = self._readers.get()
        try:
            yield db
        finally:
            self._readers.put(db)

    def find_session(self, token: str) -> SessionRecord | None:
        with self._reading() as db:
            row = db.execute(
                f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE token_hash = ? AND ended = 0",
                (token_hash(token),),
            ).fetchone()
        return _session(row) if row else None

    def open_sessions(self) -> list[SessionRecord]:
        with self._reading() as db:
            rows = db.execute(
                f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE ended = 0 ORDER BY id"
            ).fetchall()
        return [_session(row) for row in rows]

    def missed(self, session: SessionRecord, after: int) -> Iterator[list[StoredMessage]]:
        everyone_after = max(after, session.start_seq)
        while True:
            with self._reading() as db:
                rows = db.execute(
                    f"""SELECT * FROM (SELECT {_MESSAGE_COLUMNS} FROM messages
                            WHERE recipient_session IS NULL AND seq > :everyone_after
                            AND sender_session != :session ORDER BY seq LIMIT :n)
                        UNION ALL
                        SELECT * FROM (SELECT {_MESSAGE_COLUMNS} FROM messages
                            WHERE recipient_session = :session AND seq > :after
                            ORDER BY seq LIMIT :n)
                        ORDER BY seq LIMIT :n""",
                    {"session": session.id, "after": after, "everyone_after": everyone_after,
                     "n": REPLAY_PAGE},
                ).fetchall()
            if not rows:
                return
            page = [_message(row) for row in rows]
            yield page
            if len(page) < REPLAY_PAGE:
                return
            after = everyone_after = page[-1].seq

    def history(
        self, session: SessionId, with_: str, before: int | None, limit: int
    ) -> tuple[list[StoredMessage], bool]:
        params = {"session": session, "key": name_key(with_),
                  "before": before if before is not None else 2**63 - 1, "n": limit + 1}
        if with_ == EVERYONE:
            sql = f"""SELECT {_MESSAGE_COLUMNS} FROM messages
                      WHERE recipient_session IS NULL AND seq < :before
                      ORDER BY seq DESC LIMIT :n"""
        else:
            sql = f"""SELECT * FROM (SELECT {_MESSAGE_COLUMNS} FROM messages
                          WHERE sender_session = :session AND recipient_key = :key
                          AND recipient_session IS NOT NULL AND seq < :before
                          ORDER BY seq DESC LIMIT :n)
                      UNION
                      SELECT * FROM (SELECT {_MESSAGE_COLUMNS} FROM messages
                          WHERE recipient_session = :session AND sender_key = :key
                          AND seq < :before ORDER BY seq DESC LIMIT :n)
                      ORDER BY seq DESC LIMIT :n"""
        with self._reading() as db:
            rows = db.execute(sql, params).fetchall()
        more = len(rows) > limit
        return [_message(row) for row in reversed(rows[:limit])], more

    def search(self, session: SessionId, words: Sequence[str], limit: int) -> list[StoredMessage]:
        if not words:
            return []
        self._catch_up_index()
        columns = ", ".join(f"m.{c.strip()}" for c in _MESSAGE_COLUMNS.split(","))
        with self._reading() as db:
            rows = db.execute(
                f"""SELECT {columns} FROM (
                        SELECT rowid FROM messages_fts WHERE messages_fts MATCH :q
                        ORDER BY rowid DESC LIMIT :scan
                    ) f JOIN messages m ON m.seq = f.rowid
                    WHERE m.recipient_session IS NULL OR m.sender_session = :session
                          OR m.recipient_session = :session
                    ORDER BY m.seq DESC LIMIT :n""",
                {"q": fts_query(words), "session": session, "n": limit, "scan": SEARCH_SCAN},
            ).fetchall()
        return [_message(row) for row in rows]

    def conversations(self, session: SessionRecord) -> list[Conversation]:
        with self._reading() as db:
            markers = dict(db.execute(
                "SELECT conversation, seq FROM read_markers WHERE session_id = ?", (session.id,)
            ).fetchall())
            row = db.execute(
                "SELECT max(seq) FROM messages WHERE recipient_session IS NULL"
            ).fetchone()
            everyone_last = int(row[0] or 0)
            everyone_read = markers.get(EVERYONE, session.start_seq)
            (everyone_unread,) = db.execute(
                """SELECT count(*) FROM messages WHERE recipient_session IS NULL
                   AND seq > ? AND sender_session != ?""",
                (everyone_read, session.id),
            ).fetchone()
            found = [Conversation(EVERYONE, everyone_last, min(everyone_read, everyone_last)
                                  if everyone_last else everyone_read, everyone_unread)]
            peers = db.execute(
                """SELECT peer_key, peer, max(seq) FROM (
                       SELECT recipient_key AS peer_key, recipient AS peer, seq FROM messages
                       WHERE sender_session = :s AND recipient_session IS NOT NULL
                       UNION ALL
                       SELECT sender_key, sender, seq FROM messages WHERE recipient_session = :s
                   ) GROUP BY peer_key ORDER BY max(seq) DESC LIMIT :n""",
                {"s": session.id, "n": MAX_CONVERSATIONS - 1},
            ).fetchall()
            for peer_key, peer, last in peers:
                read = markers.get(peer_key, 0)
                (unread,) = db.execute(
                    """SELECT count(*) FROM messages WHERE recipient_session = ?
                       AND sender_key = ? AND seq > ? AND sender_session != ?""",
                    (session.id, peer_key, read, session.id),
                ).fetchone()
                found.append(Conversation(peer, int(last), read, unread))
        return sorted(found, key=lambda c: -c.last)

    # --- writing (each method queues a job for the writer thread and waits for it) -------------

    def _queue(
        self,
        action: Callable[[sqlite3.Cursor], Any] | NewMessage,
        then: SendDone | None = None,
    ) -> _Job:
        if self._closed:
            raise StoreClosed("the store is closed")
        job = _Job(action, self._committed, then)
        # No lock: readers queue a job per message, and a lock taken that often made them
        # convoy (whenever its holder lost the GIL, every other reader queued on it: half the
        # core's futex calls under load 1, bench/README.md). A job queued as close() began
        # may come after the writer's last commit: its own thread then refuses it.
        self._jobs.append(job)
        if self._closed:
            self._refuse_queued()
        else:
            self._drain(LEADER_MAX_BATCHES)
        return job

    def _refuse_queued(self) -> None:
        """Once close() began: after the writer's last batch (which commits every job queued
        before), each job still queued ends with StoreClosed, answered like any other (a
        send's `then` gets the error, a waiting thread raises it)."""
        self._writer.join()
        with self._committing:
            self._refuse_held()

    def _refuse_held(self) -> None:
        """_refuse_queued's part, by a thread holding _committing."""
        jobs = self._jobs
        refused = [jobs.popleft() for _ in range(len(jobs))]
        for job in refused:
            job.error = StoreClosed("the store is closed")
        if refused:
            self._finish(refused)

    def _drain(self, max_batches: int | None) -> None:
        """Commit what is queued if no other thread is committing (that one will).

        Why nothing is left behind: a job is queued before its thread tries _committing; if
        that fails, the holder, after it lets go, looks at the queue again (the loop's
        condition) and commits it or leaves it to a thread that did get _committing.
        """
        jobs = self._jobs
        while jobs and self._committing.acquire(blocking=False):
            try:
                if self._writer_done:  # a job queued as close() began: refused, not committed
                    self._refuse_held()
                    return
                batches = 0
                while jobs:
                    if max_batches is not None and batches >= max_batches:
                        self._writer_due.set()  # the writer goes on; this reader goes back
                        return
                    if batches == 0:  # once: the reader's own client waits meanwhile
                        self._gather()
                    count = min(len(jobs), MAX_JOBS_PER_COMMIT)  # only we take: it only grows
                    self._commit([jobs.popleft() for _ in range(count)])
                    batches += 1
            finally:
                self._committing.release()

    def _gather(self) -> None:
        """Under load, wait (holding _committing) until the batch is worth a commit, while
        the other readers queue theirs (gather_delay)."""
        jobs = self._jobs
        now = time.monotonic()
        rate = self._rate.per_second(now)
        if rate < GATHER_MIN_RATE or len(jobs) >= GATHER_JOBS:
            return  # the common cases, without looking at the jobs
        waited = list(jobs)  # a copy: other threads append meanwhile
        delay = gather_delay(rate, len(waited), now - waited[0].queued,
                             any(job.then is None for job in waited))
        if delay > 0:
            time.sleep(delay)

    def _submit(self, action: Callable[[sqlite3.Cursor], Any] | NewMessage) -> Any:
        return self._queue(action).wait()

    def append(self, message: NewMessage) -> StoredMessage:
        result: StoredMessage = self._submit(message)
        return result

    def submit(self, message: NewMessage, then: SendDone) -> None:
        self._queue(message, then)

    def open_session(
        self, name: str, token: str, ip: str, port: int, via: str
    ) -> SessionRecord:
        def action(db: sqlite3.Cursor) -> SessionRecord:
            start = self._last_seq
            cursor = db.execute(
                """INSERT INTO sessions (token_hash, name, ip, port, via, created, start_seq,
                       delivered_seq) VALUES (?, ?, ?, ?, ?, ?, ?, ?)""",
                (token_hash(token), name, ip, port, via, self._clock(), start, start),
            )
            assert cursor.lastrowid is not None
            return SessionRecord(cursor.lastrowid, name, ip, port, via, start, start, None)

        record: SessionRecord = self._submit(action)
        return record

    def reconnect_session(self, session: SessionId, ip: str, port: int, via: str) -> None:
        self._submit(lambda db: db.execute(
            "UPDATE sessions SET ip = ?, port = ?, via = ?, away_since = NULL WHERE id = ?",
            (ip, port, via, session),
        ))

    def set_away(self, session: SessionId, since: float, delivered_seq: int) -> None:
        self.set_away_many([(session, since, delivered_seq)])

    def set_away_many(self, sessions: Sequence[tuple[SessionId, float, int]]) -> None:
        if not sessions:
            return
        rows = [(since, delivered_seq, session) for session, since, delivered_seq in sessions]
        self._submit(lambda db: db.executemany(
            """UPDATE sessions SET away_since = ?, delivered_seq = max(delivered_seq, ?)
               WHERE id = ?""",
            rows,
        ))

    def end_session(self, session: SessionId) -> None:
        def action(db: sqlite3.Cursor) -> None:
            db.execute("UPDATE sessions SET ended = 1 WHERE id = ?", (session,))
            db.execute("DELETE FROM read_markers WHERE session_id = ?", (session,))

        self._submit(action)

    def mark_read(self, session: SessionId, with_: str, seq: int) -> int:
        key = name_key(with_)

        def action(db: sqlite3.Cursor) -> int:
            if with_ == EVERYONE:
                row = db.execute(
                    "SELECT max(seq) FROM messages WHERE recipient_session IS NULL AND seq <= ?",
                    (seq,),
                ).fetchone()
            else:
                row = db.execute(
                    """SELECT max(seq) FROM (
                           SELECT max(seq) AS seq FROM messages WHERE sender_session = :s
                           AND recipient_key = :k AND recipient_session IS NOT NULL
                           AND seq <= :seq
                           UNION ALL
                           SELECT max(seq) FROM messages WHERE recipient_session = :s
                           AND sender_key = :k AND seq <= :seq)""",
                    {"s": session, "k": key, "seq": seq},
                ).fetchone()
            upto = int(row[0] or 0)
            if with_ == EVERYONE:  # its marker starts at the session's start, never below
                start = db.execute(
                    "SELECT start_seq FROM sessions WHERE id = ?", (session,)
                ).fetchone()
                upto = max(upto, int(start[0]) if start else 0)
            if upto:  # a conversation without messages (up to seq) gets no marker
                db.execute(
                    """INSERT INTO read_markers (session_id, conversation, seq) VALUES (?, ?, ?)
                       ON CONFLICT (session_id, conversation)
                       DO UPDATE SET seq = max(seq, excluded.seq)""",
                    (session, key, upto),
                )
            now = db.execute(
                "SELECT seq FROM read_markers WHERE session_id = ? AND conversation = ?",
                (session, key),
            ).fetchone()
            return int(now[0]) if now else 0

        marker: int = self._submit(action)
        return marker

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._writer_stop = True
        self._writer_due.set()
        self._refuse_queued()  # the writer commits whatever was queued first
        self._stopping.set()
        self._checkpointer.join()
        with contextlib.suppress(sqlite3.Error):  # a clean file for backups and the next start
            self._checkpoint_db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        for db in [*self._all_readers, self._writer_db, self._checkpoint_db]:
            db.close()

    def _checkpoint_loop(self) -> None:
        """Copy the WAL into the database once a second, beside the writer, again while
        commits came meanwhile; then have the writer copy the last few frames with commits
        paused (_finish_checkpoint).

        Why: SQLite starts the WAL file over only at a commit that finds every frame copied,
        and under steady load a commit always came while this thread copied (a copy takes
        milliseconds), so the WAL grew for as long as the load lasted: 1 GB for 100,000
        messages at 5,000 a second. Copying it all with commits paused would stall them as
        long; each pass here copies what came during the one before, a few milliseconds'
        worth of commits, until it is little enough to pause commits for."""
        while not self._stopping.wait(CHECKPOINT_EVERY_S):
            frames = 0
            try:
                for _ in range(CHECKPOINT_PASSES):
                    frames_before = frames
                    [(_busy, frames, _copied)] = self._checkpoint_db.execute(
                        "PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                    if frames - frames_before <= FINISH_FRAMES:
                        break
            except sqlite3.Error as error:  # busy or failing: the WAL waits for the next one
                log.warning("store: checkpoint failed: %s", error)
                continue
            if frames > 0:
                with self._lock:
                    self._checkpoint_due = True
                self._writer_due.set()

    def _finish_checkpoint(self) -> None:
        """Copy what was committed since the checkpoint thread's copy and start the WAL over,
        holding _committing, so that nothing is committed meanwhile.

        RESTART, not PASSIVE: a read begun before the last commit keeps a copy short of the
        end, and one still running at the next commit keeps that commit from starting the
        WAL over; with reads going on all the time (a review's test) the WAL grew as before.
        RESTART waits for those reads, _finish_wait_ms at most; if they outlast it, the next
        second's try waits twice as long, up to FINISH_WAIT_MAX_MS."""
        with self._lock:
            due, self._checkpoint_due = self._checkpoint_due, False
        changes = self._writer_db.total_changes
        if not due or changes == self._changes_checkpointed:
            return
        db = self._writer_cursor
        try:
            # Each statement run to its end (fetchall): one left with a row pending would keep
            # close() from closing the database's files.
            db.execute(f"PRAGMA busy_timeout={self._finish_wait_ms}").fetchall()
            try:
                [(busy, _frames, _copied)] = db.execute(
                    "PRAGMA wal_checkpoint(RESTART)").fetchall()
            finally:
                db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}").fetchall()
        except sqlite3.Error as error:
            log.warning("store: checkpoint failed: %s", error)
            return
        if busy:  # reads outlasted the wait, or the checkpoint thread was copying: next time
            self._finish_wait_ms = min(2 * self._finish_wait_ms, FINISH_WAIT_MAX_MS)
            return
        self._finish_wait_ms = FINISH_WAIT_MS
        self._changes_checkpointed = changes

    # --- the writer thread --------------------------------------------------------------------

    def _write_loop(self) -> None:
        """Commit what a leader left queued; prune now and then; at close, the last jobs."""
        next_prune = 0.0
        while True:
            with self._lock:
                index_due = self._index_due
            wake = next_prune if index_due is None else min(next_prune, index_due)
            self._writer_due.wait(max(0.0, wake - time.monotonic()))
            self._writer_due.clear()
            stopping = self._writer_stop
            with self._committing:  # waits for a leader's batch: its jobs come first
                while self._jobs:
                    count = min(len(self._jobs), MAX_JOBS_PER_COMMIT)
                    self._commit([self._jobs.popleft() for _ in range(count)])
                with self._lock:
                    index_due = self._index_due
                if stopping or (index_due is not None and time.monotonic() >= index_due):
                    self._index_in_chunks(stopping)
                self._finish_checkpoint()
                if stopping:  # from now on a job still queued is refused (see _drain)
                    self._writer_done = True
                if time.monotonic() >= next_prune and not stopping:
                    next_prune = time.monotonic() + PRUNE_EVERY_S
                    try:
                        self._prune()
                    except sqlite3.Error as error:
                        log.error("store: pruning failed: %s", error)
            if stopping:
                return
            self._drain(None)  # queued while we held _committing, by threads that left it to us

    def _index_in_chunks(self, everything: bool) -> None:
        """Index what was committed (holding _committing), a chunk at a time; unless
        `everything`, only INDEX_CHUNK rows at once: the rest a moment later."""
        retry_in: float | None = None
        try:
            more = self._index_now()
            while more and everything:
                more = self._index_now()
            if more:  # the next chunk as soon as the jobs queued meanwhile are committed
                retry_in = 0.0
        except sqlite3.Error as error:  # tried again later (and by any search first)
            log.error("store: indexing for search failed: %s", error)
            retry_in = CHECKPOINT_EVERY_S
        with self._lock:  # None: the next commit sets it
            self._index_due = None if retry_in is None else time.monotonic() + retry_in

    def _index_now(self) -> bool:
        """Index up to INDEX_CHUNK committed messages for search (under _committing, or
        before the threads start); True if more are left."""
        upto = min(self._last_seq, self._indexed_upto + INDEX_CHUNK)
        if upto <= self._indexed_upto:
            return False
        db = self._writer_cursor
        db.execute("BEGIN IMMEDIATE")
        try:
            # In one statement: a fifth of the cost of a trigger row by row (bench/README.md).
            db.execute(
                "INSERT INTO messages_fts (rowid, text) SELECT seq, text FROM messages "
                "WHERE seq > ? AND seq <= ?", (self._indexed_upto, upto),
            )
            db.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                           [("indexed_upto", upto), ("last_seq", self._last_seq)])
            db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            raise
        self._indexed_upto = upto
        return upto < self._last_seq

    def _catch_up_index(self) -> None:
        """Index every message committed so far (for search: it must find them all)."""
        if self._indexed_upto >= self.last_seq():
            return
        try:
            with self._committing:
                while self._index_now():
                    pass
        except sqlite3.Error as error:
            raise StoreError(f"the message store failed: {error}") from error
        finally:
            self._drain(LEADER_MAX_BATCHES)  # what was queued meanwhile, left to us

    def _commit(self, batch: list[_Job]) -> None:
        self._rate.add(len(batch), time.monotonic())
        db = self._writer_cursor
        stored: list[StoredMessage] = []
        rows: list[tuple[Any, ...]] = []  # messages not yet inserted
        first_seq = seq = self._last_seq
        try:
            db.execute("BEGIN IMMEDIATE")
            for job in batch:
                action = job.action
                if isinstance(action, NewMessage):
                    seq += 1
                    job.result = _stored(seq, action)
                    stored.append(job.result)
                    rows.append(_row(job.result))
                    continue
                if rows:  # a job may read messages: those before it are in the table
                    db.executemany(_INSERT_MESSAGE, rows)
                    rows.clear()
                job.result = action(db)
            if rows:
                db.executemany(_INSERT_MESSAGE, rows)
            db.execute("COMMIT")
        except Exception as error:  # noqa: BLE001 - any failure fails this batch, not the store
            log.error("store: commit of %d changes failed: %r", len(batch), error)
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            for job in batch:
                job.error = StoreError(f"the message store failed: {error}")
            self._finish(batch)
            return
        with self._lock:
            self._last_seq = seq
            index_due = seq > first_seq and self._index_due is None
            if index_due:
                self._index_due = time.monotonic() + INDEX_DELAY_S
        if index_due:
            self._writer_due.set()  # it learns when to index
        if stored:
            try:
                self._on_commit(stored)
            except Exception:  # delivery must never stop the store
                log.exception("store: delivering committed messages failed")
        self._finish(batch)

    def _finish(self, batch: list[_Job]) -> None:
        # One call per sender (its `then`) for the whole batch, in submission order: one
        # encode and one queued write per connection per commit (bench/README.md).
        answers: dict[SendDone, list[StoredMessage | StoreError]] = {}
        for job in batch:
            then = job.then
            if then is not None:
                result = job.error if isinstance(job.error, StoreError) else job.result
                results = answers.get(then)
                if results is None:
                    answers[then] = [result]
                else:
                    results.append(result)
        for then, results in answers.items():
            try:
                then(results)
            except Exception:  # one sender's answer must not stop the store
                log.exception("store: answering a sender failed")
        with self._committed:
            for job in batch:
                job.finished = True
                if job.waiter is not None:
                    job.waiter.release()

    def prune(self) -> int:
        """Apply retention now (the writer thread does it once every PRUNE_EVERY_S); returns
        the rows deleted."""
        with self._committing:
            return self._prune()

    def _prune(self) -> int:
        # The delete trigger takes rows out of the search index: they must be in it first.
        while self._index_now():
            pass
        db = self._writer_cursor
        upto = self._pruned_upto
        if self._retention.max_messages:
            upto = max(upto, self._last_seq - self._retention.max_messages)
        if self._retention.max_days:
            cutoff = self._clock() - self._retention.max_days * SECONDS_PER_DAY
            row = db.execute(
                "SELECT max(seq) FROM messages WHERE seq > ? AND ts < ?", (upto, cutoff)
            ).fetchone()
            upto = max(upto, int(row[0] or 0))
        deleted = 0
        while self._pruned_upto < upto:
            chunk_end = min(upto, self._pruned_upto + PRUNE_CHUNK)
            db.execute("BEGIN IMMEDIATE")
            deleted += db.execute("DELETE FROM messages WHERE seq <= ?", (chunk_end,)).rowcount
            db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('pruned_upto', ?)",
                       (chunk_end,))
            db.execute("COMMIT")
            with self._lock:
                self._pruned_upto = chunk_end
        if deleted:
            log.info("store: retention deleted %d messages (up to seq %d)", deleted, upto)
        return deleted


_INSERT_MESSAGE: Final = """INSERT INTO messages (seq, ts, sender, sender_key, sender_session,
    recipient, recipient_key, recipient_session, text) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"""


class RecentRate:
    """Events a second of about the last `window_s`: a count that decays exponentially with
    time, so that a quiet moment lowers it at once. (A moving average of each commit's own
    rate did not: two commits close together looked like 100,000 a second, and at a real 2,000
    a second half the commits waited for nothing.) Not thread-safe: its owner guards it."""

    __slots__ = ("_at", "_count", "_window")

    def __init__(self, window_s: float) -> None:
        self._window = window_s
        self._count = 0.0
        self._at = 0.0

    def add(self, events: int, now: float) -> None:
        self._count = self._count * math.exp((self._at - now) / self._window) + events
        self._at = now

    def per_second(self, now: float) -> float:
        return self._count * math.exp((self._at - now) / self._window) / self._window


def gather_delay(rate: float, queued: int, oldest_age: float, someone_waits: bool) -> float:
    """How long a thread about to commit `queued` jobs (the oldest queued `oldest_age`
    seconds ago) waits for more, at `rate` jobs a second lately.

    A commit costs about as much as five to ten messages (its WAL frames and locks), however
    few it holds. At a paced rate every message would be committed alone by the reader that
    got it, with a flusher wake-up each: from GATHER_MIN_RATE jobs a second a commit waits
    as long as GATHER_JOBS take to come at that rate, at most until GATHER_S after the oldest
    job, while other readers queue theirs. That cut the core's CPU per message at 5,000 a
    second by a fifth (bench/README.md), at the price of that wait in latency. Below that
    rate nothing waits, nor does anything when the batch is full already or a thread is
    blocked on one of its jobs (a session's change: a sign-in, a resume).
    """
    if rate <= 0 or rate < GATHER_MIN_RATE or queued >= GATHER_JOBS or someone_waits:
        return 0.0
    return max(0.0, min(GATHER_S, GATHER_JOBS / rate) - oldest_age)


def _stored(seq: int, m: NewMessage) -> StoredMessage:
    return StoredMessage(seq, m.ts, m.sender, m.sender_session, m.to, m.recipient_session, m.text)


def _row(m: StoredMessage) -> tuple[Any, ...]:
    # str.casefold() is name_key(), called directly: this runs for every message
    return (m.seq, m.ts, m.sender, m.sender.casefold(), m.sender_session, m.to,
            m.to.casefold(), m.recipient_session, m.text)
