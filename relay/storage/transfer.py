"""Copying a node's stored state from one backend to another (`relay storage copy`).

Invariants:
- Every table of DATA is copied row for row, with its keys (rids, seqs)
  unchanged, so every reference between rows still holds; DERIVED tables
  are recomputed by the target; LOCAL ones stay where they are. A source
  table in none of these lists stops the copy before anything is written,
  so a table a later migration adds cannot be left behind unnoticed.
- The target is written in one transaction: it commits only after every
  table's row count in the target equals the source's; otherwise nothing of
  the copy stays. The source is only read.
- A target that holds any row is refused unless `replace` is set; then its
  rows go in the same transaction as the copy, so a failed copy keeps them.
- Key generators go on past every key the source handed out, not only past
  the keys copied: an inbox seq an app holds as its cursor is never reused.
- Both sides must have the same columns per table (both migrated to this
  code's schema), except the LOCAL_COLUMNS one backend keeps for its own
  layout; values are converted only between integer and boolean.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from relay.errors import Conflict, StoreError
from relay.storage import unread_sql
from relay.storage.tables import TABLES

BATCH_ROWS = 2000

# Every table of relay.storage.tables, row for row, in an order where every
# row's references are already there (payloads before the envelopes that
# name them, envelopes before the queue, inbox and recipient rows that point
# at their rid).
DATA: tuple[str, ...] = ("payloads", *(t for t in TABLES if t != "payloads"))

# Kept by the writer from the DATA tables (relay.storage.unread_sql, on both backends);
# the target recomputes them with these statements (valid SQLite and
# PostgreSQL) rather than trusting a copy.
DERIVED: dict[str, str] = {
    "unread": (
        f"INSERT INTO unread (mailbox, bytes) SELECT i.mailbox, sum({unread_sql.WEIGHT}) "
        "FROM inbox i JOIN envelopes e ON e.rid = i.rid "
        "WHERE i.acked IS NULL GROUP BY i.mailbox"
    ),
}

# Columns only one backend has, for its own storage layout, that no other row
# refers to: SQLite's payloads.id is the rowid that keeps small bodies inline
# (its migration 5); PostgreSQL keys payloads by sha alone.
LOCAL_COLUMNS: frozenset[tuple[str, str]] = frozenset({("payloads", "id")})

# Not carried: each backend's own migration bookkeeping, and the leases
# running workers hold (a copy runs with the node stopped, so none is valid
# in the target).
LOCAL: tuple[str, ...] = ("schema_version", "leases")

Row = tuple[object, ...]


class TableIO(Protocol):
    """Raw row access to one backend's tables, for the copy only (never while a node runs)."""

    location: str  # for messages: a file path or a URL without its password

    def table_names(self) -> set[str]:
        """Every table the database holds."""
        ...

    def columns(self, table: str) -> dict[str, str]:
        """The columns of `table` in order, each with its kind: int, bool, bytes, text or other."""
        ...

    def count(self, table: str) -> int:
        """Rows in `table` (inside the open transaction, if any)."""
        ...

    def rows(self, table: str, columns: Sequence[str]) -> Iterator[list[Row]]:
        """Every row of `table`, as tuples of `columns`, in batches."""
        ...

    def begin(self) -> None:
        """Start the transaction every following call runs in."""
        ...

    def clear(self, table: str) -> None:
        """Delete every row of `table`."""
        ...

    def insert(self, table: str, columns: Sequence[str], rows: Sequence[Row]) -> None:
        """Insert `rows` (tuples of `columns`) into `table`."""
        ...

    def execute(self, sql: str) -> None:
        """Run one statement in the open transaction."""
        ...

    def key_tops(self) -> dict[str, int]:
        """By table, the largest key its key generator (a sequence) has handed out:
        past the largest key stored where the newest rows were deleted since."""
        ...

    def finish(self, tops: Mapping[str, int]) -> None:
        """Bring key generators past the copied keys and past the source's `tops`."""
        ...

    def commit(self) -> None:
        """Make the transaction durable."""
        ...

    def rollback(self) -> None:
        """Drop the transaction."""
        ...

    def close(self) -> None:
        """Release the connection."""
        ...


@dataclass(frozen=True)
class Copied:
    """One table after a copy: rows in the source and in the target."""

    table: str
    source: int
    target: int


def check_tables(source: TableIO) -> None:
    """StoreError if the source holds a table named in none of DATA, DERIVED and LOCAL."""
    known = {*DATA, *DERIVED, *LOCAL}
    unknown = sorted(source.table_names() - known)
    if unknown:
        raise StoreError(
            f"{source.location} holds tables this relay does not know how to copy: "
            f"{', '.join(unknown)}; is it newer than this relay?"
        )
    missing = [t for t in DATA if t not in source.table_names()]
    if missing:
        raise StoreError(f"{source.location} is not a relay database: no {', '.join(missing)}")


def occupied(target: TableIO) -> dict[str, int]:
    """The data tables of `target` that hold rows, with their counts."""
    have = target.table_names()
    counts = {t: target.count(t) for t in DATA if t in have}
    return {t: n for t, n in counts.items() if n}


def copy_all(source: TableIO, target: TableIO, *, replace: bool = False) -> list[Copied]:
    """Copy every data table of `source` into `target` in one transaction; the counts.

    Conflict if the target holds rows and `replace` is not set; StoreError if
    the schemas differ or a count does not match (nothing is written then).
    """
    check_tables(source)
    target_tables = target.table_names()
    plan: list[tuple[str, list[str], dict[str, str]]] = []
    for table in DATA:
        if table not in target_tables:
            raise StoreError(f"{target.location} has no table {table}: is it a relay database?")
        src_cols, dst_cols = source.columns(table), target.columns(table)
        odd = set(src_cols) ^ set(dst_cols)
        if any((table, c) not in LOCAL_COLUMNS for c in odd):
            raise StoreError(
                f"table {table} differs: {source.location} has "
                f"{', '.join(src_cols)}; {target.location} has {', '.join(dst_cols)}"
            )
        plan.append((table, [c for c in src_cols if c in dst_cols], dst_cols))
    tops = source.key_tops()  # an inbox seq handed out is never handed out again
    target.begin()
    try:
        busy = occupied(target)
        if busy and not replace:
            held = ", ".join(f"{t}: {n}" for t, n in busy.items())
            raise Conflict(
                f"{target.location} already holds relay data ({held}); "
                "pass --replace to overwrite it"
            )
        for table in (*reversed(DATA), *DERIVED):
            if table in target_tables:
                target.clear(table)
        for table, cols, kinds in plan:
            wanted = [kinds[c] for c in cols]
            for batch in source.rows(table, cols):
                target.insert(table, cols, [_as_target(row, wanted) for row in batch])
        for table, sql in DERIVED.items():
            if table in target_tables:
                target.clear(table)
                target.execute(sql)
        target.finish(tops)
        copied = [Copied(t, source.count(t), target.count(t)) for t in DATA]
        wrong = [c for c in copied if c.source != c.target]
        if wrong:
            raise StoreError(
                "row counts differ after the copy, nothing was written: "
                + ", ".join(f"{c.table} {c.source} -> {c.target}" for c in wrong)
            )
        target.commit()
    except BaseException:
        target.rollback()
        raise
    return copied


def _as_target(row: Row, kinds: Sequence[str]) -> Row:
    """`row` with integers and booleans in the form the target's columns take."""
    return tuple(_value(v, k) for v, k in zip(row, kinds, strict=True))


def _value(value: object, kind: str) -> object:
    if kind == "bool" and isinstance(value, int) and not isinstance(value, bool):
        return bool(value)
    if kind == "int" and isinstance(value, bool):
        return int(value)
    return value
