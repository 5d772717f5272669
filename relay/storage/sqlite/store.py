"""The node's SQLite storage (DESIGN §8), implementing relay.storage.interface.Storage.

Invariants:
- One process per database: `open_store` takes an exclusive lock file and
  refuses a second opener.
- WAL, synchronous=FULL, file mode 0600; numbered migrations
  (relay.storage.sqlite.schema); a database newer than the code is refused.
- Every write goes through one writer task that runs the queued jobs of many
  callers in a single transaction (group commit), on a plain sqlite3
  connection driven from the event loop with COMMIT in a thread
  (relay.storage.sqlite.inline). A caller's future resolves
  only after COMMIT returned, so nothing is acknowledged before it is durable.
  Each job runs inside its own SAVEPOINT: one job failing rolls back only
  itself. When SQLite rolls back the whole transaction (disk full, I/O
  error), every job of it fails with StoreError (503): nothing is reported
  stored that was not, and the writer goes on with the next transaction.
- Every sqlite error reaches callers as StoreError, reads included; a storage
  failure (full, read-only, I/O) sets `trouble` until a transaction commits
  cleanly again.
- Reads use a second (aiosqlite) connection; WAL gives them the last
  committed state.
- Payloads are content-addressed by sha256 and stored once.
- Announcements (WriteTx.announce) reach this process's on_announce hooks
  after the COMMIT of their transaction, those of a job that rolled back
  never; with one process per database there is no one else to tell.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import sqlite3
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from relay.errors import Busy, RelayError, StoreError
from relay.logs import event
from relay.storage.interface import DatabaseLocked, Job, NotCreated
from relay.storage.sqlite.inline import InlineConnection
from relay.storage.sqlite.reads import SqliteReads
from relay.storage.sqlite.schema import MIGRATIONS, SCHEMA_VERSION, migrate
from relay.storage.sqlite.sqlstats import connect_writer
from relay.storage.sqlite.writes import SqliteWriteTx
from relay.storage.tables import TABLES

__all__ = [
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "TABLES",
    "DatabaseLocked",
    "ReadOnlyStore",
    "Store",
    "open_readonly",
    "open_store",
]

log = logging.getLogger("relay.store")

T = TypeVar("T")

CACHE_KIB = -32768  # negative means KiB: 32 MiB of page cache per connection


@dataclass
class _Pending:
    job: Job[Any]
    future: asyncio.Future[Any]


class Store(SqliteReads):
    """The SQLite Storage: group-commit writer plus a read connection over one file."""

    def __init__(
        self, path: Path, db: InlineConnection, reader: aiosqlite.Connection, lock_fd: int
    ) -> None:
        super().__init__(path, reader)
        self._db = db
        self._tx = SqliteWriteTx(db)
        self._lock_fd = lock_fd
        self._jobs: asyncio.Queue[_Pending | None] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None
        self._after_commit: list[Callable[[], None]] = []
        self._announce_hooks: list[Callable[[Sequence[tuple[str, str]]], None]] = []
        self.commits = 0
        self.max_jobs_per_commit = 512
        # Fault injection (relay.node.fault): awaited after a transaction's jobs ran
        # and before its COMMIT, so crash tests can kill the process inside it.
        self.before_commit: Callable[[], Awaitable[None]] | None = None
        # Jobs that may wait for the writer before `write(admit=True)` answers
        # Busy ([limits] max_pending_writes; 0 = no bound).
        self.max_backlog = 0
        # Why the last transaction failed for a storage reason (disk full,
        # read-only, I/O error) until one commits cleanly; readyz reports it.
        self.trouble: str | None = None
        self._storage_failure: sqlite3.Error | None = None

    # --- lifecycle -----------------------------------------------------------

    def start(self) -> None:
        if self._writer is None:
            self._writer = asyncio.create_task(self._write_loop(), name="store-writer")

    async def close(self) -> None:
        """Finish every queued write, then close both connections and the lock (once)."""
        if self._lock_fd < 0:
            return
        if self._writer is not None:
            await self._jobs.put(None)
            await self._writer
            self._writer = None
        await self.reader.close()
        await self._db.close()
        with contextlib.suppress(OSError):
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
        os.close(self._lock_fd)
        self._lock_fd = -1

    def on_commit(self, hook: Callable[[], None]) -> None:
        """Run `hook` after every successful commit (wake senders, long-polls)."""
        self._after_commit.append(hook)

    def on_announce(self, hook: Callable[[Sequence[tuple[str, str]]], None]) -> None:
        """Run `hook` with each commit's announcements (this process is the only one)."""
        self._announce_hooks.append(hook)

    # --- writing -------------------------------------------------------------

    def check_backlog(self) -> None:
        """Busy (503) while `max_backlog` or more jobs wait for the writer (0: no bound)."""
        waiting = self._jobs.qsize()
        if self.max_backlog and waiting >= self.max_backlog:
            raise Busy(f"the store writer is behind ({waiting} writes waiting); retry shortly")

    async def write(self, job: Job[T], *, admit: bool = False) -> T:
        """Run `job` in the next group-commit transaction; return once committed.

        With `admit` (request handlers), refuse with Busy rather than queue past
        `max_backlog`; the node's own tasks always queue (there are few of them).
        StoreError (503) when the database refused: nothing of the job is stored.
        """
        if self._writer is None:
            raise StoreError("the store is not accepting writes")
        if admit:
            self.check_backlog()
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
        self._storage_failure = None
        self._tx.announced.clear()
        self._tx.audit_next = None  # read again inside the new transaction
        try:
            await self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as e:
            self._set_trouble(e)
            _fail(batch, StoreError(f"cannot begin a transaction, nothing was stored: {e}"))
            return
        outcomes: list[tuple[_Pending, Any, BaseException | None]] = []
        for p in batch:
            try:
                outcomes.append(await self._run_job(p))
            except sqlite3.Error as e:  # a SAVEPOINT statement itself failed
                await self._abandon(batch, e)
                return
            if not self._db.in_transaction:
                # SQLite rolled the whole transaction back (disk full, I/O
                # error): the jobs before this one are gone too.
                await self._abandon(batch, outcomes[-1][2] or "the transaction ended early")
                return
        if self.before_commit is not None:
            await self.before_commit()
        try:
            await self._db.commit()
        except sqlite3.Error as e:
            self._set_trouble(e)
            with contextlib.suppress(sqlite3.Error):
                await self._db.execute("ROLLBACK")
            _fail(batch, StoreError(f"commit failed, nothing was stored: {e}"))
            return
        self.commits += 1
        if self._storage_failure is not None:
            self._set_trouble(self._storage_failure)
        elif self.trouble is not None:
            event(log, "store_recovered", previous=self.trouble)
            self.trouble = None
        for p, result, exc in outcomes:
            _settle(p.future, result, exc)
        for hook in self._after_commit:
            hook()
        if self._tx.announced:
            announced = list(dict.fromkeys(self._tx.announced))  # once each, in order
            self._tx.announced.clear()
            for announce in self._announce_hooks:
                announce(announced)

    async def _run_job(self, p: _Pending) -> tuple[_Pending, Any, BaseException | None]:
        """Run one job inside its own SAVEPOINT; sqlite3.Error if a SAVEPOINT fails."""
        await self._db.execute("SAVEPOINT job")
        mark = len(self._tx.announced)
        try:
            result = await p.job(self._tx)
        except Exception as e:  # noqa: BLE001 - re-raised in the caller by its future
            del self._tx.announced[mark:]  # a job rolled back announces nothing
            self._tx.audit_next = None  # nor keeps the audit seqs it took
            if isinstance(e, sqlite3.Error):
                if storage_error(e):
                    self._storage_failure = e
                e = StoreError(f"database error, nothing of this request was stored: {e}")
            if self._db.in_transaction:
                await self._db.execute("ROLLBACK TO job")
                await self._db.execute("RELEASE job")
            return p, None, e
        await self._db.execute("RELEASE job")
        return p, result, None

    async def _abandon(self, batch: list[_Pending], cause: BaseException | str) -> None:
        """The transaction is lost: roll back what is left and fail every job of `batch`."""
        self._set_trouble(self._storage_failure or cause)
        if self._db.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                await self._db.execute("ROLLBACK")
        detail = cause.detail if isinstance(cause, RelayError) else str(cause)
        _fail(batch, StoreError(f"the transaction was rolled back, nothing was stored: {detail}"))

    def _set_trouble(self, cause: BaseException | str) -> None:
        why = cause.detail if isinstance(cause, RelayError) else str(cause)
        if self.trouble is None:
            event(log, "store_trouble", logging.ERROR, detail=why)
        self.trouble = why

    async def scrub(self) -> str:
        """After an erasure: copy the WAL into the database file and truncate the WAL,
        so the log keeps no frame that held erased content (the writer's
        secure_delete already zeroed the freed space); what it did."""
        row = await self.fetchone("PRAGMA wal_checkpoint(TRUNCATE)")
        if row is None or int(row[0]) != 0:
            return "checkpoint busy: the WAL is truncated at a later checkpoint"
        return "checkpoint: the WAL was copied into the database file and truncated"

    async def settings(self) -> dict[str, str]:
        """Journal mode and sync level of the database, as logged at start."""
        sync = await self.pragma("synchronous")
        return {
            "journal_mode": await self.pragma("journal_mode"),
            "synchronous": {"2": "FULL"}.get(sync, sync),
        }


# Primary result codes that mean the disk or file, not the request: the
# database is full, read-only, unreadable or gone.
_STORAGE_CODES = frozenset(
    {
        sqlite3.SQLITE_PERM,
        sqlite3.SQLITE_READONLY,
        sqlite3.SQLITE_IOERR,
        sqlite3.SQLITE_CORRUPT,
        sqlite3.SQLITE_FULL,
        sqlite3.SQLITE_CANTOPEN,
        sqlite3.SQLITE_NOLFS,
        sqlite3.SQLITE_NOTADB,
    }
)


def storage_error(e: sqlite3.Error) -> bool:
    """True when `e` says the storage failed (full, read-only, I/O), not the SQL."""
    code = getattr(e, "sqlite_errorcode", None)
    return isinstance(code, int) and (code & 0xFF) in _STORAGE_CODES


def _fail(batch: Iterable[_Pending], err: BaseException) -> None:
    for p in batch:
        _settle(p.future, None, err)


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


async def _connect(path: Path) -> aiosqlite.Connection:
    db = await aiosqlite.connect(str(path), isolation_level=None)
    db.row_factory = sqlite3.Row
    await db.execute("PRAGMA busy_timeout = 5000")
    await db.execute("PRAGMA foreign_keys = ON")
    return db


# The oldest SQLite with RETURNING, which the writes use (acks, erasure answers,
# the witnessed heads' prune).
SQLITE_NEEDED = (3, 35, 0)


def require_sqlite_version() -> None:
    """Refuse an SQLite library older than SQLITE_NEEDED, naming both versions."""
    found = sqlite3.sqlite_version_info
    if found < SQLITE_NEEDED:
        raise StoreError(
            f"SQLite {'.'.join(map(str, found))} is too old: relay needs SQLite "
            f"{'.'.join(map(str, SQLITE_NEEDED))} or later (for RETURNING); "
            "run it with a Python built against a newer SQLite"
        )


async def open_store(path: Path) -> Store:
    """Lock, open, configure and migrate the database at `path`; start the writer."""
    require_sqlite_version()
    path.parent.mkdir(parents=True, exist_ok=True)
    lock_fd = _take_lock(path)
    try:
        if not path.exists():
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            os.close(fd)
        os.chmod(path, 0o600)
        db = connect_writer(str(path))
        try:
            row = await (await db.execute("PRAGMA journal_mode = WAL")).fetchone()
            if row is None or str(row[0]).lower() != "wal":
                raise StoreError(f"{path}: could not switch the journal to WAL")
            await db.execute("PRAGMA synchronous = FULL")
            await db.execute(f"PRAGMA cache_size = {CACHE_KIB}")
            # deleted rows are overwritten with zeros, not left in free space, so an
            # erased payload cannot be read back from the file (docs/erasure.md: cost)
            await db.execute("PRAGMA secure_delete = ON")
            await migrate(db, path)
            reader = await _connect(path)
            await reader.execute("PRAGMA synchronous = FULL")
            await reader.execute(f"PRAGMA cache_size = {CACHE_KIB}")
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


class ReadOnlyStore(SqliteReads):
    """Reads on a read-only connection: no lock, no writer (relay.storage.interface)."""

    def __init__(self, path: Path, reader: aiosqlite.Connection, schema_version: int) -> None:
        super().__init__(path, reader)
        self.schema_version = schema_version

    async def close(self) -> None:
        """Close the connection."""
        await self.reader.close()


async def open_readonly(path: Path) -> ReadOnlyStore:
    """Reads on the database at `path` through a read-only connection.

    Takes no lock and never writes, so admin commands may read a running
    node's database (WAL readers see the last commit). StoreError if there is
    no database or its schema is newer than this code.
    """
    if not path.is_file():
        raise NotCreated(f"{path}: no database yet (the node creates it when it first runs)")
    try:
        db = await aiosqlite.connect(
            f"{path.absolute().as_uri()}?mode=ro", uri=True, isolation_level=None
        )
    except sqlite3.Error as e:
        raise StoreError(f"{path}: cannot open the database read-only: {e}") from e
    db.row_factory = sqlite3.Row
    try:
        await db.execute("PRAGMA busy_timeout = 5000")
        async with db.execute("SELECT max(version) FROM schema_version") as cur:
            row = await cur.fetchone()
    except sqlite3.Error as e:
        await db.close()
        raise StoreError(f"{path}: cannot read the database: {e}") from e
    version = int(row[0]) if row and row[0] is not None else 0
    if version > SCHEMA_VERSION:
        await db.close()
        raise StoreError(
            f"{path} has schema version {version}, newer than this relay "
            f"(knows up to {SCHEMA_VERSION})"
        )
    return ReadOnlyStore(path, db, version)


def sqlite_store(storage: object) -> Store:
    """`storage` as the SQLite Store it is, for SQLite-only inspection (tests, tools).

    TypeError if it is another backend: code above relay/storage/ must not need this.
    """
    if not isinstance(storage, Store):
        raise TypeError(f"not a SQLite store: {type(storage).__name__}")
    return storage


def sqlite_tx(tx: object) -> InlineConnection:
    """The writer connection under a SQLite write transaction, for SQLite-only tests.

    TypeError if `tx` is another backend's transaction.
    """
    if not isinstance(tx, SqliteWriteTx):
        raise TypeError(f"not a SQLite write transaction: {type(tx).__name__}")
    return tx.connection
