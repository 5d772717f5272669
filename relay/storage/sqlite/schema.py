"""The SQLite schema: numbered migrations in migrations/NNNN_name.sql.

Invariants:
- Migration N is the file whose name starts with N as four digits; they run
  in order, each in its own transaction, and `schema_version` records every
  one applied. The files are never edited once released: a change is a new
  file, so an existing node's database opens unchanged.
- A database newer than SCHEMA_VERSION is refused, never touched.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from pathlib import Path

from relay.errors import StoreError
from relay.storage.sqlite.inline import InlineConnection

MIGRATIONS_DIR = Path(__file__).with_name("migrations")


def _load() -> dict[int, str]:
    found: dict[int, str] = {}
    for f in sorted(MIGRATIONS_DIR.glob("[0-9][0-9][0-9][0-9]_*.sql")):
        found[int(f.name[:4])] = f.read_text(encoding="utf-8")
    if sorted(found) != list(range(1, len(found) + 1)):
        raise RuntimeError(f"{MIGRATIONS_DIR}: migrations are not numbered 1..N: {sorted(found)}")
    return found


MIGRATIONS: dict[int, str] = _load()
SCHEMA_VERSION = max(MIGRATIONS)


def statements(script: str) -> Iterable[str]:
    """The statements of a migration script, without its `--` comment lines."""
    code = "\n".join(ln for ln in script.splitlines() if not ln.lstrip().startswith("--"))
    found: list[str] = []
    pending = ""
    for piece in code.split(";"):
        pending += piece + ";"
        # a trigger body holds `;` of its own: a statement ends where SQLite says it does
        if sqlite3.complete_statement(pending):
            if pending.strip(" \n;"):
                found.append(pending.strip().removesuffix(";"))
            pending = ""
    if pending.strip(" \n;"):
        found.append(pending.strip().removesuffix(";"))
    return found


async def migrate(db: InlineConnection, path: Path) -> int:
    """Bring the schema to SCHEMA_VERSION; refuse a database newer than the code."""
    await db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    row = await (await db.execute("SELECT max(version) FROM schema_version")).fetchone()
    current = int(row[0]) if row and row[0] is not None else 0
    if current > SCHEMA_VERSION:
        raise StoreError(
            f"{path} has schema version {current}, newer than this relay "
            f"(knows up to {SCHEMA_VERSION}); upgrade relay or restore a backup"
        )
    for version in range(current + 1, SCHEMA_VERSION + 1):
        await db.execute("BEGIN IMMEDIATE")
        try:
            for stmt in statements(MIGRATIONS[version]):
                await db.execute(stmt)
            await db.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))
            await db.execute("COMMIT")
        except sqlite3.Error:
            await db.execute("ROLLBACK")
            raise
    return SCHEMA_VERSION
