"""Outbox with the shared flusher: idle outboxes are written without waking their writer."""

from __future__ import annotations

import gc
import threading
import weakref

from tcp_server.flusher import Flusher
from tcp_server.outbox import Outbox
from tests.support.core import wait_until


class FakeSocket:
    """A non-blocking send that takes at most `room` bytes per call and records them."""

    def __init__(self, room: int = 1_000) -> None:
        self.room = room
        self.written = b""

    def send(self, data: bytes) -> int:
        if self.room == 0:
            raise BlockingIOError
        taken = data[: self.room]
        self.written += taken
        return len(taken)


def flusher_idle(flusher: Flusher) -> bool:
    with flusher._lock:  # the test looks inside: is it back to waiting?
        return flusher._idle


class ManualFlusher:
    """Records schedule() calls; the test runs the flushes itself."""

    def __init__(self) -> None:
        self.due: list[Outbox] = []

    def schedule(self, outbox: Outbox) -> None:
        self.due.append(outbox)


def test_outbox_going_from_idle_to_busy_is_scheduled_once() -> None:
    flusher, sock = ManualFlusher(), FakeSocket()
    outbox = Outbox(100, try_send=sock.send, schedule=flusher.schedule)
    outbox.put(b"a")
    outbox.put(b"b")
    assert flusher.due == [outbox]


def test_flush_writes_everything_queued_as_one_batch() -> None:
    flusher, sock = ManualFlusher(), FakeSocket()
    outbox = Outbox(100, try_send=sock.send, schedule=flusher.schedule)
    outbox.put(b"a")
    outbox.put(b"b")
    assert outbox.flush() is False
    assert sock.written == b"ab"
    outbox.put(b"c")  # idle again: scheduled anew
    assert flusher.due == [outbox, outbox]


def test_flush_hands_what_the_socket_refused_to_the_writer_in_order() -> None:
    flusher, sock = ManualFlusher(), FakeSocket(room=2)
    outbox = Outbox(100, try_send=sock.send, schedule=flusher.schedule)
    outbox.put(b"abcd")
    assert outbox.flush() is False
    outbox.put(b"ef")
    assert sock.written == b"ab"
    assert flusher.due == [outbox]  # not scheduled again: the writer owns it now
    assert outbox.take() == b"cdef"


def test_close_while_the_flusher_owns_the_outbox_ends_with_the_writer() -> None:
    flusher, sock = ManualFlusher(), FakeSocket()
    outbox = Outbox(100, try_send=sock.send, schedule=flusher.schedule)
    outbox.put(b"last ")
    outbox.close(b"bye")
    outbox.flush()
    assert sock.written == b"last bye"
    assert outbox.take() is None


def test_flusher_thread_writes_for_many_outboxes_and_stops() -> None:
    flusher = Flusher()
    flusher.start()
    sockets = [FakeSocket() for _ in range(50)]
    outboxes = [Outbox(100, try_send=s.send, schedule=flusher.schedule) for s in sockets]
    try:
        for outbox in outboxes:
            outbox.put(b"joined\n")
    finally:
        flusher.stop(timeout=5.0)
    assert all(s.written == b"joined\n" for s in sockets)


def test_writer_waiting_in_take_is_not_woken_by_what_the_flusher_writes() -> None:
    flusher, sock = ManualFlusher(), FakeSocket()
    outbox = Outbox(100, try_send=sock.send, schedule=flusher.schedule)
    got: list[bytes | None] = []
    writer = threading.Thread(target=lambda: got.append(outbox.take()), name="test-writer")
    writer.start()
    try:
        outbox.put(b"event")
        outbox.flush()
        assert sock.written == b"event"
        assert got == []
    finally:
        outbox.close()
        writer.join(5.0)
    assert got == [None]


def test_flusher_keeps_no_reference_to_an_outbox_it_has_flushed() -> None:
    flusher = Flusher()
    flusher.start()
    try:
        sock = FakeSocket()
        outbox = Outbox(100, try_send=sock.send, schedule=flusher.schedule)
        outbox.put(b"last words")
        gone = weakref.ref(outbox)
        wait_until(lambda: sock.written == b"last words", what="the flusher to write")
        wait_until(lambda: flusher_idle(flusher), what="the flusher to wait again")
        del outbox
        gc.collect()
        assert gone() is None  # a flushed outbox (and its connection) can be freed at once
    finally:
        flusher.stop(timeout=5.0)


def test_flush_wakes_a_waiter_for_room() -> None:
    flusher, sock = ManualFlusher(), FakeSocket()
    outbox = Outbox(100, try_send=sock.send, schedule=flusher.schedule)
    outbox.put(b"x" * 80)
    got: list[bool] = []
    waiter = threading.Thread(
        target=lambda: got.append(outbox.wait_for_room(30, budget=100, timeout=10)),
        name="wait-for-room",
    )
    waiter.start()
    waiter.join(0.05)
    assert waiter.is_alive()  # no room yet: it waits
    assert outbox.flush() is False
    waiter.join(5)
    assert got == [True]
    assert sock.written == b"x" * 80
