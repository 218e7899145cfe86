"""The message store's size on disk per million messages, and its write rate without the network.

    .venv/bin/python bench/store_size.py [--messages 200000]

Stores N messages of chat-like text (5-15 words from a vocabulary of 2,000, direct and to
everyone) through SqliteStore's own interface, from 10 threads as connections would, then
reports the database's bytes (main file + WAL after a checkpoint) per message and per million,
and the time to open the full store again (a restart: no scan of the history).
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tcp_server.store import DB_FILE, NewMessage, SqliteStore, StoredMessage, StoreError

THREADS = 10
IN_FLIGHT = 50  # per thread: what a pipelining client has in hand


def vocabulary(size: int, rng: random.Random) -> list[str]:
    letters = "abcdefghijklmnopqrstuvwxyz"
    return ["".join(rng.choice(letters) for _ in range(rng.randint(2, 9))) for _ in range(size)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=200_000)
    args = parser.parse_args()
    rng = random.Random(7)
    words = vocabulary(2_000, rng)
    per_thread = args.messages // THREADS
    texts = [" ".join(rng.choice(words) for _ in range(rng.randint(5, 15)))
             for _ in range(10_000)]
    with tempfile.TemporaryDirectory(prefix="store-size-") as data_dir:
        store = SqliteStore(data_dir)
        text_bytes = 0

        def client(number: int) -> None:
            nonlocal text_bytes
            done = threading.Semaphore(0)

            def then(results: list[StoredMessage | StoreError]) -> None:
                done.release(len(results))

            for i in range(per_thread):
                text = texts[(number * per_thread + i) % len(texts)]
                text_bytes += len(text.encode())
                to, recipient = ("*", None) if i % 3 else (f"user{i % 50}", 1 + i % 50)
                store.submit(NewMessage(1.8e9 + i, f"user{number}", 100 + number, to, recipient,
                                        text), then)
                if i >= IN_FLIGHT:
                    done.acquire()
            for _ in range(min(IN_FLIGHT, per_thread)):
                done.acquire()

        started = time.perf_counter()
        threads = [threading.Thread(target=client, args=(n,)) for n in range(THREADS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        seconds = time.perf_counter() - started
        stored = store.last_seq()
        store.close()
        path = Path(data_dir) / DB_FILE
        with sqlite3.connect(path) as db:
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        size = sum(p.stat().st_size for p in Path(data_dir).iterdir())
        # A restart over this store: opening it must not scan the history (issue: restart at
        # scale). The time to open is what a core's start adds for its store.
        started = time.perf_counter()
        reopened = SqliteStore(data_dir)
        reopen_s = time.perf_counter() - started
        assert reopened.last_seq() == stored
        reopened.close()
    print(json.dumps({
        "messages": stored,
        "messages_per_s": round(stored / seconds),
        "average_text_bytes": round(text_bytes / stored, 1),
        "database_bytes": size,
        "bytes_per_message": round(size / stored, 1),
        "mib_per_million": round(size / stored * 1_000_000 / 2**20),
        "reopen_ms": round(reopen_s * 1000, 1),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
