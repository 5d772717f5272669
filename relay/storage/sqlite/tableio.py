"""Raw table access to a SQLite database for `relay storage copy` (relay.storage.transfer).

Used only while the node is stopped: the caller holds the database's lock
(the store it opened), and this connection reads or writes beside it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from relay.errors import StoreError
from relay.storage.transfer import BATCH_ROWS, Row

_KINDS = {"INTEGER": "int", "TEXT": "text", "BLOB": "bytes"}


class SqliteTables:
    """relay.storage.transfer.TableIO over one SQLite file."""

    def __init__(self, path: Path) -> None:
        self.location = str(path)
        try:
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA busy_timeout = 5000")
        except sqlite3.Error as e:
            raise StoreError(f"cannot open {path}: {e}") from e

    def _run(self, sql: str, args: Sequence[object] = ()) -> list[Row]:
        try:
            return [tuple(r) for r in self._db.execute(sql, args).fetchall()]
        except sqlite3.Error as e:
            raise StoreError(f"{self.location}: {e}") from e

    def table_names(self) -> set[str]:
        rows = self._run(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        )
        return {str(r[0]) for r in rows}

    def columns(self, table: str) -> dict[str, str]:
        rows = self._run("SELECT name, type FROM pragma_table_info(?) ORDER BY cid", (table,))
        return {str(name): _KINDS.get(str(kind).upper(), "other") for name, kind in rows}

    def count(self, table: str) -> int:
        (n,) = self._run(f'SELECT count(*) FROM "{table}"')[0]
        return n if isinstance(n, int) else 0

    def rows(self, table: str, columns: Sequence[str]) -> Iterator[list[Row]]:
        cols = ", ".join(f'"{c}"' for c in columns)
        try:
            cur = self._db.execute(f'SELECT {cols} FROM "{table}"')
            while batch := cur.fetchmany(BATCH_ROWS):
                yield [tuple(r) for r in batch]
        except sqlite3.Error as e:
            raise StoreError(f"{self.location}: reading {table}: {e}") from e

    def begin(self) -> None:
        self._run("BEGIN IMMEDIATE")

    def clear(self, table: str) -> None:
        self._run(f'DELETE FROM "{table}"')

    def insert(self, table: str, columns: Sequence[str], rows: Sequence[Row]) -> None:
        cols = ", ".join(f'"{c}"' for c in columns)
        marks = ", ".join("?" for _ in columns)
        try:
            self._db.executemany(f'INSERT INTO "{table}" ({cols}) VALUES ({marks})', rows)
        except sqlite3.Error as e:
            raise StoreError(f"{self.location}: writing {table}: {e}") from e

    def execute(self, sql: str) -> None:
        self._run(sql)

    def key_tops(self) -> dict[str, int]:
        if not self._run("SELECT 1 FROM sqlite_master WHERE name = 'sqlite_sequence'"):
            return {}
        rows = self._run("SELECT name, seq FROM sqlite_sequence")
        return {str(n): v for n, v in rows if isinstance(v, int)}

    def finish(self, tops: Mapping[str, int]) -> None:
        """Keys go on past the largest key stored; an AUTOINCREMENT table's counter
        is moved past the source's top too (the other tables have no counter)."""
        counted = {
            str(r[0])
            for r in self._run(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND sql LIKE '%AUTOINCREMENT%'"
            )
        }
        for table, top in tops.items():
            if table not in counted:
                continue
            if self._run("SELECT 1 FROM sqlite_sequence WHERE name = ?", (table,)):
                self._run(
                    "UPDATE sqlite_sequence SET seq = ? WHERE name = ? AND seq < ?",
                    (top, table, top),
                )
            else:
                self._run("INSERT INTO sqlite_sequence (name, seq) VALUES (?, ?)", (table, top))

    def commit(self) -> None:
        self._run("COMMIT")

    def rollback(self) -> None:
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")

    def close(self) -> None:
        self._db.close()
