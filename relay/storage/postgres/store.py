"""The node's PostgreSQL storage, implementing relay.storage.interface.Storage.

Invariants:
- Same promise as SQLite: a caller's `write` returns only after COMMIT
  returned on a connection with `synchronous_commit = on`. A job failing
  rolls back only its SAVEPOINT (a transaction of one job has none and
  rolls back whole); a transaction the server or the network
  ended fails every job of it with StoreError (503), nothing acknowledged.
- A connection lost while COMMIT was in flight leaves the outcome unknown:
  every job of it fails with StoreError and is never acknowledged. The
  caller retries; envelope ids, batch ids and idempotency keys make the
  retry land once whichever way the COMMIT went.
- Several workers may share one schema. Each write transaction first takes
  the schema's transaction-scoped advisory lock (schema.WRITE_LOCK), so
  writers of one node run one at a time, never deadlock on each other, and
  rids and inbox seqs grow in commit order. Reads take no lock.
- Writer and reader connections reconnect by themselves (connect.Link):
  while the database is gone the node answers 503 and `trouble` says why.
- Announcements (WriteTx.announce) go out with NOTIFY inside the
  transaction: this store's hooks hear them right after its COMMIT, other
  workers' through their listener (relay.storage.postgres.notify), never
  those of a job or transaction that rolled back.
- PostgreSQL text cannot hold NUL: a request whose text holds one is refused
  with 400 `bad_request` naming that, and nothing of it is stored.
"""

from __future__ import annotations

import contextlib
import uuid
from typing import Any

import psycopg

from relay.errors import BadRequest, RelayError, StoreError
from relay.storage.groupcommit import GroupCommit, Outcome, Pending, fail, settle
from relay.storage.interface import NotCreated
from relay.storage.postgres import notify
from relay.storage.postgres.connect import Link, connection_lost, describe
from relay.storage.postgres.reads import PgReads
from relay.storage.postgres.schema import SCHEMA_VERSION, WRITE_LOCK, migrate, schema_version
from relay.storage.postgres.url import PgTarget, parse_url
from relay.storage.postgres.writes import PgWriteTx

# SQLSTATE classes that mean the server's storage, not the request: out of
# disk or memory (53), or a server that only reads (25006: a standby after
# a failover, or default_transaction_read_only).
_STORAGE_SQLSTATES = ("53", "25006", "58")


def storage_error(e: psycopg.Error) -> bool:
    """True when `e` says the server cannot store (disk full, read-only), not the SQL."""
    state = e.sqlstate or ""
    return any(state.startswith(s) for s in _STORAGE_SQLSTATES)


def _nul_text(e: BaseException) -> bool:
    return isinstance(e, psycopg.DataError) and "NUL" in str(e)


class PgStore(GroupCommit, PgReads):
    """The PostgreSQL Storage: group-commit writer plus a reader connection."""

    def __init__(self, target: PgTarget, writer: Link, reader: Link, password: str | None) -> None:
        GroupCommit.__init__(self)
        PgReads.__init__(self, reader)
        self.target = target
        self._link = writer
        self._closed = False
        self.token = uuid.uuid4().hex  # tells this store's NOTIFYs from other workers'
        self.listener = notify.Listener(target, password, self.token, self._heard)

    def start(self) -> None:
        """Start the writer and the announcement listener."""
        super().start()
        self.listener.start()

    async def close(self) -> None:
        """Finish every queued write, then close both connections (once)."""
        if self._closed:
            return
        self._closed = True
        await self._stop_writer()
        await self.listener.close()
        await self._link.close()
        await self.reader.close()

    async def scrub(self) -> str:
        """Nothing reachable from here: PostgreSQL keeps deleted rows' bytes in the
        table files until VACUUM reuses the space, and in WAL segments and base
        backups until they are recycled (docs/erasure.md)."""
        return "none: PostgreSQL frees the space at VACUUM; WAL and backups age out"

    async def settings(self) -> dict[str, str]:
        """Durability settings as the server reports them, logged at start."""
        row = await self.fetchone(
            "SELECT current_setting('synchronous_commit') AS synchronous_commit,"
            " current_setting('synchronous_standby_names') AS standbys,"
            " current_setting('server_version') AS server_version, current_schema() AS schema"
        )
        found = {k: str(v) for k, v in (row or {}).items()}
        found["standbys"] = found.get("standbys") or "none"
        return found

    async def _run_batch(self, batch: list[Pending]) -> None:
        try:
            db = await self._link.get()
        except StoreError as e:
            self._set_trouble(e)
            fail(batch, StoreError(f"cannot reach the database, nothing was stored: {e.detail}"))
            return
        try:
            await db.execute("BEGIN")
            await db.execute(
                "SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (WRITE_LOCK, self.target.schema)
            )
        except psycopg.Error as e:
            await self._abandon(db, batch, e)
            return
        tx = PgWriteTx(db)
        outcomes: list[Outcome] = []
        failure: BaseException | None = None
        # A transaction of one job needs no SAVEPOINT: if the job fails, the whole
        # transaction rolls back (two round trips fewer per write at low load).
        solo = len(batch) == 1
        for p in batch:
            try:
                outcome, lost = await self._run_job(db, tx, p, savepoint=not solo)
            except psycopg.Error as e:  # a SAVEPOINT statement itself failed
                await self._abandon(db, batch, e)
                return
            if lost is not None:
                await self._abandon(db, batch, lost)
                return
            if isinstance(outcome[2], psycopg.Error) and storage_error(outcome[2]):
                failure = outcome[2]
            outcomes.append(_public(outcome))
        if solo and outcomes[0][2] is not None:
            await self._roll_back_solo(db, outcomes[0], failure)
            return
        announced = list(dict.fromkeys(tx.announced))  # once each, in order
        try:
            if announced:
                await notify.send(db, self.target, self.token, announced)
        except psycopg.Error as e:
            await self._abandon(db, batch, e)
            return
        if self.before_commit is not None:
            await self.before_commit()
        try:
            await db.execute("COMMIT")
        except psycopg.Error as e:
            if connection_lost(e, db):
                await self._link.lost()
                err = StoreError(
                    "the connection to the database was lost during COMMIT, so whether it"
                    f" committed is unknown; nothing is acknowledged, retry: {describe(e)}"
                )
            else:
                with contextlib.suppress(psycopg.Error):
                    await db.execute("ROLLBACK")
                err = StoreError(f"commit failed, nothing was stored: {describe(e)}")
            self._set_trouble(err)
            fail(batch, err)
            return
        self._committed(outcomes, failure, announced)

    async def _roll_back_solo(
        self, db: Any, outcome: Outcome, failure: BaseException | None
    ) -> None:
        """The one job of a transaction failed: roll it all back, then answer its caller."""
        p, _, exc = outcome
        try:
            await db.execute("ROLLBACK")
        except psycopg.Error as e:
            await self._abandon(db, [p], e)
            return
        if failure is not None:
            self._set_trouble(failure)
        settle(p.future, None, exc)

    async def _run_job(
        self, db: Any, tx: PgWriteTx, p: Pending, *, savepoint: bool
    ) -> tuple[Outcome, BaseException | None]:
        """Run one job, inside its own SAVEPOINT if `savepoint`: (outcome, the error if
        the connection died). Without one, a failed job leaves the rollback to the caller."""
        if savepoint:
            await db.execute("SAVEPOINT job")
        mark = len(tx.announced)
        try:
            result = await p.job(tx)
        except Exception as e:  # noqa: BLE001 - re-raised in the caller by its future
            del tx.announced[mark:]  # a job rolled back announces nothing
            tx.audit_next = None  # nor keeps the audit seqs it took
            if isinstance(e, psycopg.Error) and connection_lost(e, db):
                return (p, None, e), e
            if savepoint:
                await db.execute("ROLLBACK TO SAVEPOINT job")
                await db.execute("RELEASE SAVEPOINT job")
            return (p, None, e), None
        if savepoint:
            await db.execute("RELEASE SAVEPOINT job")
        return (p, result, None), None

    async def _abandon(self, db: Any, batch: list[Pending], cause: BaseException) -> None:
        """The transaction is lost: roll back what is left and fail every job of `batch`."""
        if connection_lost(cause, db):
            await self._link.lost()
        else:
            with contextlib.suppress(psycopg.Error):
                await db.execute("ROLLBACK")
        detail = cause.detail if isinstance(cause, RelayError) else describe(cause)
        self._set_trouble(detail)
        fail(batch, StoreError(f"the transaction was rolled back, nothing was stored: {detail}"))


def _public(outcome: Outcome) -> Outcome:
    """The outcome with a driver error turned into the RelayError its caller gets."""
    p, result, exc = outcome
    if _nul_text(exc or Exception()):
        exc = BadRequest(
            "text holding a NUL character (\\x00) cannot be stored (PostgreSQL text holds"
            " no NUL); nothing of this request was stored"
        )
    elif isinstance(exc, psycopg.Error):
        exc = StoreError(f"database error, nothing of this request was stored: {describe(exc)}")
    return p, result, exc


async def open_store(url: str, password: str | None = None) -> PgStore:
    """Connect, migrate (once across workers) and start the writer."""
    target = parse_url(url)
    writer = await Link.open(target, password)
    try:
        await migrate(await writer.get(), target)
        reader = await Link.open(target, password)
    except psycopg.Error as e:
        await writer.close()
        raise StoreError(f"{target.display}: cannot prepare the database: {describe(e)}") from e
    except RelayError:
        await writer.close()
        raise
    store = PgStore(target, writer, reader, password)
    store.start()
    return store


class PgReadOnly(PgReads):
    """Reads on a read-only connection: no writer (relay.storage.interface.ReadOnlyStorage)."""

    def __init__(self, reader: Link, version: int) -> None:
        super().__init__(reader)
        self.schema_version = version

    async def close(self) -> None:
        """Close the connection."""
        await self.reader.close()


async def open_readonly(url: str, password: str | None = None) -> PgReadOnly:
    """Reads beside a running node; StoreError if the schema has no relay tables or is newer."""
    target = parse_url(url)
    link = await Link.open(target, password, read_only=True)
    try:
        version = await schema_version(await link.get(), target.schema)
    except psycopg.Error as e:
        await link.close()
        raise StoreError(f"{target.display}: cannot read the database: {describe(e)}") from e
    if version is None or version > SCHEMA_VERSION:
        await link.close()
        if version is None:
            raise NotCreated(
                f"{target.display}: no relay tables in schema {target.schema} yet"
                " (the node creates them when it first runs)"
            )
        raise StoreError(
            f"{target.display} has schema version {version}, newer than this relay"
            f" (knows up to {SCHEMA_VERSION})"
        )
    return PgReadOnly(link, version)
