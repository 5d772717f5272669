"""The node's SQLite store (DESIGN §8).

Invariants:
- One process per database: `open_store` takes an exclusive lock file and
  refuses a second opener.
- WAL, synchronous=FULL, file mode 0600; numbered migrations in
  `schema_version`; a database newer than the code is refused.
- Every write goes through one writer task that runs the queued jobs of many
  callers in a single transaction (group commit). A caller's future resolves
  only after COMMIT returned, so nothing is acknowledged before it is durable.
  Each job runs inside its own SAVEPOINT: one job failing rolls back only
  itself.
- Reads use a second connection; WAL gives them the last committed state.
- Payloads are content-addressed by sha256 and stored once.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import sqlite3
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from relay.errors import RelayError, StoreError

T = TypeVar("T")
Tx = aiosqlite.Connection
Job = Callable[[Tx], Awaitable[T]]

SCHEMA_VERSION = 1

MIGRATIONS: dict[int, str] = {
    1: """
CREATE TABLE envelopes (
    rid INTEGER PRIMARY KEY,
    origin TEXT NOT NULL,
    id BLOB NOT NULL,
    hdigest BLOB NOT NULL,
    header BLOB NOT NULL,
    signature BLOB NOT NULL,
    payload_sha BLOB,
    trace BLOB NOT NULL,
    kind TEXT NOT NULL,
    sender TEXT NOT NULL,
    dest TEXT NOT NULL,
    created INTEGER NOT NULL,
    expires INTEGER NOT NULL,
    received INTEGER NOT NULL,
    size INTEGER NOT NULL,
    residency TEXT NOT NULL,
    from_peer TEXT,
    rule_id TEXT NOT NULL DEFAULT '',
    policy_hash TEXT NOT NULL DEFAULT '',
    UNIQUE (origin, id)
);
CREATE INDEX envelopes_id ON envelopes (id);
CREATE TABLE payloads (
    sha BLOB PRIMARY KEY,
    body BLOB NOT NULL
) WITHOUT ROWID;
CREATE TABLE queue (
    rid INTEGER PRIMARY KEY,
    hop TEXT NOT NULL,
    enqueued INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT NOT NULL DEFAULT '',
    held INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX queue_hop ON queue (hop, rid);
CREATE TABLE inbox (
    seq INTEGER PRIMARY KEY,
    mailbox TEXT NOT NULL,
    rid INTEGER NOT NULL,
    delivered INTEGER NOT NULL,
    acked INTEGER
);
CREATE UNIQUE INDEX inbox_once ON inbox (mailbox, rid);
CREATE INDEX inbox_unacked ON inbox (mailbox, seq) WHERE acked IS NULL;
CREATE TABLE recipients (
    msg BLOB NOT NULL,
    address TEXT NOT NULL,
    rid INTEGER NOT NULL,
    mailbox TEXT NOT NULL,
    status TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    at INTEGER NOT NULL,
    PRIMARY KEY (msg, address)
) WITHOUT ROWID;
CREATE INDEX recipients_rid ON recipients (rid);
CREATE TABLE pending_receipts (
    seq INTEGER PRIMARY KEY,
    origin TEXT NOT NULL,
    status TEXT NOT NULL,
    reason TEXT NOT NULL,
    residency TEXT NOT NULL,
    id BLOB NOT NULL,
    recipients BLOB NOT NULL,
    at INTEGER NOT NULL
);
CREATE TABLE batches (
    peer TEXT NOT NULL,
    batch BLOB NOT NULL,
    results BLOB NOT NULL,
    at INTEGER NOT NULL,
    PRIMARY KEY (peer, batch)
) WITHOUT ROWID;
CREATE TABLE nonces (
    peer TEXT NOT NULL,
    nonce TEXT NOT NULL,
    at INTEGER NOT NULL,
    PRIMARY KEY (peer, nonce)
) WITHOUT ROWID;
CREATE TABLE peer_state (
    peer TEXT PRIMARY KEY,
    failures INTEGER NOT NULL DEFAULT 0,
    next_try INTEGER NOT NULL DEFAULT 0,
    last_error TEXT NOT NULL DEFAULT '',
    last_ok INTEGER NOT NULL DEFAULT 0,
    delivered INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE idempotency (
    mailbox TEXT NOT NULL,
    key TEXT NOT NULL,
    response TEXT NOT NULL,
    at INTEGER NOT NULL,
    PRIMARY KEY (mailbox, key)
) WITHOUT ROWID;
CREATE TABLE decisions (
    seq INTEGER PRIMARY KEY,
    at INTEGER NOT NULL,
    point TEXT NOT NULL,
    envelope BLOB,
    peer TEXT NOT NULL DEFAULT '',
    outcome TEXT NOT NULL,
    rule TEXT NOT NULL DEFAULT '',
    reason TEXT NOT NULL DEFAULT '',
    policy_hash TEXT NOT NULL DEFAULT ''
);
CREATE INDEX decisions_envelope ON decisions (envelope);
""",
}

TABLES = (
    "envelopes",
    "payloads",
    "queue",
    "inbox",
    "recipients",
    "pending_receipts",
    "batches",
    "nonces",
    "peer_state",
    "idempotency",
    "decisions",
)


@dataclass
class _Pending:
    job: Job[Any]
    future: asyncio.Future[Any]


class DatabaseLocked(StoreError):
    code = "locked"


class Store:
    """Group-commit writer plus a read connection over one SQLite file."""

    def __init__(self, path: Path, db: Tx, reader: Tx, lock_fd: int) -> None:
        self.path = path
        self._db = db
        self.reader = reader
        self._lock_fd = lock_fd
        self._jobs: asyncio.Queue[_Pending | None] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None
        self._after_commit: list[Callable[[], None]] = []
        self.commits = 0
        self.max_jobs_per_commit = 512

    # --- lifecycle -----------------------------------------------------------

    def start(self) -> None:
        if self._writer is None:
            self._writer = asyncio.create_task(self._write_loop(), name="store-writer")

    async def close(self) -> None:
        """Finish every queued write, then close both connections and the lock."""
        if self._writer is not None:
            await self._jobs.put(None)
            await self._writer
            self._writer = None
        await self.reader.close()
        await self._db.close()
        with contextlib.suppress(OSError):
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
        os.close(self._lock_fd)

    def on_commit(self, hook: Callable[[], None]) -> None:
        """Run `hook` after every successful commit (wake senders, long-polls)."""
        self._after_commit.append(hook)

    # --- writing -------------------------------------------------------------

    async def write(self, job: Job[T]) -> T:
        """Run `job` in the next group-commit transaction; return once committed."""
        if self._writer is None:
            raise StoreError("the store is not accepting writes")
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        await self._jobs.put(_Pending(job, fut))
        return await fut

    async def _write_loop(self) -> None:
        stop = False
        while not stop:
            first = await self._jobs.get()
            if first is None:
                break
            batch = [first]
            while len(batch) < self.max_jobs_per_commit and not self._jobs.empty():
                nxt = self._jobs.get_nowait()
                if nxt is None:
                    stop = True
                    break
                batch.append(nxt)
            await self._run_batch(batch)

    async def _run_batch(self, batch: list[_Pending]) -> None:
        outcomes: list[tuple[_Pending, Any, BaseException | None]] = []
        try:
            await self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as e:
            err = StoreError(f"cannot begin a transaction: {e}")
            for p in batch:
                _settle(p.future, None, err)
            return
        for p in batch:
            await self._db.execute("SAVEPOINT job")
            try:
                result = await p.job(self._db)
            except Exception as e:  # noqa: BLE001 - re-raised in the caller by its future
                await self._db.execute("ROLLBACK TO job")
                await self._db.execute("RELEASE job")
                if isinstance(e, sqlite3.Error):
                    e = StoreError(f"database error: {e}")
                outcomes.append((p, None, e))
            else:
                await self._db.execute("RELEASE job")
                outcomes.append((p, result, None))
        try:
            await self._db.execute("COMMIT")
        except sqlite3.Error as e:
            with contextlib.suppress(sqlite3.Error):
                await self._db.execute("ROLLBACK")
            err = StoreError(f"commit failed, nothing was stored: {e}")
            for p, _, _ in outcomes:
                _settle(p.future, None, err)
            return
        self.commits += 1
        for p, result, exc in outcomes:
            _settle(p.future, result, exc)
        for hook in self._after_commit:
            hook()

    # --- reading -------------------------------------------------------------

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        async with self.reader.execute(sql, params) as cur:
            return list(await cur.fetchall())

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Row | None:
        async with self.reader.execute(sql, params) as cur:
            row: sqlite3.Row | None = await cur.fetchone()
            return row

    async def row_counts(self) -> dict[str, int]:
        """Rows in every table; tests compare these before and after a refusal."""
        counts: dict[str, int] = {}
        for t in TABLES:
            row = await self.fetchone(f"SELECT count(*) FROM {t}")
            counts[t] = int(row[0]) if row else 0
        return counts

    async def pragma(self, name: str) -> str:
        row = await self.fetchone(f"PRAGMA {name}")
        return str(row[0]) if row else ""


def _settle(fut: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    if fut.done():
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(result)


def _take_lock(path: Path) -> int:
    lock_path = path.with_name(path.name + ".lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise DatabaseLocked(
            f"{path} is in use by another relay process (lock {lock_path} is held)"
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


async def _connect(path: Path) -> Tx:
    db = await aiosqlite.connect(str(path), isolation_level=None)
    db.row_factory = sqlite3.Row
    await db.execute("PRAGMA busy_timeout = 5000")
    await db.execute("PRAGMA foreign_keys = ON")
    return db


async def migrate(db: Tx, path: Path) -> int:
    """Bring the schema to SCHEMA_VERSION; refuse a database newer than the code."""
    await db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    async with db.execute("SELECT max(version) FROM schema_version") as cur:
        row = await cur.fetchone()
    current = int(row[0]) if row and row[0] is not None else 0
    if current > SCHEMA_VERSION:
        raise StoreError(
            f"{path} has schema version {current}, newer than this relay "
            f"(knows up to {SCHEMA_VERSION}); upgrade relay or restore a backup"
        )
    for version in range(current + 1, SCHEMA_VERSION + 1):
        await db.execute("BEGIN IMMEDIATE")
        try:
            for stmt in _statements(MIGRATIONS[version]):
                await db.execute(stmt)
            await db.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))
            await db.execute("COMMIT")
        except sqlite3.Error:
            await db.execute("ROLLBACK")
            raise
    return SCHEMA_VERSION


def _statements(script: str) -> Iterable[str]:
    return (s.strip() for s in script.split(";") if s.strip())


async def open_store(path: Path) -> Store:
    """Lock, open, configure and migrate the database at `path`; start the writer."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lock_fd = _take_lock(path)
    try:
        if not path.exists():
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            os.close(fd)
        os.chmod(path, 0o600)
        db = await _connect(path)
        try:
            async with db.execute("PRAGMA journal_mode = WAL") as cur:
                row = await cur.fetchone()
            if row is None or str(row[0]).lower() != "wal":
                raise StoreError(f"{path}: could not switch the journal to WAL")
            await db.execute("PRAGMA synchronous = FULL")
            await migrate(db, path)
            reader = await _connect(path)
            await reader.execute("PRAGMA synchronous = FULL")
        except (sqlite3.Error, RelayError):
            await db.close()
            raise
        for suffix in ("-wal", "-shm"):
            side = path.with_name(path.name + suffix)
            if side.exists():
                os.chmod(side, 0o600)
    except sqlite3.Error as e:
        os.close(lock_fd)
        raise StoreError(f"{path}: cannot open the database: {e}") from e
    except RelayError:
        os.close(lock_fd)
        raise
    store = Store(path, db, reader, lock_fd)
    store.start()
    return store
