"""Outbox and the shared flusher: who writes a socket when, in order, and its close."""

from __future__ import annotations

import gc
import socket
import threading
import time
import weakref
from collections.abc import Callable, Iterator

import pytest

from tcp_server.flusher import Flusher
from tcp_server.outbox import Flushed, Outbox, Writing
from tests.support.core import wait_until


class FakeSocket:
    """A non-blocking send that takes at most `room` bytes per call and records them.

    `during_send`, if set, runs inside send() after the bytes are taken (before it returns):
    the moment another thread may queue more.
    """

    def __init__(self, room: int = 1_000) -> None:
        self.room = room
        self.written = b""
        self.during_send: Callable[[], None] | None = None
        self.closed = False
        self.shut: list[int] = []

    def send(self, data: bytes, flags: int = 0, /) -> int:
        if self.room == 0:
            raise BlockingIOError
        taken = data[: self.room]
        self.written += taken
        if self.during_send is not None:
            hook, self.during_send = self.during_send, None
            hook()
        return len(taken)

    def recv(self, size: int, flags: int = 0, /) -> bytes:
        return b""

    def fileno(self) -> int:
        return -1

    def shutdown(self, how: int, /) -> None:
        self.shut.append(how)

    def close(self) -> None:
        self.closed = True


class ManualFlusher:
    """Records schedule() and lag() calls; the test runs the flushes itself."""

    def __init__(self) -> None:
        self.due: list[Outbox] = []
        self.lagging = 0

    def schedule(self, outbox: Outbox) -> bool:
        self.due.append(outbox)
        return True

    def lag(self, change: int) -> None:
        self.lagging += change


def manual(room: int = 1_000, max_bytes: int = 100) -> tuple[Outbox, FakeSocket, ManualFlusher]:
    sock, flusher = FakeSocket(room), ManualFlusher()
    return Outbox(max_bytes, sock, flusher), sock, flusher


def test_outbox_going_from_idle_to_due_is_scheduled_once() -> None:
    outbox, _, flusher = manual()
    outbox.put(b"a")
    outbox.put(b"b")
    assert flusher.due == [outbox]
    assert outbox.state is Writing.DUE


def test_flush_writes_everything_queued_as_one_send() -> None:
    outbox, sock, flusher = manual()
    outbox.put(b"a")
    outbox.put(b"b")
    assert outbox.flush() is Flushed.NOTHING
    assert sock.written == b"ab"
    assert outbox.state is Writing.IDLE
    outbox.put(b"c")  # idle again: scheduled anew
    assert flusher.due == [outbox, outbox]


def test_what_a_partial_send_left_goes_out_before_what_another_thread_queued_meanwhile() -> None:
    # The bug this guards against: the rest of a partial send queued *after* data that a
    # producer added while the send was in progress.
    outbox, sock, _ = manual(room=3, max_bytes=1_000)
    outbox.put(b"line-1\n")

    def another_thread_queues() -> None:
        producer = threading.Thread(target=outbox.put, args=(b"line-2\n",), name="producer")
        producer.start()
        producer.join(5)

    sock.during_send = another_thread_queues
    assert outbox.flush() is Flushed.BLOCKED
    assert sock.written == b"lin"
    sock.room = 1_000
    outbox.writable()
    assert outbox.flush() is Flushed.NOTHING
    assert sock.written == b"line-1\nline-2\n"


def test_a_blocked_outbox_is_not_scheduled_again_by_put() -> None:
    outbox, sock, flusher = manual(room=2)
    outbox.put(b"abcd")
    assert outbox.flush() is Flushed.BLOCKED
    outbox.put(b"ef")
    assert flusher.due == [outbox]  # the flusher waits for the socket, not for put()
    assert outbox.state is Writing.BLOCKED
    sock.room = 100
    outbox.writable()
    assert outbox.flush() is Flushed.NOTHING
    assert sock.written == b"abcdef"


def test_over_budget_on_a_writable_socket_is_accepted_and_reported_as_lag() -> None:
    outbox, sock, flusher = manual(max_bytes=10)
    assert outbox.put(b"x" * 8)
    assert outbox.put(b"y" * 8)  # the flusher has not run yet: the server is behind
    assert flusher.lagging == 1
    assert outbox.flush() is Flushed.NOTHING
    assert flusher.lagging == 0
    assert sock.written == b"x" * 8 + b"y" * 8


def test_over_budget_on_a_socket_that_stopped_taking_data_is_refused() -> None:
    outbox, _, flusher = manual(room=0, max_bytes=10)
    assert outbox.put(b"x" * 8)
    assert outbox.flush() is Flushed.BLOCKED
    assert not outbox.put(b"y" * 8)
    assert outbox.put(b"z" * 2)  # what fits still fits
    assert flusher.lagging == 0


def test_a_socket_found_full_with_more_than_the_budget_queued_is_reported_overflowing() -> None:
    sock, flusher = FakeSocket(room=4), ManualFlusher()
    overflowed: list[bool] = []
    outbox = Outbox(10, sock, flusher, on_overflow=lambda: overflowed.append(True))
    outbox.put(b"a" * 8)
    outbox.put(b"b" * 8)  # accepted: lagging
    assert outbox.flush() is Flushed.BLOCKED
    assert overflowed == [True]
    assert flusher.lagging == 0  # its own fault now, not the server's


def test_a_drop_finishes_the_line_begun_before_its_bye() -> None:
    outbox, sock, _ = manual(room=3, max_bytes=1_000)
    outbox.put(b"line-1\n")
    outbox.put(b"line-2\n")
    assert outbox.flush() is Flushed.BLOCKED
    outbox.close(b"bye\n", discard=True)
    sock.room = 1_000
    outbox.writable()
    assert outbox.flush() is Flushed.NOTHING  # finished; the reader has not released it yet
    assert sock.written == b"line-1\nline-2\nbye\n"


def test_close_then_release_closes_the_socket_after_the_last_bytes() -> None:
    outbox, sock, flusher = manual()
    outbox.put(b"last ")
    outbox.close(b"bye")
    assert outbox.flush() is Flushed.NOTHING
    assert outbox.state is Writing.FINISHED
    assert not sock.closed  # the reader may still be in recv(): not ours to close
    outbox.release()
    assert flusher.due == [outbox, outbox]
    assert outbox.flush() is Flushed.CLOSE
    assert outbox.close_socket(None)
    assert sock.closed
    assert sock.written == b"last bye"
    assert socket.SHUT_WR in sock.shut


def test_cut_off_at_the_deadline_drops_what_is_unsent() -> None:
    outbox, sock, _ = manual(room=0)
    outbox.put(b"never read")
    assert outbox.flush() is Flushed.BLOCKED
    outbox.release()
    outbox.close(b"bye")
    assert outbox.cut_off() is Flushed.CLOSE
    assert outbox.close_socket(None)
    assert sock.closed
    assert socket.SHUT_RDWR in sock.shut


def test_put_after_close_is_discarded() -> None:
    outbox, _, _ = manual()
    outbox.close(b"bye")
    assert outbox.put(b"late")
    assert not outbox.close(b"again")


def test_flush_wakes_a_waiter_for_room() -> None:
    outbox, sock, _ = manual()
    outbox.put(b"x" * 80)
    got: list[bool] = []
    waiter = threading.Thread(
        target=lambda: got.append(outbox.wait_for_room(30, budget=100, timeout=10)),
        name="wait-for-room",
    )
    waiter.start()
    waiter.join(0.05)
    assert waiter.is_alive()  # no room yet: it waits
    assert outbox.flush() is Flushed.NOTHING
    waiter.join(5)
    assert got == [True]
    assert sock.written == b"x" * 80


# --- the flusher thread with real sockets ---------------------------------------------------


@pytest.fixture
def flusher() -> Iterator[Flusher]:
    running = Flusher()
    running.start()
    try:
        yield running
    finally:
        running.stop(time.monotonic() + 1.0, timeout=5.0)


def read_all(sock: socket.socket, size: int) -> bytes:
    sock.settimeout(5.0)
    got = b""
    while len(got) < size:
        chunk = sock.recv(65_536)
        if not chunk:
            break
        got += chunk
    return got


def test_flusher_thread_writes_for_many_sockets(flusher: Flusher) -> None:
    pairs = [socket.socketpair() for _ in range(50)]
    try:
        outboxes = [Outbox(100, ours, flusher) for ours, _ in pairs]
        for outbox in outboxes:
            outbox.put(b"joined\n")
        for _, theirs in pairs:
            assert read_all(theirs, 7) == b"joined\n"
    finally:
        for ours, theirs in pairs:
            ours.close()
            theirs.close()


def test_flusher_waits_for_a_full_socket_and_keeps_the_order(flusher: Flusher) -> None:
    ours, theirs = socket.socketpair()
    try:
        outbox = Outbox(64 * 1024 * 1024, ours, flusher)
        lines = [b"%08d\n" % i for i in range(400_000)]  # 3.6 MB: more than the kernel takes
        for start in range(0, len(lines), 1_000):
            outbox.put(b"".join(lines[start : start + 1_000]))
        wait_until(lambda: outbox.state is Writing.BLOCKED, what="the socket to fill")
        expected = b"".join(lines)
        assert read_all(theirs, len(expected)) == expected
    finally:
        ours.close()
        theirs.close()


def test_flusher_closes_a_released_socket_after_its_bye(flusher: Flusher) -> None:
    ours, theirs = socket.socketpair()
    try:
        outbox = Outbox(100, ours, flusher)
        outbox.put(b"hello\n")
        outbox.close(b"bye\n", deadline=time.monotonic() + 5)
        outbox.release()
        assert read_all(theirs, 100) == b"hello\nbye\n"  # then end-of-file
        wait_until(lambda: outbox.state is Writing.CLOSED, what="the socket to close")
        assert ours.fileno() == -1
    finally:
        ours.close()
        theirs.close()


def test_flusher_cuts_off_a_socket_that_does_not_take_its_bye_by_the_deadline(
    flusher: Flusher,
) -> None:
    ours, theirs = socket.socketpair()
    try:
        outbox = Outbox(64 * 1024 * 1024, ours, flusher)
        outbox.put(b"x" * (8 * 1024 * 1024))  # never read
        wait_until(lambda: outbox.state is Writing.BLOCKED, what="the socket to fill")
        outbox.release()
        outbox.close(b"bye\n", deadline=time.monotonic() + 0.2)
        wait_until(lambda: outbox.state is Writing.CLOSED, what="the cut-off")
    finally:
        ours.close()
        theirs.close()


def test_flusher_keeps_no_reference_to_an_outbox_it_has_flushed(flusher: Flusher) -> None:
    ours, theirs = socket.socketpair()
    try:
        outbox = Outbox(100, ours, flusher)
        outbox.put(b"last words")
        gone = weakref.ref(outbox)
        assert read_all(theirs, 10) == b"last words"
        wait_until(lambda: gone().state is Writing.IDLE,  # type: ignore[union-attr]
                   what="the flush to end")
        del outbox
        for _ in range(100):  # the flusher's loop may hold its last list for a moment
            gc.collect()
            if gone() is None:
                break
            time.sleep(0.01)
        assert gone() is None  # a flushed outbox (and its connection) can be freed at once
    finally:
        ours.close()
        theirs.close()


def test_a_waiting_reader_is_released_when_the_lag_ends(flusher: Flusher) -> None:
    flusher.lag(+1)
    released = threading.Event()

    def reader() -> None:
        while flusher.lagging:
            flusher.wait_caught_up()
        released.set()

    thread = threading.Thread(target=reader, name="lagging-reader")
    thread.start()
    try:
        assert not released.wait(0.05)
        flusher.lag(-1)
        assert released.wait(5)
    finally:
        flusher.lag(-flusher.lagging)
        thread.join(5)
