"""Opening both sides of a copy between backends (relay.storage.transfer does the copy).

Each side is opened through relay.storage.backends first, which migrates it
to this relay's schema and, for SQLite, takes the lock a running node holds:
a node cannot start on either database while the copy runs. A source with
a lease some worker still holds is refused too: workers on a shared database
(PostgreSQL) hold no file lock, but a live one keeps renewing its leases.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from relay.errors import BadRequest, Conflict
from relay.storage.backends import Target, backend_of, open_storage
from relay.storage.interface import Storage
from relay.storage.sqlite.tableio import SqliteTables
from relay.storage.transfer import Copied, TableIO, copy_all


def same_target(a: Target, b: Target) -> bool:
    """True if `a` and `b` name the same database."""
    if isinstance(a, Path) and isinstance(b, Path):
        return a.resolve() == b.resolve()
    return a == b


async def copy_storage(
    source: Target,
    target: Target,
    *,
    source_password: str | None = None,
    target_password: str | None = None,
    replace: bool = False,
) -> list[Copied]:
    """Copy every table of the storage at `source` into `target`; rows per table."""
    if same_target(source, target):
        raise BadRequest(f"{target} is the source database itself; give another target")
    src_store = await _open(source, source_password)
    try:
        await refuse_live_leases(src_store)
        dst_store = await _open(target, target_password)
        try:
            src = table_io(source, source_password)
            try:
                dst = table_io(target, target_password)
                try:
                    return await asyncio.to_thread(copy_all, src, dst, replace=replace)
                finally:
                    dst.close()
            finally:
                src.close()
        finally:
            await dst_store.close()
    finally:
        await src_store.close()


async def _open(target: Target, password: str | None) -> Storage:
    return await open_storage(target, password)


def table_io(target: Target, password: str | None = None) -> TableIO:
    """Raw row access to the database `target` names, for a copy (relay.storage.transfer)."""
    if backend_of(target) == "postgresql":
        from relay.storage.postgres.tableio import PgTables

        return PgTables(str(target), password)
    return SqliteTables(Path(target))


async def refuse_live_leases(storage: Storage) -> None:
    """Conflict if a worker still holds a lease on `storage` (it may be running)."""
    now = int(time.time() * 1000)
    live = [lease for lease in await storage.leases() if lease.expires > now]
    if live:
        holders = sorted({lease.holder for lease in live})
        wait_s = max(lease.expires - now for lease in live) / 1000
        raise Conflict(
            f"workers still hold leases on this storage ({', '.join(holders)}): "
            f"stop every worker of the node first (a stopped worker's leases lapse within "
            f"{wait_s:.0f} s)"
        )
