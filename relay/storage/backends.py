"""Opening a node's storage: the one place that knows which backends exist.

A storage target is either the SQLite file in the node directory (a Path,
the default that needs no server) or a PostgreSQL URL
(`postgresql://user@host:port/db?schema=NAME`, relay.storage.postgres.url).
Nothing above relay/storage/ knows which one it got.
"""

from __future__ import annotations

from pathlib import Path

from relay.storage.interface import ReadOnlyStorage, Storage
from relay.storage.postgres.url import is_postgres_url

BACKENDS = ("sqlite", "postgresql")

Target = Path | str


def backend_of(target: Target) -> str:
    """The backend a target names: "postgresql" for a PostgreSQL URL, else "sqlite"."""
    if isinstance(target, str) and is_postgres_url(target):
        return "postgresql"
    return "sqlite"


async def open_storage(target: Target, password: str | None = None) -> Storage:
    """Open (and migrate) the node's storage and start its writer.

    SQLite: lock the file (one process per database). PostgreSQL: connect,
    apply missing migrations once across workers; NoDatabase naming the URL
    when the server cannot be reached or the database does not exist.
    `password` is for PostgreSQL (libpq's own PGPASSWORD and ~/.pgpass work too).
    """
    if backend_of(target) == "postgresql":
        from relay.storage.postgres.store import open_store as open_pg

        return await open_pg(str(target), password)
    from relay.storage.sqlite.store import open_store

    return await open_store(Path(target))


async def open_readonly_storage(target: Target, password: str | None = None) -> ReadOnlyStorage:
    """Reads on the node's storage without a lock or a writer (safe beside a running node).

    StoreError if there is no database yet or it is newer than this code.
    """
    if backend_of(target) == "postgresql":
        from relay.storage.postgres.store import open_readonly as open_pg_readonly

        return await open_pg_readonly(str(target), password)
    from relay.storage.sqlite.store import open_readonly

    return await open_readonly(Path(target))


def sqlite_file(storage: object) -> Path | None:
    """The database file of a SQLite storage (backup streams it), None for another backend."""
    from relay.storage.sqlite.reads import SqliteReads

    return storage.path if isinstance(storage, SqliteReads) else None
