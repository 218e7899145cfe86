"""The SQLite store alone: CPU per message by messages per commit (no network, one process).

A commit costs about as much as many messages however few it holds (its WAL frames, its
locks, and before this was measured the search index's new segment): this stores N messages
through SqliteStore, `--batch` of them per commit, and prints the process's CPU time per
message, the writer's later indexing included.

    python bench/commit_cost.py --batch 1,10,100 --messages 20000
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tcp_server import store as store_module
from tcp_server.store import NewMessage, Retention, SqliteStore, StoredMessage, StoreError


def cost_per_message(batch: int, messages: int) -> float:
    """CPU microseconds per message with `batch` messages per commit."""
    with tempfile.TemporaryDirectory(prefix="commit-cost-") as data_dir:
        store = SqliteStore(data_dir, retention=Retention(max_messages=0, max_days=0))
        try:
            alice = store.open_session("alice", "token-a", "127.0.0.1", 1, "tcp")
            bob = store.open_session("bob", "token-b", "127.0.0.1", 2, "tcp")
            done = threading.Event()
            answered = [0]

            def then(results: list[StoredMessage | StoreError]) -> None:
                answered[0] += len(results)
                if answered[0] >= messages:
                    done.set()

            started = time.process_time()
            sent = 0
            while sent < messages:
                # Holding the commit lock while queueing makes the next commit take `batch`.
                with store._committing:
                    for _ in range(min(batch, messages - sent)):
                        store._jobs.append(store_module._Job(
                            NewMessage(1.0, "alice", alice.id, "bob", bob.id,
                                       f"{sent} a chat message of some length"),
                            store._committed, then,
                        ))
                        sent += 1
                store._drain(store_module.LEADER_MAX_BATCHES)
            if not done.wait(60):
                raise TimeoutError("the store did not answer every message")
        finally:
            store.close()  # indexes what is left: counted
        return (time.process_time() - started) / messages * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", default="1,10,100", help="messages per commit, comma-separated")
    parser.add_argument("--messages", type=int, default=20_000)
    args = parser.parse_args()
    for batch in (int(b) for b in args.batch.split(",")):
        us = cost_per_message(batch, args.messages)
        print(f"{batch} per commit: {us:.1f} us of CPU per message", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
