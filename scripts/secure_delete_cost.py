"""What SQLite's `secure_delete = ON` (relay.storage.sqlite.store, docs/erasure.md) costs.

Fills a WAL-mode, synchronous=FULL database with payload rows laid out like the
node's `payloads` table, then deletes them in transactions of 500 (a purge
chunk), with secure_delete off and on; prints CPU and wall time per deleted
payload, best of three. Inserts are not affected: only freed space is zeroed.

    python3 scripts/secure_delete_cost.py [--rows N] [--sizes 1024,16384]
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import tempfile
import time
from pathlib import Path

CHUNK = 500


def one_run(path: Path, secure: bool, size: int, rows: int) -> tuple[float, float]:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = FULL")
        db.execute(f"PRAGMA secure_delete = {'ON' if secure else 'OFF'}")
        db.execute(
            "CREATE TABLE payloads (id INTEGER PRIMARY KEY, sha BLOB NOT NULL UNIQUE,"
            " body BLOB NOT NULL)"
        )
        db.execute("BEGIN")
        db.executemany(
            "INSERT INTO payloads (sha, body) VALUES (?, ?)",
            ((os.urandom(32), os.urandom(size)) for _ in range(rows)),
        )
        db.execute("COMMIT")
        ids = [r[0] for r in db.execute("SELECT id FROM payloads")]
        cpu, wall = time.process_time(), time.perf_counter()
        for k in range(0, len(ids), CHUNK):
            db.execute("BEGIN")
            db.executemany("DELETE FROM payloads WHERE id = ?", [(i,) for i in ids[k : k + CHUNK]])
            db.execute("COMMIT")
        return time.process_time() - cpu, time.perf_counter() - wall
    finally:
        db.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=20_000)
    ap.add_argument("--sizes", default="1024,16384", help="payload sizes in bytes")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.db"
        for size in (int(s) for s in args.sizes.split(",")):
            for secure in (False, True):
                cpu, wall = min(one_run(path, secure, size, args.rows) for _ in range(3))
                print(
                    f"payload {size:>6} B  secure_delete {'ON ' if secure else 'OFF'}"
                    f"  cpu {cpu / args.rows * 1e6:6.1f} us/delete"
                    f"  wall {wall / args.rows * 1e6:6.1f} us/delete"
                )


if __name__ == "__main__":
    main()
