"""Opening both sides of a copy between backends (relay.storage.transfer does the copy).

Each side is opened through relay.storage.backends first, which migrates it
to this relay's schema and, for SQLite, takes the lock a running node holds:
a node cannot start on either database while the copy runs.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from relay.errors import BadRequest
from relay.storage.backends import open_storage
from relay.storage.sqlite.tableio import SqliteTables
from relay.storage.transfer import Copied, copy_all


async def copy_storage(source: Path, target: Path, *, replace: bool = False) -> list[Copied]:
    """Copy every table of the storage at `source` into `target`; rows per table."""
    if target.resolve() == source.resolve():
        raise BadRequest(f"{target} is the source database itself; give another target")
    src_store = await open_storage(source)
    try:
        dst_store = await open_storage(target)
        try:
            src, dst = SqliteTables(source), SqliteTables(target)
            try:
                return await asyncio.to_thread(copy_all, src, dst, replace=replace)
            finally:
                src.close()
                dst.close()
        finally:
            await dst_store.close()
    finally:
        await src_store.close()
