"""How the relay reads and writes its sockets with one system call where gevent would make two.

Under gunicorn's gevent worker a socket is gevent's: its recv() first tries the read and,
when nothing is there (EAGAIN, raised and caught in Python), waits in the event loop and tries
again; its send() waits for room whatever the flags. A relay's socket has one reader and one
writer at a time (web_gateway.relay), which know better: the reader waits until the socket is
readable before it reads, unless its last read filled the buffer (then more is likely there);
the writer sends on the raw non-blocking socket and takes EAGAIN as "blocked". With plain
sockets (the tests' threaded server) both are the socket's own blocking calls.
"""

from __future__ import annotations

import errno
import socket
from typing import Any, Final

# An int, not the IntFlag: `IntFlag | IntFlag` runs enum's Python __or__, microseconds a send.
DONTWAIT: Final = int(socket.MSG_DONTWAIT)


class NoWaitSocket:
    """The Outbox's view of a relay socket: a send that never waits for room.

    gevent's socket waits for room (a trip around the event loop) whatever the flags; its raw
    socket (`_sock`, non-blocking) answers EAGAIN instead, as a plain socket does to
    MSG_DONTWAIT. Everything else is the socket's own.
    """

    __slots__ = ("sock",)

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def send(self, data: bytes, flags: int = 0, /) -> int:
        raw = getattr(self.sock, "_sock", self.sock)  # looked up each time: close swaps it
        sent: int = raw.send(data, int(flags) | DONTWAIT)
        return sent

    def recv(self, size: int, flags: int = 0, /) -> bytes:
        return self.sock.recv(size, flags)

    def fileno(self) -> int:
        return self.sock.fileno()

    def shutdown(self, how: int, /) -> None:
        self.sock.shutdown(how)

    def close(self) -> None:
        self.sock.close()


class SocketReader:
    """The reads of one socket by its one reader: `size` bytes at most each.

    Under gevent, after a read that did not fill the buffer the reader waits on the socket's
    own read watcher first (no system call), then reads the raw socket once: one recv per
    wake-up instead of a recv that fails with EAGAIN, a wait, and the recv. The socket's
    timeout still applies to the wait (TimeoutError); a socket closed meanwhile raises OSError
    (EBADF), as gevent's own recv() would.
    """

    __slots__ = ("_gevent", "_size", "filled", "sock")

    def __init__(self, sock: socket.socket, size: int) -> None:
        self.sock = sock
        self._size = size
        self._gevent = hasattr(sock, "_wait") and hasattr(sock, "_read_event")
        self.filled = False  # the last read filled the buffer: more is likely waiting

    def recv(self) -> bytes:
        """Block until bytes come (b"" at the end of the stream); raises OSError."""
        if not self._gevent:
            data = self.sock.recv(self._size)
        else:
            gsock: Any = self.sock
            while True:
                if not self.filled:
                    event = gsock._read_event
                    if event is None:  # closed by another greenlet
                        raise OSError(errno.EBADF, "the socket was closed")
                    gsock._wait(event)
                try:
                    data = gsock._sock.recv(self._size)
                    break
                except BlockingIOError:  # a read that filled the buffer took it all
                    self.filled = False
        self.filled = len(data) == self._size
        return data
