"""Server CPU per message: the core's CPU seconds over one load, divided by the messages.

On a shared, busy machine wall-clock rates are noise, but the CPU a server spends per message
is not (much): this runs one load of bench/run.py against the core of one or more source trees
(e.g. main's and a branch's) and stores, the systems taking turns, and prints the median
microseconds of server CPU per message for each. Only the CPU used while the generator sends
is counted (from the start of the generator: its 100 registrations are included).

    python bench/cpu_per_message.py --trees base=/tmp/main,new=. --stores sqlite,memory \
        --load 1 --rounds 5
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.run import (
    LOADGEN_CPU,
    LOADS,
    SERVER_CPU,
    cpu_seconds,
    free_port,
    loadgen_command,
    pinned,
    raise_open_files_limit,
    stop,
    wait_listening,
)


def one_run(
    tree: Path, store: str, load_key: str, workdir: Path, messages: int = 0
) -> dict[str, float]:
    load = next(load for load in LOADS if load.key == load_key)
    if messages:
        load = dataclasses.replace(load, messages=messages)
    port = free_port()
    data_dir = tempfile.mkdtemp(prefix="core-data-", dir=workdir)
    command = [
        sys.executable, "-m", "tcp_server", "--port", str(port), "--rate-limit", "0",
        "--max-clients", "1000", "--log-level", "WARNING", "--store", store,
        "--max-clients-per-ip", "0", "--data-dir", data_dir,
    ]
    # The join limit as a variable: a tree from before it had no such flag (and ignores it).
    env = {**os.environ, "PYTHONPATH": str(tree), "CHAT_MAX_JOINS_PER_IP": "0",
           "CHAT_MAX_CONNECTS_PER_IP": "0"}
    with (workdir / "core.log").open("ab") as out:
        server = subprocess.Popen(pinned(SERVER_CPU, command), cwd=tree, env=env,
                                  stdout=out, stderr=out)
    try:
        wait_listening(port, server, "the core")
        before = cpu_seconds(server.pid)  # start-up excluded; 100 registrations are not
        generator = subprocess.Popen(
            loadgen_command(load, "v1", port, f"c{load.key}", 64),
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        )
        assert generator.stdout is not None
        result: dict[str, float] = {}
        for line in generator.stdout:
            record = json.loads(line)
            if "holding" in record:
                continue
            result = record
        generator.wait()
        used = cpu_seconds(server.pid) - before
    finally:
        stop(server, "the core")
        shutil.rmtree(data_dir, ignore_errors=True)
    delivered = result.get("delivered") or result.get("messages") or load.messages
    return {"cpu": used, "delivered": float(delivered),
            "rate": float(result.get("delivered_per_s") or 0.0),
            "lost": float(result.get("lost") or 0)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trees", default=f"this={Path(__file__).resolve().parent.parent}",
                        help="label=path,... source trees whose tcp_server to run")
    parser.add_argument("--stores", default="sqlite,memory")
    parser.add_argument("--load", default="1")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--messages", type=int, default=0,
                        help="messages per run instead of the load's (more: less noise)")
    args = parser.parse_args()
    trees = [(label, Path(path).resolve()) for label, path in
             (item.split("=", 1) for item in args.trees.split(","))]
    raise_open_files_limit()
    if shutil.which("taskset") and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {int(LOADGEN_CPU)})
    samples: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="cpu-per-message-") as tmp:
        workdir = Path(tmp)
        for round_number in range(args.rounds):
            for label, tree in trees:
                for store in args.stores.split(","):
                    started = time.monotonic()
                    run = one_run(tree, store, args.load, workdir, args.messages)
                    key = f"{label}/{store}"
                    us = run["cpu"] / run["delivered"] * 1e6
                    samples.setdefault(key, []).append(us)
                    print(f"round {round_number + 1} {key}: {us:.1f} us/message "
                          f"({run['cpu']:.2f} s CPU, {run['delivered']:.0f} delivered, "
                          f"lost {run['lost']:.0f}, {run['rate']:,.0f}/s, "
                          f"{time.monotonic() - started:.1f} s)", flush=True)
    print("median us of server CPU per message (registration included, start-up not):")
    for key, values in samples.items():
        print(f"  {key}: {statistics.median(values):.1f}  "
              f"(runs: {', '.join(f'{v:.1f}' for v in values)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
