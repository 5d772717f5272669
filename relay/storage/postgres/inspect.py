"""Read-only looks into a node's PostgreSQL schema from another process (`relay bench`).

The same questions as relay.storage.sqlite.inspect.DatabaseView asks of a
SQLite file, over one autocommit connection that may only read; and which
server processes serve a node, so the bench can count their CPU.
"""

from __future__ import annotations

from typing import Any

import psycopg
import psycopg.sql

from relay.errors import StoreError
from relay.storage.postgres.connect import CONNECT_TIMEOUT_S, application_name, describe
from relay.storage.postgres.url import parse_url


class PgDatabaseView:
    """A read-only connection to one node's schema and the questions the bench asks."""

    def __init__(self, url: str, password: str | None = None) -> None:
        target = parse_url(url)
        self.application_name = application_name(target)
        kwargs: dict[str, Any] = {
            "autocommit": True,
            "options": f"-c search_path={target.schema} -c default_transaction_read_only=on",
            "connect_timeout": CONNECT_TIMEOUT_S,
            "application_name": "relay:bench-view",
        }
        if password is not None:
            kwargs["password"] = password
        try:
            self._db = psycopg.connect(target.conninfo, **kwargs)
        except psycopg.Error as e:
            raise StoreError(f"{target.display}: cannot connect: {describe(e)}") from e

    def close(self) -> None:
        """Close the connection (the view is unusable afterwards)."""
        self._db.close()

    def _one(self, query: Any) -> tuple[Any, ...]:
        row = self._db.execute(query).fetchone()
        return tuple(row) if row is not None else ()

    def max_inbox_seq(self) -> int:
        """The highest inbox.seq committed so far, 0 for an empty inbox."""
        row = self._one("SELECT max(seq) FROM inbox")
        return int(row[0]) if row and row[0] is not None else 0

    def inbox_count(self) -> int:
        """Rows in the inbox."""
        return int(self._one("SELECT count(*) FROM inbox")[0])

    def inbox_rows(self, with_ids: bool) -> list[tuple[bytes, int, int, int]]:
        """(envelope id, inbox.delivered, envelope.created, inbox.seq) of every inbox row."""
        cols = "e.id" if with_ids else "''::bytea"
        rows = self._db.execute(
            f"SELECT {cols}, i.delivered, e.created, i.seq FROM inbox i"
            " JOIN envelopes e ON e.rid = i.rid"
        ).fetchall()
        return [(bytes(r[0]), int(r[1]), int(r[2]), int(r[3])) for r in rows]

    def message_envelopes(self) -> tuple[int, int]:
        """(message envelopes stored, those not received directly from their origin)."""
        row = self._one(
            "SELECT count(*), count(*) FILTER (WHERE from_peer IS NULL OR from_peer != origin)"
            " FROM envelopes WHERE kind = 'message'"
        )
        return int(row[0] or 0), int(row[1] or 0)

    def journal_mode(self) -> str:
        """What stands for SQLite's journal mode: PostgreSQL always writes ahead (WAL)."""
        return "postgresql"

    def synchronous_commit(self) -> str:
        """The server's synchronous_commit default (every node connection sets `on`)."""
        return str(self._one("SELECT current_setting('synchronous_commit')")[0])

    def server_pids(self) -> list[int]:
        """Process ids of the server backends serving this node's connections."""
        rows = self._db.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s",
            (self.application_name,),
        ).fetchall()
        return [int(r[0]) for r in rows]


def drop_schema(url: str, password: str | None = None) -> None:
    """Drop the schema `url` names, with every table in it (a bench's own schema)."""
    target = parse_url(url)
    kwargs: dict[str, Any] = {"autocommit": True, "connect_timeout": CONNECT_TIMEOUT_S}
    if password is not None:
        kwargs["password"] = password
    try:
        with psycopg.connect(target.conninfo, **kwargs) as db:
            db.execute(
                psycopg.sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
                    psycopg.sql.Identifier(target.schema)
                )
            )
    except psycopg.Error as e:
        raise StoreError(
            f"{target.display}: cannot drop schema {target.schema}: {describe(e)}"
        ) from e
