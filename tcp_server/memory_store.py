"""A message store that keeps everything in memory: the same interface as `SqliteStore`, no
durability (a restart forgets all). For `--store memory`: a throwaway server, and the
benchmark's measure of what the durable store costs.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace

from tcp_server.protocol import EVERYONE, Conversation, name_key, search_words
from tcp_server.store import (
    MAX_CONVERSATIONS,
    REPLAY_PAGE,
    SEARCH_SCAN,
    SECONDS_PER_DAY,
    NewMessage,
    Retention,
    SendDone,
    SessionId,
    SessionRecord,
    StoreClosed,
    StoredMessage,
    StoreError,
    token_hash,
)


class MemoryStore:
    """Everything under one lock. Messages are published while it is held, so they reach the
    room in seq order exactly as the SQLite store's writer thread hands them over."""

    def __init__(
        self,
        on_commit: Callable[[list[StoredMessage]], None] = lambda messages: None,
        retention: Retention | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._on_commit = on_commit
        self._retention = retention or Retention()
        self._clock = clock
        self._lock = threading.Lock()
        self._messages: list[StoredMessage] = []  # in seq order; guarded by _lock
        self._last_seq = 0
        self._pruned_upto = 0
        self._sessions: dict[SessionId, SessionRecord] = {}
        self._tokens: dict[bytes, SessionId] = {}
        self._markers: dict[tuple[SessionId, str], int] = {}
        self._closed = False

    def last_seq(self) -> int:
        with self._lock:
            return self._last_seq

    def pruned_upto(self) -> int:
        with self._lock:
            return self._pruned_upto

    def append(self, message: NewMessage) -> StoredMessage:
        with self._lock:
            self._check_open()
            self._last_seq += 1
            stored = StoredMessage(
                self._last_seq, message.ts, message.sender, message.sender_session, message.to,
                message.recipient_session, message.text,
            )
            self._messages.append(stored)
            self._prune()
            self._on_commit([stored])
        return stored

    def submit(self, message: NewMessage, then: SendDone) -> None:
        try:
            stored = self.append(message)
        except StoreError as error:
            then([error])
        else:
            then([stored])

    def open_session(
        self, name: str, token: str, ip: str, port: int, via: str
    ) -> SessionRecord:
        with self._lock:
            self._check_open()
            session_id = len(self._sessions) + 1
            record = SessionRecord(session_id, name, ip, port, via, self._last_seq,
                                   self._last_seq, None)
            self._sessions[session_id] = record
            self._tokens[token_hash(token)] = session_id
        return record

    def find_session(self, token: str) -> SessionRecord | None:
        with self._lock:
            session_id = self._tokens.get(token_hash(token))
            return None if session_id is None else self._sessions[session_id]

    def reconnect_session(self, session: SessionId, ip: str, port: int, via: str) -> None:
        self._update(session, ip=ip, port=port, via=via, away_since=None)

    def set_away(self, session: SessionId, since: float, delivered_seq: int) -> None:
        self.set_away_many([(session, since, delivered_seq)])

    def set_away_many(self, sessions: Sequence[tuple[SessionId, float, int]]) -> None:
        with self._lock:
            for session, since, delivered_seq in sessions:
                record = self._sessions.get(session)
                if record is not None:
                    self._sessions[session] = replace(
                        record, away_since=since,
                        delivered_seq=max(record.delivered_seq, delivered_seq),
                    )

    def end_session(self, session: SessionId) -> None:
        with self._lock:
            self._check_open()
            self._sessions.pop(session, None)
            for key in [k for k, v in self._tokens.items() if v == session]:
                del self._tokens[key]
            for marker in [m for m in self._markers if m[0] == session]:
                del self._markers[marker]

    def open_sessions(self) -> list[SessionRecord]:
        with self._lock:
            return list(self._sessions.values())

    def missed(self, session: SessionRecord, after: int) -> Iterator[list[StoredMessage]]:
        everyone_after = max(after, session.start_seq)
        with self._lock:
            found = [
                m for m in self._messages
                if (m.recipient_session is None and m.seq > everyone_after
                    and m.sender_session != session.id)
                or (m.recipient_session == session.id and m.seq > after)
            ]
        for start in range(0, len(found), REPLAY_PAGE):
            yield found[start:start + REPLAY_PAGE]

    def history(
        self, session: SessionId, with_: str, before: int | None, limit: int
    ) -> tuple[list[StoredMessage], bool]:
        with self._lock:
            found = [m for m in self._visible_in(session, with_)
                     if before is None or m.seq < before]
        return found[-limit:], len(found) > limit

    def search(self, session: SessionId, words: Sequence[str], limit: int) -> list[StoredMessage]:
        wanted = {word.casefold() for word in words}
        if not wanted:
            return []
        with self._lock:
            messages = list(self._messages)
        found: list[StoredMessage] = []
        scanned = 0
        for m in reversed(messages):
            if scanned >= SEARCH_SCAN or len(found) >= limit:
                break
            if wanted <= _words(m.text):
                scanned += 1
                if self._may_see(session, m):
                    found.append(m)
        return found

    def mark_read(self, session: SessionId, with_: str, seq: int) -> int:
        key = (session, name_key(with_))
        with self._lock:
            self._check_open()
            upto = max((m.seq for m in self._visible_in(session, with_) if m.seq <= seq),
                       default=0)
            if upto:
                self._markers[key] = max(self._markers.get(key, 0), upto)
            return self._markers.get(key, 0)

    def conversations(self, session: SessionRecord) -> list[Conversation]:
        with self._lock:
            peers: dict[str, tuple[str, int]] = {}
            for m in self._messages:
                if m.recipient_session is not None and m.sender_session == session.id:
                    peers[name_key(m.to)] = (m.to, m.seq)
                elif m.recipient_session == session.id:
                    peers[name_key(m.sender)] = (m.sender, m.seq)
            everyone = [m for m in self._messages if m.recipient_session is None]
            read = self._markers.get((session.id, EVERYONE), session.start_seq)
            last = everyone[-1].seq if everyone else 0
            found = [Conversation(
                EVERYONE, last, min(read, last) if last else read,
                sum(1 for m in everyone if m.seq > read and m.sender_session != session.id),
            )]
            newest = sorted(peers.items(), key=lambda item: -item[1][1])
            for key, (peer, last) in newest[:MAX_CONVERSATIONS - 1]:
                read = self._markers.get((session.id, key), 0)
                unread = sum(1 for m in self._visible_in(session.id, peer)
                             if m.seq > read and m.sender_session != session.id)
                found.append(Conversation(peer, last, read, unread))
        return sorted(found, key=lambda c: -c.last)

    def close(self) -> None:
        with self._lock:
            self._closed = True

    # --- under _lock --------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosed("the store is closed")

    def _update(self, session: SessionId, **changes: object) -> None:
        with self._lock:
            record = self._sessions.get(session)
            if record is not None:
                self._sessions[session] = replace(record, **changes)  # type: ignore[arg-type]

    @staticmethod
    def _may_see(session: SessionId, m: StoredMessage) -> bool:
        return (m.recipient_session is None or m.sender_session == session
                or m.recipient_session == session)

    def _visible_in(self, session: SessionId, with_: str) -> list[StoredMessage]:
        if with_ == EVERYONE:
            return [m for m in self._messages if m.recipient_session is None]
        key = name_key(with_)
        return [
            m for m in self._messages
            if (m.recipient_session is not None and m.sender_session == session
                and name_key(m.to) == key)
            or (m.recipient_session == session and name_key(m.sender) == key)
        ]

    def _prune(self) -> None:
        keep_from = 0
        if self._retention.max_messages and len(self._messages) > self._retention.max_messages:
            keep_from = len(self._messages) - self._retention.max_messages
        if self._retention.max_days:
            cutoff = self._clock() - self._retention.max_days * SECONDS_PER_DAY
            while keep_from < len(self._messages) and self._messages[keep_from].ts < cutoff:
                keep_from += 1
        if keep_from:
            self._pruned_upto = self._messages[keep_from - 1].seq
            del self._messages[:keep_from]


def _words(text: str) -> set[str]:
    return {word.casefold() for word in search_words(text)}
