"""A connection's outgoing queue: bounded in bytes, drained in batches by one writer thread.

Like an IRC server's SendQ: a peer that stops reading fills its own outbox, and the producer
learns it from put() at once instead of blocking, so one slow client never stalls another.
"""

from __future__ import annotations

import threading
from collections import deque


class Outbox:
    def __init__(self, max_bytes: int) -> None:
        self._max_bytes = max_bytes
        # _ready guards everything below. Producers notify it on put() and close(); the single
        # consumer (the connection's writer) waits on it in take().
        self._ready = threading.Condition(threading.Lock())
        self._chunks: deque[bytes] = deque()
        self._queued_bytes = 0
        self._closed = False

    def put(self, data: bytes) -> bool:
        """Queue data without blocking. False: the outbox is full (the data was not queued).

        After close() data is silently discarded and True returned: the connection is already
        on its way out, and a late delivery is no reason to drop it twice.
        """
        with self._ready:
            if self._closed:
                return True
            if self._queued_bytes + len(data) > self._max_bytes:
                return False
            self._chunks.append(data)
            self._queued_bytes += len(data)
            self._ready.notify()
            return True

    def close(self, final: bytes | None = None, *, discard: bool = False) -> bool:
        """Accept nothing more; optionally drop what is queued and end with `final`.

        Returns False if the outbox was already closed (then nothing changes).
        """
        with self._ready:
            if self._closed:
                return False
            self._closed = True
            if discard:
                self._chunks.clear()
                self._queued_bytes = 0
            if final is not None:
                self._chunks.append(final)
                self._queued_bytes += len(final)
            self._ready.notify()
            return True

    @property
    def closed(self) -> bool:
        with self._ready:
            return self._closed

    def take(self) -> bytes | None:
        """Wait for data and return all that is queued as one batch; None once closed and empty.

        The wake-up path is put()/close(): there is no timeout because close() always comes,
        from the connection that owns this outbox.
        """
        with self._ready:
            while not self._chunks and not self._closed:
                self._ready.wait()
            if not self._chunks:
                return None
            batch = self._chunks[0] if len(self._chunks) == 1 else b"".join(self._chunks)
            self._chunks.clear()
            self._queued_bytes = 0
            return batch
