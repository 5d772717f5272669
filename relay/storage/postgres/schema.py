"""The PostgreSQL schema: numbered migrations in migrations/NNNN_name.sql.

Invariants:
- Migration N is the file whose name starts with N as four digits; they run
  in order, each in its own transaction, and `schema_version` records every
  one applied. Released files are never edited: a change is a new file.
- Several workers may start together: `migrate` holds a session advisory
  lock on the schema while it reads the version and applies what is
  missing, so each migration runs once and the others wait, then see it.
- A schema newer than SCHEMA_VERSION is refused, never touched; so is a
  database whose encoding is not UTF8, before anything is created in it.
"""

from __future__ import annotations

from pathlib import Path

from relay.errors import StoreError
from relay.storage.postgres import sql as q
from relay.storage.postgres.url import PgTarget

MIGRATIONS_DIR = Path(__file__).with_name("migrations")

# Advisory lock spaces (first key of the two-int form; the second is
# hashtext(schema)), so relay's locks never collide with another program's.
MIGRATE_LOCK = 0x72656C61  # "rela"
WRITE_LOCK = 0x72656C62


def _load() -> dict[int, str]:
    found: dict[int, str] = {}
    for f in sorted(MIGRATIONS_DIR.glob("[0-9][0-9][0-9][0-9]_*.sql")):
        found[int(f.name[:4])] = f.read_text(encoding="utf-8")
    if sorted(found) != list(range(1, len(found) + 1)):
        raise RuntimeError(f"{MIGRATIONS_DIR}: migrations are not numbered 1..N: {sorted(found)}")
    return found


MIGRATIONS: dict[int, str] = _load()
SCHEMA_VERSION = max(MIGRATIONS)


async def schema_version(db: q.Conn, schema: str) -> int | None:
    """The schema's version, None if it has no relay tables yet."""
    exists = await q.value(
        db,
        "SELECT 1 FROM pg_tables WHERE schemaname = %s AND tablename = 'schema_version'",
        (schema,),
    )
    if exists is None:
        return None
    found = await q.value(db, f'SELECT max(version) FROM "{schema}".schema_version')
    return int(found) if found is not None else 0


async def require_utf8(db: q.Conn, target: PgTarget) -> None:
    """StoreError naming the database unless its encoding is UTF8.

    relay stores UTF-8 text. SQL_ASCII takes any bytes unchecked (text would
    come back as whatever was sent, and other programs' reads would disagree);
    any other encoding refuses, at write time, text it cannot hold, so a
    message could be refused for its characters. Both are refused at start.
    """
    row = await q.one(
        db,
        "SELECT current_database() AS name, pg_encoding_to_char(encoding) AS encoding"
        " FROM pg_database WHERE datname = current_database()",
    )
    # in a SQL_ASCII database the driver hands text back as bytes
    name, encoding = (_text(row["name"]), _text(row["encoding"])) if row else ("?", "unknown")
    if encoding == "UTF8":
        return
    unchecked = " (bytes stored unchecked)" if encoding == "SQL_ASCII" else ""
    raise StoreError(
        f"{target.display}: database {name} has encoding {encoding}{unchecked}; relay stores"
        f" UTF-8 text and needs a UTF8 database: create one with CREATE DATABASE ..."
        f" ENCODING 'UTF8' TEMPLATE template0 and point [storage] url at it"
    )


def _text(value: object) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


async def migrate(db: q.Conn, target: PgTarget) -> int:
    """Bring the schema to SCHEMA_VERSION, once across workers; refuse a newer one."""
    schema = target.schema
    await require_utf8(db, target)
    await db.execute("SELECT pg_advisory_lock(%s, hashtext(%s))", (MIGRATE_LOCK, schema))
    try:
        if await q.value(db, "SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,)) is None:
            await db.execute(f'CREATE SCHEMA "{schema}"')
        await db.execute(f'SET search_path TO "{schema}"')
        await db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        current = await schema_version(db, schema) or 0
        if current > SCHEMA_VERSION:
            raise StoreError(
                f"{target.display} has schema version {current}, newer than this relay "
                f"(knows up to {SCHEMA_VERSION}); upgrade relay or restore a backup"
            )
        for version in range(current + 1, SCHEMA_VERSION + 1):
            async with db.transaction():
                await db.execute(MIGRATIONS[version])
                await db.execute("INSERT INTO schema_version (version) VALUES (%s)", (version,))
    finally:
        await db.execute("SELECT pg_advisory_unlock(%s, hashtext(%s))", (MIGRATE_LOCK, schema))
    return SCHEMA_VERSION
