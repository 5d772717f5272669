"""Write micro-benchmark of a storage backend: µs of wall and of this process's
CPU per stored envelope, through the storage interface (group commit).

    .venv/bin/python scripts/storage_bench.py [TARGET] [--messages N] [--concurrency C]

TARGET is a SQLite file path (default: a temporary one) or a PostgreSQL URL
(use a schema of its own: ?schema=bench; it is left behind for inspection).
PostgreSQL's own CPU is not in the process figure: read it from the server.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from relay.storage.backends import backend_of, open_storage
from relay.storage.interface import WriteTx
from tests.storage.contract import T0, envelope, new


async def run(target: str | Path, messages: int, concurrency: int) -> None:
    store = await open_storage(target)
    items = [new(envelope(payload=os.urandom(512)), mailboxes=("bob",)) for _ in range(messages)]
    per_task = messages // concurrency

    async def one(tx: WriteTx, i: int) -> list[int]:
        return await tx.insert_envelopes([items[i]], T0)

    async def worker(k: int) -> None:
        for i in range(k * per_task, (k + 1) * per_task):
            await store.write(lambda tx, i=i: one(tx, i))

    wall0, cpu0, commits0 = time.perf_counter(), time.process_time(), store.commits
    await asyncio.gather(*(worker(k) for k in range(concurrency)))
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    done = per_task * concurrency
    print(
        f"{backend_of(target)}: {done} envelopes, {store.commits - commits0} commits,"
        f" {wall * 1e6 / done:.0f} µs wall and {cpu * 1e6 / done:.0f} µs process CPU per envelope"
    )
    await store.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("target", nargs="?")
    p.add_argument("--messages", type=int, default=5000)
    p.add_argument("--concurrency", type=int, default=50)
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        target: str | Path = a.target or Path(tmp) / "bench.db"
        asyncio.run(run(target, a.messages, a.concurrency))


if __name__ == "__main__":
    main()
