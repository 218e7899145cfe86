"""The restart load: a core holding N registered clients is stopped with SIGTERM while
messages are in flight, started again on the same data directory, and all N clients resume at
once (no jitter: the worst case), beside ngIRCd registering N fresh clients in the same run.

    python bench/restart.py --clients 10000          # or: bash bench/run.sh --restart 10000

Reports (JSON on stdout, a table on stderr): the stop time, the restart's startup time, the
time to resume every client, refused and timed-out reconnects, acknowledged messages replayed
after the restart and lost (must be 0), duplicates (must be 0), presence events seen while
resuming (`back` expected; `left`/`joined` must be 0), and the core's RSS before the restart
and after the storm. tests/robustness/test_restart_herd.py runs the same at 1,000 clients.

One process drives every client through one selector (non-blocking sockets), so the herd
costs the server what 10,000 separate programs would, without 10,000 threads here.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import re
import resource
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tcp_server.protocol import name_key  # noqa: E402 - after the path is set
from tcp_server.reclaim import TRIM_EVERY_S  # noqa: E402 - after the path is set

RECV_BYTES = 262_144
SEQ_RE = re.compile(rb'"seq":(\d+)')
# Lines the herd only counts (tens of millions of them for 10,000 clients): no JSON parsing.
COUNTED = {b'{"type":"back"': "back", b'{"type":"joined"': "joined",  # the most common first
           b'{"type":"left"': "left", b'{"type":"away"': "away"}
COUNTED_AFTER_NEWLINE = {b"\n" + prefix: kind for prefix, kind in COUNTED.items()}


@dataclass(eq=False)
class Peer:
    """One client of the herd: its session and what it has seen."""

    index: int
    name: str
    sock: socket.socket | None = None
    buffer: bytes = b""
    token: str = ""
    after: int = 0  # the highest message seq seen: the resume point
    seqs: set[int] = field(default_factory=set)
    duplicates: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    welcomed: bool = False
    resumed: bool = False
    bye: bool = False
    closed: bool = False
    errors: list[str] = field(default_factory=list)
    acked: dict[int, int] = field(default_factory=dict)  # request id -> recipient index
    # With Herd(keep_lists=True): who is online as this client knows it (name -> status),
    # kept as docs/protocol.md says: the `users` reply after the welcome, then the events.
    users: dict[str, str] | None = None


class Herd:
    """N clients of one core, driven from one thread."""

    def __init__(self, address: tuple[str, int], count: int, prefix: str = "h",
                 keep_lists: bool = False) -> None:
        self.address = address
        # Every client asks `list` with its hello and keeps it from the presence events (each
        # line parsed: for the test at 1,000 clients; the bench at 10,000 only counts them).
        self.keep_lists = keep_lists
        self.peers = [Peer(index, f"{prefix}{index}") for index in range(count)]
        self.selector = selectors.DefaultSelector()
        self._buffer = bytearray(RECV_BYTES)  # every read lands here (see _read)
        self.acked_to: dict[int, int] = {}  # seq -> recipient index, from `sent`
        self.on_welcome: Callable[[Peer], None] = lambda peer: None
        # Peers connecting whose hello is not answered yet (welcomed or closed settles one).
        self.unsettled: set[Peer] = set()

    # --- sockets ----------------------------------------------------------------------------

    def _open(self, peer: Peer) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        code = sock.connect_ex(self.address)
        if code not in (0, errno.EINPROGRESS):
            sock.close()
            raise ConnectionError(os.strerror(code))
        peer.sock, peer.buffer, peer.closed, peer.bye = sock, b"", False, False
        peer.welcomed = peer.resumed = False
        peer.users = None
        self.selector.register(sock, selectors.EVENT_WRITE, peer)

    def close(self, peer: Peer) -> None:
        if peer.sock is not None:
            self.selector.unregister(peer.sock)
            peer.sock.close()
            peer.sock = None
        peer.closed = True
        self.unsettled.discard(peer)

    def send(self, peer: Peer, request: dict[str, Any]) -> None:
        assert peer.sock is not None
        data = json.dumps(request, separators=(",", ":")).encode() + b"\n"
        peer.sock.setblocking(True)  # small requests: a blocking send never waits long here
        try:
            peer.sock.sendall(data)
        finally:
            peer.sock.setblocking(False)

    # --- the loop ---------------------------------------------------------------------------

    def pump(self, until: Callable[[], bool], timeout_s: float,
             hello: Callable[[Peer], dict[str, Any]]) -> bool:
        """Serve every socket until `until()` or the timeout; True if `until()` held."""
        deadline = time.monotonic() + timeout_s
        next_check = 0.0
        while True:
            now = time.monotonic()
            if now >= next_check:
                if until():
                    return True
                next_check = now + 0.02
            remaining = deadline - now
            if remaining <= 0:
                return False
            ready = self.selector.select(min(remaining, 0.2))
            # Peers waiting for their welcome first: in a storm one pass over the others reads
            # hundreds of megabytes, and a welcome read a pass late would count as a slow resume.
            ready.sort(key=lambda item: item[0].data.welcomed)
            for key, events in ready:
                peer: Peer = key.data
                if events & selectors.EVENT_WRITE and peer.sock is not None:
                    self._connected(peer, hello)
                if events & selectors.EVENT_READ and peer.sock is not None:
                    self._read(peer)

    def _connected(self, peer: Peer, hello: Callable[[Peer], dict[str, Any]]) -> None:
        assert peer.sock is not None
        code = peer.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code:
            peer.errors.append(f"connect: {os.strerror(code)}")
            self.close(peer)
            return
        self.selector.modify(peer.sock, selectors.EVENT_READ, peer)
        self.send(peer, hello(peer))
        if self.keep_lists:
            self.send(peer, {"type": "list"})

    def _read(self, peer: Peer) -> None:
        """Read what one socket has. 10,000 clients resuming receive 50 million presence
        lines (5.6 GB): they are counted in place in one reused buffer (bytearray.count), never
        copied or split one by one, so that this herd reads faster than the server writes
        (before: a 256 KiB bytes object per read, two more copies and a Python loop per line,
        and the herd, not the server, was the limit of the storm)."""
        assert peer.sock is not None
        buf = self._buffer
        try:
            size = peer.sock.recv_into(buf)
        except BlockingIOError:
            return
        except OSError as error:
            peer.errors.append(f"recv: {error}")
            self.close(peer)
            return
        if not size:
            self.close(peer)
            return
        first = buf.find(b"\n", 0, size)
        if first < 0:
            peer.buffer += bytes(buf[:size])
            return
        head, peer.buffer = peer.buffer + bytes(buf[:first]), b""
        if head:
            self._line(peer, head)
        last = buf.rfind(b"\n", 0, size)
        if self.keep_lists:
            if last > first:
                for line in bytes(buf[first + 1:last]).split(b"\n"):
                    self._line(peer, line)
            peer.buffer = bytes(buf[last + 1:size])
            return
        # The whole lines after the first newline, up to the last one.
        lines = buf.count(b"\n", first + 1, last + 1)
        counted = 0
        # `back` first: when every line is one (the storm), the other kinds cannot be there.
        for prefix, kind in COUNTED_AFTER_NEWLINE.items():
            count = buf.count(prefix, first, last)
            if count:
                peer.counts[kind] = peer.counts.get(kind, 0) + count
                counted += count
                if counted == lines:
                    break
        if counted != lines:
            for line in bytes(buf[first + 1:last]).split(b"\n"):
                if line[:line.find(b'"', 9) + 1] not in COUNTED:
                    self._line(peer, line)
        peer.buffer = bytes(buf[last + 1:size])

    def _line(self, peer: Peer, line: bytes) -> None:
        kind = COUNTED.get(line[:line.find(b'"', 9) + 1])
        if kind is not None and not self.keep_lists:
            peer.counts[kind] = peer.counts.get(kind, 0) + 1
            return
        event = json.loads(line)
        kind = event["type"]
        peer.counts[kind] = peer.counts.get(kind, 0) + 1
        if self.keep_lists:
            self._keep_list(peer, event)
        if kind == "message":
            seq = event["seq"]
            if seq in peer.seqs:
                peer.duplicates += 1
            peer.seqs.add(seq)
            peer.after = max(peer.after, seq)
        elif kind == "welcome":
            peer.welcomed = True
            peer.resumed = bool(event.get("resumed"))
            peer.token = event.get("session", peer.token)
            self.unsettled.discard(peer)
            self.on_welcome(peer)
        elif kind == "sent":
            recipient = peer.acked.pop(event["id"], None)
            if recipient is not None:
                self.acked_to[event["seq"]] = recipient
        elif kind == "bye":
            peer.bye = True
            if not peer.welcomed:  # closed before its hello was answered: say why
                peer.errors.append(f"bye: {event.get('reason')}")
        elif kind == "error":
            peer.errors.append(f"{event.get('code')}: {event.get('message')}")
            if not peer.welcomed:  # a refused hello: the reconnect failed
                self.close(peer)

    @staticmethod
    def _keep_list(peer: Peer, event: dict[str, Any]) -> None:
        kind = event["type"]
        if kind == "users":
            peer.users = {name_key(user["name"]): user["status"] for user in event["users"]}
        elif peer.users is None or kind not in ("joined", "back", "away", "left"):
            return  # before the list reply: the reply says it all
        elif kind == "left":
            peer.users.pop(name_key(event["name"]), None)
        else:
            peer.users[name_key(event["name"])] = "away" if kind == "away" else "online"

    # --- phases -----------------------------------------------------------------------------

    def connect(self, peers: list[Peer], hello: Callable[[Peer], dict[str, Any]],
                in_flight: int, timeout_s: float) -> float:
        """Connect and hello every peer, at most `in_flight` unanswered at once (0: all at
        once); returns the seconds until every peer was welcomed or failed."""
        started = time.monotonic()
        waiting = list(reversed(peers))

        def refill() -> bool:
            while waiting and (in_flight == 0 or len(self.unsettled) < in_flight):
                peer = waiting.pop()
                try:
                    self._open(peer)
                except ConnectionError as error:
                    peer.errors.append(f"connect: {error}")
                    peer.closed = True
                    continue
                self.unsettled.add(peer)
            return not waiting and not self.unsettled

        self.pump(refill, timeout_s, hello)
        return time.monotonic() - started

    def quiet(self, quiet_s: float, timeout_s: float) -> None:
        """Read until nothing arrived for quiet_s (the presence events of a big setup)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            events = self.selector.select(quiet_s)
            if not events:
                return
            for key, _ in events:
                if key.data.sock is not None:
                    self._read(key.data)

    def reset_counts(self) -> None:
        for peer in self.peers:
            peer.counts.clear()

    def close_all(self) -> None:
        for peer in self.peers:
            self.close(peer)
        self.selector.close()


# --- the core process ---------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process so far (/proc/PID/stat, clock ticks)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def start_core(port: int, data_dir: Path, clients: int, log: Path,
               pin: list[str], wrap: list[str] | None = None) -> subprocess.Popen[bytes]:
    command = [
        *pin, *(wrap or []), sys.executable, "-m", "tcp_server", "--port", str(port),
        "--rate-limit", "0",
        "--max-clients", str(clients + 64), "--max-clients-per-ip", "0", "--max-joins-per-ip", "0",
        "--max-connects-per-ip", "0",
        "--log-level", "WARNING", "--data-dir", str(data_dir),
    ]
    with log.open("ab") as out:
        process = subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=out)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the core exited with {process.returncode}; see {log}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return process
        time.sleep(0.01)
    process.kill()
    raise RuntimeError("the core did not start listening within 30 s")


@contextlib.contextmanager
def stopping(process: subprocess.Popen[bytes]) -> Iterator[subprocess.Popen[bytes]]:
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def raise_open_files_limit() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# --- the scenario -------------------------------------------------------------------------


def plan(count: int, senders: int, per_sender: int) -> list[tuple[int, int]]:
    """(sender, recipient) pairs: direct messages spread over every client."""
    pairs = []
    for sender in range(min(senders, count)):
        for number in range(per_sender):
            recipient = (sender * per_sender + number) * 7919 % count
            if recipient == sender:
                recipient = (recipient + 1) % count
            pairs.append((sender, recipient))
    return pairs


def run_restart(clients: int, senders: int = 100, per_sender: int = 20,
                in_flight_s: float = 0.0, timeout_s: float = 300.0,
                pin: list[str] | None = None, workdir: Path | None = None,
                profile: Path | None = None, keep_lists: bool = False) -> dict[str, Any]:
    """The whole scenario against one core; returns the figures. `keep_lists`: every client
    keeps the list of users from `list` and the events, and `lists_wrong` counts the clients
    whose list is not everyone online once the storm is over."""
    raise_open_files_limit()
    pin = pin or []
    with contextlib.ExitStack() as stack:
        if workdir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="restart-")))
        data_dir = workdir / "data"
        log = workdir / "core.log"
        port = free_port()
        result: dict[str, Any] = {"clients": clients, "python": sys.version.split()[0]}

        core = stack.enter_context(stopping(start_core(port, data_dir, clients, log, pin)))
        herd = Herd(("127.0.0.1", port), clients, keep_lists=keep_lists)
        stack.callback(herd.close_all)
        result["register_s"] = herd.connect(
            herd.peers, lambda peer: {"type": "hello", "name": peer.name}, 64, timeout_s)
        result["registered"] = sum(peer.welcomed for peer in herd.peers)
        herd.quiet(0.5, timeout_s)
        time.sleep(TRIM_EVERY_S + 1)  # measured as after the storm: settled and trimmed
        result["rss_before_kib"] = rss_kib(core.pid)

        # Every tenth client (never a sender) loses its connection before the messages: away,
        # it must get what was sent to it meanwhile when it resumes after the restart.
        absent = [peer for peer in herd.peers[senders:] if peer.index % 10 == 9]
        for peer in absent:
            herd.close(peer)
        result["away_before_stop"] = len(absent)
        herd.quiet(0.3, timeout_s)

        # Messages in flight, then SIGTERM: some are acknowledged, some delivered live, some
        # neither. Every acknowledged one must reach its recipient, live or replayed.
        for number, (sender, recipient) in enumerate(plan(clients, senders, per_sender)):
            peer = herd.peers[sender]
            peer.acked[number] = recipient
            herd.send(peer, {"type": "send", "to": herd.peers[recipient].name,
                             "text": f"m{number}", "id": number})
        herd.pump(lambda: False, in_flight_s, lambda peer: {})
        exited_at: list[float] = []
        stopped = core

        def wait_for_exit() -> None:
            stopped.wait()
            exited_at.append(time.monotonic())

        waiter = threading.Thread(target=wait_for_exit, daemon=True)
        signalled = time.monotonic()
        core.send_signal(signal.SIGTERM)
        waiter.start()
        herd.pump(lambda: all(peer.closed for peer in herd.peers), 60, lambda peer: {})
        waiter.join(60)
        result["stop_s"] = exited_at[0] - signalled if exited_at else None  # None: killed
        if core.poll() is None:
            core.kill()
            core.wait(10)
        result["stop_exit_code"] = core.returncode
        result["byes"] = sum(peer.bye for peer in herd.peers)
        result["acknowledged"] = len(herd.acked_to)
        away_indexes = {peer.index for peer in absent}
        result["acknowledged_to_away"] = sum(to in away_indexes for to in herd.acked_to.values())
        live = {seq: herd.peers[to].seqs.copy() for seq, to in herd.acked_to.items()}
        result["delivered_before_stop"] = sum(seq in seqs for seq, seqs in live.items())

        started = time.monotonic()
        # The restarted core, under py-spy if asked (--profile): the storm is what to profile.
        wrap = None if profile is None else [
            str(Path(sys.executable).parent / "py-spy"), "record", "-f", "raw", "-r", "200",
            "--gil", "-o", str(profile), "--"]
        core = stack.enter_context(stopping(start_core(port, data_dir, clients, log, pin, wrap)))
        result["startup_s"] = time.monotonic() - started
        result["rss_fresh_kib"] = rss_kib(core.pid)
        seen_before = {peer.index: set(peer.seqs) for peer in herd.peers}
        herd.reset_counts()

        welcomed_at: list[float] = []
        herd.on_welcome = lambda peer: welcomed_at.append(time.monotonic())
        # CPU spent by the core and by this herd during the storm: on a busy machine the
        # wall time is partly waiting for a CPU, and the herd itself reads N^2/2 events.
        core_cpu, herd_cpu = cpu_seconds(core.pid), own_cpu_seconds()
        storm = time.monotonic()
        herd.connect(herd.peers, lambda peer: {"type": "hello", "name": peer.name,
                                               "resume": peer.token, "after": peer.after},
                     0, timeout_s)
        result["resumed"] = sum(peer.welcomed and peer.resumed for peer in herd.peers)
        result["resume_all_s"] = (max(welcomed_at) - storm) if welcomed_at else None
        # Refused: the connection failed, was closed or answered with an error before welcome.
        result["refused"] = sum(peer.closed and not peer.welcomed for peer in herd.peers)
        result["timed_out"] = sum(1 for peer in herd.peers if not peer.welcomed
                                  and not peer.closed)
        result["errors"] = sorted({e for peer in herd.peers for e in peer.errors})[:10]

        def complete() -> bool:
            return all(seq in herd.peers[to].seqs for seq, to in herd.acked_to.items())

        herd.pump(complete, 60, lambda peer: {})
        result["all_replayed_s"] = time.monotonic() - storm
        result["storm_core_cpu_s"] = cpu_seconds(core.pid) - core_cpu
        result["storm_herd_cpu_s"] = own_cpu_seconds() - herd_cpu
        herd.quiet(0.5, timeout_s)
        result["replayed"] = sum(len(peer.seqs - seen_before[peer.index])
                                 for peer in herd.peers)
        result["lost"] = sum(seq not in herd.peers[to].seqs for seq, to in herd.acked_to.items())
        result["duplicates"] = sum(peer.duplicates for peer in herd.peers)
        for kind in ("back", "left", "joined", "away"):
            result[f"{kind}_events"] = sum(peer.counts.get(kind, 0) for peer in herd.peers)
        if keep_lists:
            everyone = {name_key(peer.name): "online" for peer in herd.peers}
            result["lists_wrong"] = sum(peer.users != everyone for peer in herd.peers)
        # Once the storm is over, and the core's periodic trim of freed memory has run.
        time.sleep(TRIM_EVERY_S + 1)
        result["rss_after_storm_kib"] = rss_kib(core.pid)
        # py-spy writes its samples on SIGINT, and the core stops on it as on SIGTERM.
        core.send_signal(signal.SIGTERM if profile is None else signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            core.wait(30)
        return result


def ngircd_registration(clients: int, pin: bool) -> dict[str, Any]:
    """ngIRCd registering `clients` fresh clients, as bench/run.py's idle load does."""
    sys.path.insert(0, str(ROOT))
    from bench import run  # the same ngIRCd set-up and load generator as every other load

    with tempfile.TemporaryDirectory(prefix="restart-ngircd-") as workdir, \
            run.ngircd_server(Path(workdir)) as (port, _pid):
        command = [sys.executable, str(ROOT / "bench" / "loadgen.py"), "--dialect", "irc",
                   "--port", str(port), "--clients", str(clients), "--messages", "0",
                   "--prefix", "n", "--setup-timeout", "300",
                   # as bench/run.py registers ngIRCd's clients: more in flight would overflow
                   # its listen backlog of 10 and measure SYN retransmissions
                   "--parallel", str(run.PARALLEL["ngircd"])]
        if pin:
            command = run.pinned(run.LOADGEN_CPU, command)
        process = subprocess.Popen(command, cwd=ROOT, stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, env={**os.environ,
                                                                "PYTHONPATH": str(ROOT)})
        assert process.stdin is not None
        assert process.stdout is not None
        record: dict[str, Any] = {}
        for line in process.stdout:
            record = json.loads(line)
            if "holding" in record and not process.stdin.closed:
                process.stdin.close()
        process.wait(60)
        return {"registered": record.get("registered"),
                "register_s": record.get("register_seconds")}


def table(ours: dict[str, Any], ngircd: dict[str, Any] | None) -> str:
    def kib(key: str) -> str:
        return f"{ours[key] / 1024:.0f} MiB" if ours.get(key) else "-"

    def secs(value: Any) -> str:
        return f"{value:.2f} s" if isinstance(value, float) else "-"

    rows = [
        ("clients registered", f"{ours['registered']:,} of {ours['clients']:,}"),
        ("SIGTERM to exit", f"{secs(ours['stop_s'])} (exit {ours['stop_exit_code']}), "
                            f"{ours['byes']:,} byes"),
        ("restart to listening", secs(ours["startup_s"])),
        ("all resumed (first connect to last welcome)", secs(ours["resume_all_s"])),
        ("CPU during the storm: core / herd", f"{secs(ours['storm_core_cpu_s'])} / "
                                               f"{secs(ours['storm_herd_cpu_s'])}"),
        ("ngIRCd: registering as many fresh", secs(ngircd and ngircd.get("register_s"))),
        ("resumed / refused / timed out",
         f"{ours['resumed']:,} / {ours['refused']:,} / {ours['timed_out']:,}"),
        ("acknowledged / replayed / lost / duplicates",
         f"{ours['acknowledged']:,} / {ours['replayed']:,} / {ours['lost']:,} / "
         f"{ours['duplicates']:,}"),
        ("back / left / joined events while resuming",
         f"{ours['back_events']:,} / {ours['left_events']:,} / {ours['joined_events']:,}"),
        ("core RSS before restart / fresh / after storm",
         f"{kib('rss_before_kib')} / {kib('rss_fresh_kib')} / {kib('rss_after_storm_kib')}"),
    ]
    lines = [f"Restart of a core holding {ours['clients']:,} clients (Python {ours['python']})",
             "", "| | |", "|---|---|"]
    lines += [f"| {what} | {value} |" for what, value in rows]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=10_000)
    parser.add_argument("--senders", type=int, default=100)
    parser.add_argument("--per-sender", type=int, default=20)
    parser.add_argument("--no-ngircd", action="store_true")
    parser.add_argument("--no-pin", action="store_true", help="do not pin with taskset")
    parser.add_argument("--profile", type=Path,
                        help="run the restarted core under py-spy, raw samples to this file")
    parser.add_argument("--workdir", type=Path,
                        help="keep the data directory and the core's log here")
    args = parser.parse_args()
    server_pin = [] if args.no_pin else ["taskset", "-c", "0"]
    if server_pin:
        os.sched_setaffinity(0, {1})  # the herd on the other CPU, as bench/run.py's loadgen
    ours = run_restart(args.clients, args.senders, args.per_sender, pin=server_pin,
                       profile=args.profile, workdir=args.workdir)
    ngircd = None if args.no_ngircd else ngircd_registration(args.clients, bool(server_pin))
    print(json.dumps({"core": ours, "ngircd": ngircd}))
    print(table(ours, ngircd), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
