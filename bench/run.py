"""Run the benchmark: the chatroom core (and its web gateway) against ngIRCd, in one run.

For every load and every system it starts a fresh server pinned to one core (taskset), runs
bench/loadgen.py pinned to the other, samples the server's RSS and thread count from
/proc/PID/status, and stops the server. Results go to bench/results/latest.json and
bench/results/latest.md; --update-readme also puts the table into bench/README.md.

Usage: bash bench/run.sh [--loads 1,2,3,4,5,6,7] [--room-users 1000,10000] [--update-readme]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import re
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
README = ROOT / "bench" / "README.md"
SERVER_CPU = "0"
LOADGEN_CPU = "1"
SAMPLE_S = 0.05
START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 30.0
IDLE_CLIENTS = 10_000
IDLE_SETUP_S = 150.0  # load 5 registers as many clients as it can in this time
# Registrations in flight. ngIRCd listens with a backlog of 10 (hard-coded): more connections
# at once overflow it and measure SYN retransmissions (1 s, 3 s...), so it gets 8. The core
# (backlog 1,024) and the gateway get 64: with 8 the core's joined announcements go out one
# join at a time, with 64 several joins share each send.
PARALLEL = {"ngircd": 8, "core": 64, "core-memory": 64, "gateway": 64, "core-redis": 64,
            "core-redis2": 64}
# "core" keeps history in SQLite (the default); "core-memory" runs it with --store memory, so
# that the pair, in the same run, shows what the durable store costs.
STORES = {"core": "sqlite", "core-memory": "memory", "gateway": "sqlite"}
# The Redis mode: one node on Redis ("core-redis"), and two nodes with the clients split over
# them ("core-redis2": every direct message crosses nodes, so its latency is the cross-node
# delivery latency). Redis and the nodes share the servers' one CPU with each other: these
# rows show what Redis costs per message, not what more machines would add.
REDIS_NODES = {"core-redis": 1, "core-redis2": 2}
REDIS_CONF = ["--save", "", "--appendonly", "yes", "--appendfsync", "everysec"]

NGIRCD_CONF = """\
[Global]
Name = bench.ngircd.local
Info = ngIRCd for the chatroom benchmark
Listen = 127.0.0.1
Ports = {port}
MotdPhrase = bench
[Limits]
# No connection limits, no flood penalty (the core runs with --rate-limit 0 likewise),
# nick length room for the generator's nicks, and no PINGs during a run.
MaxConnections = 0
MaxConnectionsIP = 0
MaxJoins = 0
MaxNickLength = 16
MaxPenaltyTime = 0
PingTimeout = 600
PongTimeout = 600
[Options]
DNS = no
Ident = no
PAM = no
"""


LADDER_RATES = [20_000, 40_000, 60_000, 80_000]
LADDER_S = 3
LOW_LATENCY_MS = 10.0  # "the highest rate with p99 under 10 ms"


@dataclass(frozen=True)
class Load:
    key: str
    title: str
    clients: int
    messages: int = 0
    rate: float = 0.0
    fanout: bool = False
    parallel: int | None = None  # registrations in flight for every system; None: PARALLEL's
    setup_timeout: float = IDLE_SETUP_S


LOADS = [
    Load("1", "100 clients, 20,000 direct messages as fast as possible", 100, 20_000),
    Load("2", "100 clients, 5,000 direct messages/s offered for 4 s", 100, 20_000, 5_000),
    Load("3", "100 clients, 500 messages to everyone (49,500 deliveries)", 100, 500, fanout=True),
    Load("4", "1,000 clients, 10,000 direct messages at 2,000/s", 1_000, 10_000, 2_000),
    Load("5", f"idle clients, as many as possible up to {IDLE_CLIENTS:,}", IDLE_CLIENTS),
    Load("8", "100 clients, 1,000 direct messages/s offered for 4 s (latency at a modest rate)",
         100, 4_000, 1_000),
    # The rate ladder: fixed offered rates of direct messages for LADDER_S each.
    *[Load(f"L{rate // 1000}k", f"100 clients, {rate:,} direct messages/s offered for "
           f"{LADDER_S} s", 100, rate * LADDER_S, rate) for rate in LADDER_RATES],
]
LADDER_KEYS = [f"L{rate // 1000}k" for rate in LADDER_RATES]
GATEWAY_LOADS = ["1", "2"]  # load 6: these through the web gateway

# Load 7, like for like: N users register into one room. ngIRCd's clients JOIN one channel,
# so both servers announce every arrival to everyone there (the core's joined carries the
# user's entry); both get the same registrations in flight: 8, as ngIRCd gets in load 5. More
# would overflow ngIRCd's listen backlog of 10 whenever it is slow to accept (a connection
# waiting for its welcome may still be in that queue) and measure SYN retransmissions (1 s, 3 s,
# ...): at 32 in flight, 2,000 users took ngIRCd 171 s. Reported: the time until the last
# client is registered, and until the last announcement has reached everyone ("settled").
ROOM_USERS = (1_000, 2_000, 5_000, 10_000)
ROOM_PARALLEL = 8
ROOM_SETUP_S = 600.0


def room_loads(sizes: tuple[int, ...]) -> list[Load]:
    return [
        Load(f"7-{n}", f"{n:,} users register into one room (ngIRCd: all JOIN one channel), "
             f"{ROOM_PARALLEL} registrations in flight for both", n, fanout=True,
             parallel=ROOM_PARALLEL, setup_timeout=ROOM_SETUP_S)
        for n in sizes
    ]
# Short loads are run this many times, the systems taking turns, and the median run is
# reported: one run of a second is at the mercy of a shared machine. The median by delivered/s,
# except for paced loads, whose rate is the offered one and whose target is the p99: by p99.
REPEATS = {"1": 5, "3": 5, "2": 3, "4": 3}
PACED = {load.key for load in LOADS if load.rate}


def median_run(key: str, results: list[dict[str, Any]]) -> dict[str, Any]:
    """The median of a load's runs (see REPEATS), with every run's rate and p99 beside it."""
    def p99(result: dict[str, Any]) -> float:
        return float(result.get("latency_ms", {}).get("p99") or 0.0)

    def rate(result: dict[str, Any]) -> float:
        return float(result.get("delivered_per_s") or 0.0)

    ranked = sorted(results, key=p99 if key in PACED else rate)
    chosen = dict(ranked[len(ranked) // 2])
    if len(results) > 1:
        chosen["runs"] = len(results)
        chosen["delivered_per_s_all"] = [r.get("delivered_per_s") for r in results]
        chosen["p99_ms_all"] = [r.get("latency_ms", {}).get("p99") for r in results]
    return chosen


# --- servers --------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def pinned(cpu: str, command: list[str]) -> list[str]:
    return ["taskset", "-c", cpu, *command] if shutil.which("taskset") else command


def wait_listening(port: int, process: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} is not listening on {port} after {START_TIMEOUT_S} s")


def _family(pid: int) -> list[int]:
    """The process and all its descendants, from /proc/PID/task/TID/children."""
    family, todo = [], [pid]
    while todo:
        current = todo.pop()
        family.append(current)
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{current}/task").iterdir():
                with contextlib.suppress(OSError):
                    todo += [int(child) for child in (task / "children").read_text().split()]
    return family


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used so far, all its threads (/proc/PID/stat).
    Unlike wall time, it does not depend on how many other processes want the CPU: on a busy
    shared machine a single-threaded server waits for its turn far longer than one with a
    thread per client, whose threads each get a turn."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Sampler:
    """Samples VmRSS and Threads of a process every SAMPLE_S seconds; keeps the peaks."""

    def __init__(self, pid: int, family: bool = False) -> None:
        self.pid = pid
        self.family = family  # also count descendants (reading them costs: only when needed)
        self.peak_rss_kib = 0
        self.peak_threads = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"sampler-{pid}")

    def read(self) -> tuple[int, int]:
        """(VmRSS in KiB, threads) of the process and its descendants (gunicorn's workers)."""
        rss_total = threads_total = 0
        for pid in _family(self.pid) if self.family else [self.pid]:
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue  # gone meanwhile
            rss = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
            threads = re.search(r"^Threads:\s+(\d+)", status, re.MULTILINE)
            rss_total += int(rss.group(1)) if rss else 0
            threads_total += int(threads.group(1)) if threads else 0
        return rss_total, threads_total

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_S):
            rss, threads = self.read()
            self.peak_rss_kib = max(self.peak_rss_kib, rss)
            self.peak_threads = max(self.peak_threads, threads)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def stop(process: subprocess.Popen[bytes], what: str) -> float:
    """SIGTERM, then SIGKILL after STOP_TIMEOUT_S; returns the seconds it took to exit."""
    started = time.monotonic()
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            print(f"  {what} did not stop in {STOP_TIMEOUT_S} s: killed", flush=True)
            process.kill()
            process.wait()
    return time.monotonic() - started


@contextlib.contextmanager
def core_server(
    max_clients: int, secret: str | None, log: Path, store: str = "sqlite",
    redis: str | None = None, node_id: str = "",
) -> Iterator[tuple[int, int]]:
    port = free_port()
    data_dir = tempfile.mkdtemp(prefix="core-data-", dir=log.parent)  # fresh: empty history
    command = [
        sys.executable, "-m", "tcp_server", "--port", str(port), "--rate-limit", "0",
        "--max-clients", str(max_clients), "--log-level", "WARNING", "--store", store,
        "--max-clients-per-ip", "0", "--max-joins-per-ip", "0",
        "--max-connects-per-ip", "0", "--data-dir", data_dir,
    ]
    if secret:
        command += ["--gateway-secret", secret]
    if redis:
        command += ["--redis", redis, "--node-id", node_id]
    with log.open("ab") as out:
        process = subprocess.Popen(pinned(SERVER_CPU, command), cwd=ROOT, stdout=out, stderr=out)
    try:
        wait_listening(port, process, "the core")
        yield port, process.pid
    finally:
        stop(process, "the core")
        shutil.rmtree(data_dir, ignore_errors=True)


@contextlib.contextmanager
def redis_server(workdir: Path) -> Iterator[tuple[str, int]]:
    """A fresh redis-server (appendonly, fsync every second: run.sh's settings); its URL."""
    port = free_port()
    data = tempfile.mkdtemp(prefix="redis-", dir=workdir)
    command = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", data,
               *REDIS_CONF]
    with (workdir / "redis.log").open("ab") as out:
        process = subprocess.Popen(pinned(SERVER_CPU, command), stdout=out, stderr=out)
    try:
        wait_listening(port, process, "redis-server")
        yield f"redis://127.0.0.1:{port}/0", process.pid
    finally:
        stop(process, "redis-server")
        shutil.rmtree(data, ignore_errors=True)


@contextlib.contextmanager
def ngircd_server(workdir: Path) -> Iterator[tuple[int, int]]:
    port = free_port()
    conf = workdir / "ngircd.conf"
    conf.write_text(NGIRCD_CONF.format(port=port))
    ngircd = shutil.which("ngircd") or "/usr/sbin/ngircd"
    with (workdir / "ngircd.log").open("ab") as out:
        process = subprocess.Popen(
            pinned(SERVER_CPU, [ngircd, "-n", "-f", str(conf)]), stdout=out, stderr=out
        )
    try:
        wait_listening(port, process, "ngIRCd")
        yield port, process.pid
    finally:
        stop(process, "ngIRCd")


@contextlib.contextmanager
def gateway_server(core_port: int, secret: str, log: Path) -> Iterator[tuple[int, int]]:
    port = free_port()
    env = {**os.environ, "CHAT_GATEWAY_SECRET": secret}
    command = [
        sys.executable, "-m", "web_gateway", "--port", str(port),
        "--core", f"127.0.0.1:{core_port}", "--log-level", "WARNING",
        # Every generated client comes from 127.0.0.1, like the core's --max-clients-per-ip 0.
        "--max-websockets-per-ip", "0", "--max-opens-per-ip", "0",
    ]
    with log.open("ab") as out:
        process = subprocess.Popen(
            pinned(SERVER_CPU, command), cwd=ROOT, env=env, stdout=out, stderr=out
        )
    try:
        wait_listening(port, process, "the web gateway")
        yield port, process.pid
    finally:
        stop(process, "the web gateway")


# --- running one load -------------------------------------------------------------------------


def loadgen_command(
    load: Load, dialect: str, port: int, prefix: str, parallel: int,
    more_ports: tuple[int, ...] = (),
) -> list[str]:
    command = [
        sys.executable, str(ROOT / "bench" / "loadgen.py"), "--dialect", dialect,
        "--port", str(port), "--clients", str(load.clients), "--messages", str(load.messages),
        "--rate", str(load.rate), "--prefix", prefix, "--parallel", str(parallel),
    ]
    if more_ports:
        command += ["--more-ports", ",".join(map(str, more_ports))]
    if load.fanout:
        command.append("--fanout")
    if not load.messages:
        command += ["--setup-timeout", str(load.setup_timeout)]
    return pinned(LOADGEN_CPU, command)


def run_load(
    load: Load, dialect: str, port: int, samplers: list[Sampler], parallel: int,
    more_ports: tuple[int, ...] = (),
) -> dict[str, Any]:
    """Run the generator; for an idle load, read the servers' RSS while every client is held."""
    baseline = [sampler.read() for sampler in samplers]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        loadgen_command(load, dialect, port, f"c{load.key}", parallel, more_ports),
        cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
    )
    assert process.stdout is not None
    assert process.stdin is not None
    held: list[tuple[int, int]] = []
    result: dict[str, Any] = {}
    for line in process.stdout:
        record = json.loads(line)
        if "holding" in record:
            held = [sampler.read() for sampler in samplers]
            process.stdin.close()
        else:
            result = record
    if not process.stdin.closed:
        process.stdin.close()
    process.wait()
    result["server_rss_start_kib"] = sum(rss for rss, _ in baseline)
    if held:
        rss_held = sum(rss for rss, _ in held)
        result["server_rss_held_kib"] = rss_held
        result["server_threads_held"] = sum(threads for _, threads in held)
        if result.get("registered"):
            result["kib_per_client"] = (rss_held - result["server_rss_start_kib"]) / result[
                "registered"
            ]
    return result


def measure(system: str, load: Load, workdir: Path) -> dict[str, Any]:
    """One load against one system, on fresh servers."""
    log = workdir / f"{system}.log"
    more_ports: tuple[int, ...] = ()
    with contextlib.ExitStack() as stack:
        if system in REDIS_NODES:
            url, redis_pid = stack.enter_context(redis_server(workdir))
            nodes = [stack.enter_context(core_server(
                max(1_000, load.clients + 10), None, log, redis=url, node_id=f"node{n}"))
                for n in range(REDIS_NODES[system])]
            port, more_ports = nodes[0][0], tuple(p for p, _ in nodes[1:])
            pids, dialect = [redis_pid, *(pid for _, pid in nodes)], "v1"
        elif system == "ngircd":
            port, pid = stack.enter_context(ngircd_server(workdir))
            pids, dialect = [pid], "irc"
        elif system in ("core", "core-memory"):
            port, pid = stack.enter_context(
                core_server(max(1_000, load.clients + 10), None, log, STORES[system])
            )
            pids, dialect = [pid], "v1"
        else:  # the web gateway in front of the core
            secret = secrets.token_hex(16)
            core_port, core_pid = stack.enter_context(core_server(load.clients + 10, secret, log))
            port, gateway_pid = stack.enter_context(gateway_server(core_port, secret, log))
            pids, dialect = [core_pid, gateway_pid], "ws"
        samplers = [stack.enter_context(Sampler(pid, system == "gateway")) for pid in pids]
        started = time.monotonic()
        parallel = load.parallel or PARALLEL[system]
        result = run_load(load, dialect, port, samplers, parallel, more_ports)
        result["server_cpu_seconds"] = sum(cpu_seconds(pid) for pid in pids)
        if system == "gateway":
            # Each on its own (start-up included): the gunicorn worker is the arbiter's child,
            # which the sum above does not count.
            result["core_cpu_seconds"] = cpu_seconds(pids[0])
            result["gateway_cpu_seconds"] = sum(cpu_seconds(pid) for pid in _family(pids[1]))
            result["server_cpu_seconds"] += result["gateway_cpu_seconds"] - cpu_seconds(pids[1])
        result["parallel_registrations"] = parallel
        result["wall_seconds"] = time.monotonic() - started
    result["server_peak_rss_kib"] = sum(s.peak_rss_kib for s in samplers)
    result["server_peak_threads"] = sum(s.peak_threads for s in samplers)
    return result


# --- the report -------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        found = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
        cpu = found.group(1) if found else cpu
    ngircd = subprocess.run(
        [shutil.which("ngircd") or "/usr/sbin/ngircd", "--version"],
        capture_output=True, text=True, check=False,
    ).stdout.split("\n")[0]
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),  # the core runs on this interpreter too
        "python_path": sys.executable,
        "ngircd": ngircd,
        "load_average": os.getloadavg(),
        "pinning": f"servers on CPU {SERVER_CPU}, generator on CPU {LOADGEN_CPU}"
        if shutil.which("taskset") else "no taskset: not pinned",
    }


def _fmt(value: Any, digits: int = 0) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}"


def _ratio(ours: float | None, theirs: float | None) -> str:
    if not ours or not theirs:
        return "-"
    return f"{ours / theirs:.2f}x"


def _verdict(ok: bool) -> str:
    return "met" if ok else "**not met**"


RATE_TOLERANCE = 0.99  # paced loads deliver at the offered rate; 1% is clock noise, not a loss


def targets(results: dict[str, dict[str, Any]]) -> list[tuple[str, str, bool]]:
    out: list[tuple[str, str, bool]] = []
    for key in ("1", "2", "4", *LADDER_KEYS):
        core, irc = results.get(f"core/{key}"), results.get(f"ngircd/{key}")
        if not core or not irc or "delivered_per_s" not in core or "delivered_per_s" not in irc:
            continue
        tolerance = RATE_TOLERANCE if core.get("offered_rate") else 1.0
        rate_ok = core["delivered_per_s"] >= tolerance * irc["delivered_per_s"]
        ratio = _ratio(core["delivered_per_s"], irc["delivered_per_s"])
        out.append((key, f"rate ≥ ngIRCd's ({ratio})", rate_ok))
        out.append((key, f"no message lost ({core['lost']} lost)", core["lost"] == 0))
        p99, their_p99 = core["latency_ms"]["p99"], irc["latency_ms"]["p99"]
        out.append((key, f"p99 ≤ ngIRCd's ({p99:.1f} vs {their_p99:.1f} ms)", p99 <= their_p99))
    core, irc = results.get("core/3"), results.get("ngircd/3")
    if core and irc and "delivered_per_s" in core and "delivered_per_s" in irc:
        ok = core["delivered_per_s"] >= 0.5 * irc["delivered_per_s"] and core["lost"] == 0
        ratio = _ratio(core["delivered_per_s"], irc["delivered_per_s"])
        out.append(("3", f"fan-out rate ≥ ½ ngIRCd's ({ratio})", ok))
    best = {system: max((rate for rate, key in zip(LADDER_RATES, LADDER_KEYS, strict=True)
                         if (r := results.get(f"{system}/{key}")) and "latency_ms" in r
                         and r["latency_ms"]["p99"] < LOW_LATENCY_MS and r["lost"] == 0),
                        default=0) for system in ("core", "ngircd")}
    if any(f"core/{key}" in results for key in LADDER_KEYS):
        out.append(("L", f"highest offered rate with p99 < {LOW_LATENCY_MS:g} ms ≥ ngIRCd's "
                    f"({best['core']:,} vs {best['ngircd']:,} msg/s)",
                    best["core"] >= best["ngircd"]))
    core = results.get("core/5")
    if core:
        out.append(("5", f"{IDLE_CLIENTS:,} clients held ({core.get('registered', 0):,}; "
                    f"{_fmt(core.get('kib_per_client'), 1)} KiB each)",
                    core.get("registered") == IDLE_CLIENTS and not core.get("closed_by_server")))
    room = f"7-{max(ROOM_USERS)}"
    core, irc = results.get(f"core/{room}"), results.get(f"ngircd/{room}")
    if core and irc and core.get("register_seconds") and irc.get("register_seconds"):
        # ngIRCd not registering everyone within ROOM_SETUP_S counts as slower.
        ok = core.get("registered") == max(ROOM_USERS) and (
            irc.get("registered", 0) < max(ROOM_USERS)
            or core["register_seconds"] <= irc["register_seconds"])
        out.append((room, f"{max(ROOM_USERS):,} users in one room registered no slower than "
                    f"ngIRCd ({core['register_seconds']:.1f} vs {irc['register_seconds']:.1f} s)",
                    ok))
    for key in GATEWAY_LOADS:
        web, direct = results.get(f"gateway/{key}"), results.get(f"core/{key}")
        if not web or not direct or "delivered_per_s" not in web:
            continue
        rate_ok = web["delivered_per_s"] >= 0.5 * direct["delivered_per_s"] and web["lost"] == 0
        ratio = _ratio(web["delivered_per_s"], direct["delivered_per_s"])
        out.append((f"6 ({key})", f"gateway rate ≥ ½ direct ({ratio})", rate_ok))
        added = web["latency_ms"]["p50"] - direct["latency_ms"]["p50"]
        out.append((f"6 ({key})", f"gateway adds < 1 ms p50 ({added:+.2f} ms)", added < 1.0))
    return out


def room_lines(results: dict[str, dict[str, Any]]) -> list[str]:
    """Load 7: registering N users into one room, ours beside ngIRCd's from the same run."""
    keys = sorted({key.split("/", 1)[1] for key in results if key.split("/", 1)[1]
                   .startswith("7-")}, key=lambda k: int(k.split("-")[1]))
    if not keys:
        return []
    lines = ["", f"Load 7, N users register into one room ({ROOM_PARALLEL} registrations in "
             "flight for both; ngIRCd's clients JOIN one channel), seconds from the first "
             "connection until the last user is registered / until every arrival has been "
             "announced to everyone, and the CPU time the server used meanwhile (on a busy "
             "machine the fairer figure); ratio > 1: ours slower:", "",
             "| N | core registered | core s | core settled s | core CPU s | "
             "ngIRCd registered | ngIRCd s | ngIRCd settled s | ngIRCd CPU s | "
             "ratio (registered) | ratio (settled) | ratio (CPU) |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for key in keys:
        core, irc = results.get(f"core/{key}", {}), results.get(f"ngircd/{key}", {})
        lines.append("| " + " | ".join([
            _fmt(int(key.split("-")[1])),
            _fmt(core.get("registered")), _fmt(core.get("register_seconds"), 2),
            _fmt(core.get("settled_seconds"), 2), _fmt(core.get("server_cpu_seconds"), 1),
            _fmt(irc.get("registered")), _fmt(irc.get("register_seconds"), 2),
            _fmt(irc.get("settled_seconds"), 2), _fmt(irc.get("server_cpu_seconds"), 1),
            _ratio(core.get("register_seconds"), irc.get("register_seconds")),
            _ratio(core.get("settled_seconds"), irc.get("settled_seconds")),
            _ratio(core.get("server_cpu_seconds"), irc.get("server_cpu_seconds")),
        ]) + " |")
    return lines


def markdown(report: dict[str, Any]) -> str:
    results = report["results"]
    info = report["machine"]
    lines = [
        f"Run of {info['date']} on {info['cpu']}, {info['cores']} cores, "
        f"{info['memory_gib']} GiB, Linux {info['kernel']}, Python {info['python']} "
        f"({info.get('python_path', '')}), "
        f"{info['ngircd']}; {info['pinning']}; load average at start "
        f"{', '.join(f'{x:.2f}' for x in info['load_average'])}.",
        "",
        "| load | system | delivered/s | lost | p50 ms | p99 ms | max ms | register N | "
        "peak RSS MiB | peak threads | rate vs ngIRCd | p99 vs ngIRCd |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for load in [*LOADS, *[Load(f"6/{k}", "", 0) for k in GATEWAY_LOADS]]:
        gateway_key = load.key.split("/")[1] if load.key.startswith("6/") else None
        systems = [("gateway", gateway_key)] if gateway_key else [
            ("core", load.key), ("core-memory", load.key), ("core-redis", load.key),
            ("core-redis2", load.key), ("ngircd", load.key)
        ]
        labelled = False
        for system, key in systems:
            r = results.get(f"{system}/{key}")
            if not r:
                continue
            peer = results.get(f"ngircd/{key}") if system != "gateway" else results.get(
                f"core/{key}")
            lat = r.get("latency_ms", {})
            rate = r.get("delivered_per_s")
            peer_rate = peer.get("delivered_per_s") if peer else None
            peer_p99 = peer.get("latency_ms", {}).get("p99") if peer else None
            name = {"core": "core", "core-memory": "core, --store memory", "ngircd": "ngIRCd",
                    "gateway": "gateway (vs core)", "core-redis": "core, 1 node on Redis",
                    "core-redis2": "core, 2 nodes on Redis (cross-node)"}[system]
            register = (f"{r.get('registered', 0):,} in {r.get('register_seconds', 0):.2f} s")
            lines.append(
                "| " + " | ".join([
                    "" if labelled else load.key,
                    name,
                    _fmt(rate),
                    _fmt(r.get("lost")),
                    _fmt(lat.get("p50"), 1),
                    _fmt(lat.get("p99"), 1),
                    _fmt(lat.get("max"), 1),
                    register,
                    _fmt(r.get("server_peak_rss_kib", 0) / 1024, 1),
                    _fmt(r.get("server_peak_threads")),
                    _ratio(rate, peer_rate) if system != "ngircd" else "",
                    _ratio(lat.get("p99"), peer_p99) if system != "ngircd" else "",
                ]) + " |"
            )
            labelled = True
    lines += ["", "; ".join(
        f"load {key}: the median of {n} runs by {'p99' if key in PACED else 'delivered/s'}"
        for key, n in REPEATS.items()
    ) + " (the systems taking turns); every run is in latest.json."]
    for key in REPEATS:
        for system in ("core", "core-memory", "core-redis", "core-redis2", "ngircd"):
            r = results.get(f"{system}/{key}")
            if r and r.get("delivered_per_s_all"):
                rates = ", ".join(_fmt(x) for x in r["delivered_per_s_all"])
                p99s = ", ".join(_fmt(x, 1) for x in r["p99_ms_all"])
                lines.append(f"- load {key} {system}: delivered/s {rates}; p99 ms {p99s}")
    idle = [(s, results.get(f"{s}/5")) for s in ("core", "ngircd")]
    lines += ["", "Load 5, idle clients:", ""]
    for system, r in idle:
        if r:
            lines.append(
                f"- {system}: {r.get('registered', 0):,} of {IDLE_CLIENTS:,} registered in "
                f"{r.get('register_seconds', 0):.1f} s ({_fmt(r.get('registered_per_s'))}/s); "
                f"RSS {_fmt(r.get('server_rss_start_kib', 0) / 1024, 1)} MiB idle → "
                f"{_fmt(r.get('server_rss_held_kib', 0) / 1024, 1)} MiB holding them, "
                f"{_fmt(r.get('kib_per_client'), 1)} KiB per client; "
                f"{_fmt(r.get('server_threads_held'))} threads"
                + (f"; failures: {'; '.join(r['register_failures'])}"
                   if r.get("register_failures") else "")
            )
    lines += room_lines(results)
    lines += ["", "Targets:", ""]
    for key, text, ok in targets(results):
        lines.append(f"- load {key}: {text}: {_verdict(ok)}")
    lines += ["", "Loads:", ""]
    lines += [f"{load.key}. {load.title}" for load in LOADS]
    lines.append("6. loads 1 and 2 through the web gateway (websocket clients), "
                 "compared with the core's direct path")
    lines.append(f"7. N users ({', '.join(f'{n:,}' for n in ROOM_USERS)} by default) register "
                 "into one room, like for like with ngIRCd (see above)")
    lines.append("Redis rows: Redis and the nodes share the servers' one CPU; with 2 nodes "
                 "every direct message crosses nodes (its p50/p99 is the cross-node latency) "
                 "and half the deliveries of load 3 do.")
    return "\n".join(lines) + "\n"


def update_readme(table: str) -> None:
    text = README.read_text()
    start, end = "<!-- results:start -->", "<!-- results:end -->"
    before, rest = text.split(start, 1)
    _, after = rest.split(end, 1)
    README.write_text(f"{before}{start}\n{table}{end}{after}")


def raise_open_files_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--loads", default="1,2,3,4,5,6,7,L",
                        help="comma-separated load numbers; L: the rate ladder "
                        f"({', '.join(LADDER_KEYS)})")
    parser.add_argument("--systems", default="core,ngircd",
                        help="core, core-memory (the core with --store memory), core-redis "
                        "(one node on Redis), core-redis2 (two nodes on Redis, the clients "
                        "split), ngircd")
    parser.add_argument("--room-users", default=",".join(map(str, ROOM_USERS)),
                        help="load 7: the room sizes, comma-separated")
    parser.add_argument("--update-readme", action="store_true")
    args = parser.parse_args()
    chosen = set(args.loads.split(","))
    if "L" in chosen:
        chosen.update(LADDER_KEYS)
    systems = args.systems.split(",")
    raise_open_files_limit()  # inherited by the servers and the generator
    if shutil.which("taskset") and hasattr(os, "sched_setaffinity"):
        # This process (sampling /proc) stays off the servers' CPU, like the generator.
        os.sched_setaffinity(0, {int(LOADGEN_CPU)})
    RESULTS.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"machine": machine(), "results": {}}
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="chat-bench-") as tmp:
        workdir = Path(tmp)
        os.chmod(workdir, 0o755)  # ngIRCd reads its configuration after dropping to nobody
        plan = [(system, load) for load in LOADS if load.key in chosen for system in systems]
        if "7" in chosen:
            sizes = tuple(int(n) for n in args.room_users.split(","))
            plan += [(system, load) for load in room_loads(sizes) for system in systems]
        if "6" in chosen:
            if (ROOT / "web_gateway" / "__main__.py").exists():
                plan += [("gateway", load) for load in LOADS if load.key in GATEWAY_LOADS]
            else:
                print("load 6 skipped: no web_gateway package in this checkout", flush=True)
        runs: dict[str, list[dict[str, Any]]] = {}
        rounds = max(REPEATS.values(), default=1)
        for round_number in range(rounds):
            for system, load in plan:
                if round_number >= REPEATS.get(load.key, 1):
                    continue
                print(f"load {load.key} on {system} (run {round_number + 1}): {load.title}",
                      flush=True)
                try:
                    result = measure(system, load, workdir)
                except RuntimeError as error:
                    print(f"  failed: {error}", flush=True)
                    result = {"error": str(error)}
                runs.setdefault(f"{system}/{load.key}", []).append(result)
                summary = {k: result.get(k) for k in (
                    "registered", "register_seconds", "delivered_per_s", "lost", "latency_ms",
                    "server_peak_rss_kib", "server_peak_threads", "kib_per_client",
                    "core_cpu_seconds", "gateway_cpu_seconds",
                    "wall_seconds", "settled_seconds",
                ) if k in result}
                print(f"  {json.dumps(summary)}", flush=True)
        for key, results in runs.items():
            report["results"][key] = median_run(key.split("/")[-1], results)
    report["seconds"] = time.monotonic() - started
    (RESULTS / "latest.json").write_text(json.dumps(report, indent=2))
    table = markdown(report)
    (RESULTS / "latest.md").write_text(table)
    print(table)
    if args.update_readme:
        update_readme(table)
    print(f"whole run: {report['seconds']:.0f} s; results in {RESULTS}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
