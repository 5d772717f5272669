"""Raw table access to a node's PostgreSQL schema for `relay storage copy` (relay.storage.transfer).

Used only while the node is stopped. One plain (synchronous) connection with
the URL's schema on its search_path, in one transaction: REPEATABLE READ when
it is the source, so every table is read from one snapshot; the target's
rows go in with COPY, and identity sequences are moved past the copied keys
before the commit. The target's own triggers are off while rows go in (relay
defines none since PostgreSQL migration 10; an admin's own would fire per
row); what the writer keeps (relay.storage.transfer.DERIVED) is recomputed
once at the end (100,000 inbox rows took 138 s when a trigger per row kept it).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import psycopg
from psycopg import sql

from relay.errors import StoreError
from relay.storage.postgres.connect import CONNECT_TIMEOUT_S, describe
from relay.storage.postgres.url import parse_url
from relay.storage.transfer import BATCH_ROWS, Row

_KINDS = {
    "bigint": "int",
    "integer": "int",
    "smallint": "int",
    "boolean": "bool",
    "bytea": "bytes",
    "text": "text",
}


class PgTables:
    """relay.storage.transfer.TableIO over one PostgreSQL schema."""

    def __init__(self, url: str, password: str | None) -> None:
        target = parse_url(url)
        self.location = target.display
        self.schema = target.schema
        self._quiet: list[str] = []  # tables whose triggers are off until `finish`
        kwargs: dict[str, Any] = {
            "options": f"-c search_path={target.schema} -c synchronous_commit=on",
            "connect_timeout": CONNECT_TIMEOUT_S,
            "application_name": "relay:storage-copy",
        }
        if password is not None:
            kwargs["password"] = password
        try:
            self._db = psycopg.connect(target.conninfo, **kwargs)
            # the source reads every table from one snapshot
            self._db.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        except psycopg.Error as e:
            raise StoreError(f"{self.location}: cannot connect: {describe(e)}") from e

    def _run(self, query: sql.Composable | str, args: Sequence[object] = ()) -> list[Row]:
        try:
            cur = self._db.execute(query, args)  # type: ignore[arg-type]
            return [tuple(r) for r in cur.fetchall()] if cur.description else []
        except psycopg.Error as e:
            raise StoreError(f"{self.location}: {describe(e)}") from e

    def table_names(self) -> set[str]:
        rows = self._run(
            "SELECT table_name FROM information_schema.tables"
            " WHERE table_schema = %s AND table_type = 'BASE TABLE'",
            (self.schema,),
        )
        return {str(r[0]) for r in rows}

    def columns(self, table: str) -> dict[str, str]:
        rows = self._run(
            "SELECT column_name, data_type FROM information_schema.columns"
            " WHERE table_schema = %s AND table_name = %s ORDER BY ordinal_position",
            (self.schema, table),
        )
        return {str(name): _KINDS.get(str(kind), "other") for name, kind in rows}

    def count(self, table: str) -> int:
        (n,) = self._run(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table)))[0]
        return n if isinstance(n, int) else 0

    def rows(self, table: str, columns: Sequence[str]) -> Iterator[list[Row]]:
        query = sql.SQL("SELECT {} FROM {}").format(
            sql.SQL(", ").join(map(sql.Identifier, columns)), sql.Identifier(table)
        )
        try:
            with self._db.cursor(name=f"copy_{table}") as cur:  # server-side: in batches
                cur.execute(query)
                while batch := cur.fetchmany(BATCH_ROWS):
                    yield [tuple(r) for r in batch]
        except psycopg.Error as e:
            raise StoreError(f"{self.location}: reading {table}: {describe(e)}") from e

    def begin(self) -> None:
        """psycopg opens the transaction with the first statement; nothing to send."""

    def clear(self, table: str) -> None:
        self._run(sql.SQL("DELETE FROM {}").format(sql.Identifier(table)))

    def insert(self, table: str, columns: Sequence[str], rows: Sequence[Row]) -> None:
        if table not in self._quiet:
            self._run(sql.SQL("ALTER TABLE {} DISABLE TRIGGER USER").format(sql.Identifier(table)))
            self._quiet.append(table)
        query = sql.SQL("COPY {} ({}) FROM STDIN").format(
            sql.Identifier(table), sql.SQL(", ").join(map(sql.Identifier, columns))
        )
        try:
            with self._db.cursor() as cur, cur.copy(query) as copy:
                for row in rows:
                    copy.write_row(row)
        except psycopg.Error as e:
            raise StoreError(f"{self.location}: writing {table}: {describe(e)}") from e

    def execute(self, statement: str) -> None:
        self._run(statement)

    def _identities(self) -> list[tuple[str, str]]:
        """(table, column) of every identity column of the schema."""
        rows = self._run(
            "SELECT table_name, column_name FROM information_schema.columns"
            " WHERE table_schema = %s AND is_identity = 'YES'",
            (self.schema,),
        )
        return [(str(t), str(c)) for t, c in rows]

    def key_tops(self) -> dict[str, int]:
        tops: dict[str, int] = {}
        for table, column in self._identities():
            ((seq,),) = self._run(
                "SELECT pg_get_serial_sequence(%s, %s)", (f'"{self.schema}"."{table}"', column)
            )
            # Read from the sequence itself: pg_sequences.last_value is NULL until the
            # next nextval() also after a setval(..., false), as a copy leaves it.
            # is_called false: last_value is the next value to hand out, not one given.
            ((last, called),) = self._run(
                sql.SQL("SELECT last_value, is_called FROM {}").format(sql.SQL(str(seq)))
            )
            top = int(str(last))  # a bigint
            tops[table] = top if called else top - 1
        return tops

    def finish(self, tops: Mapping[str, int]) -> None:
        """Turn the triggers on again; move every identity sequence past the largest key
        and past the source's top for its table."""
        for quiet in self._quiet:
            self._run(sql.SQL("ALTER TABLE {} ENABLE TRIGGER USER").format(sql.Identifier(quiet)))
        self._quiet.clear()
        for table, column in self._identities():
            qualified = f'"{self.schema}"."{table}"'
            self._run(
                sql.SQL(
                    "SELECT setval(pg_get_serial_sequence(%s, %s),"
                    " greatest(coalesce((SELECT max({c}) FROM {t}), 0), %s) + 1, false)"
                ).format(c=sql.Identifier(column), t=sql.Identifier(table)),
                (qualified, column, tops.get(table, 0)),
            )

    def commit(self) -> None:
        try:
            self._db.commit()
        except psycopg.Error as e:
            raise StoreError(
                f"{self.location}: commit failed, nothing was copied: {describe(e)}"
            ) from e

    def rollback(self) -> None:
        if not self._db.closed:
            self._db.rollback()

    def close(self) -> None:
        self._db.close()
