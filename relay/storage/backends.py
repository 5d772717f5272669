"""Opening a node's storage: the one place that knows which backends exist.

Today the only backend is the SQLite file in the node directory
(`[node] database`). A second backend (PostgreSQL) adds a name to BACKENDS
and a branch here; nothing above relay/storage/ changes.
"""

from __future__ import annotations

from pathlib import Path

from relay.errors import StoreError
from relay.storage.interface import ReadOnlyStorage, Storage

BACKENDS = ("sqlite",)


def _check(backend: str) -> None:
    if backend not in BACKENDS:
        raise StoreError(f"unknown storage backend {backend!r} (known: {', '.join(BACKENDS)})")


async def open_storage(database: Path, *, backend: str = "sqlite") -> Storage:
    """Lock, open and migrate the node's storage and start its writer."""
    _check(backend)
    from relay.storage.sqlite.store import open_store

    return await open_store(database)


async def open_readonly_storage(database: Path, *, backend: str = "sqlite") -> ReadOnlyStorage:
    """Reads on the node's storage without a lock or a writer (safe beside a running node).

    StoreError if there is no database yet or it is newer than this code.
    """
    _check(backend)
    from relay.storage.sqlite.store import open_readonly

    return await open_readonly(database)
