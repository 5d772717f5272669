"""Connections to the node's PostgreSQL database, and what their failures mean.

Invariants:
- Every connection is autocommit (transactions are explicit), has
  `synchronous_commit = on` (COMMIT returns once the WAL is flushed, and on
  the synchronous standbys the server names) and the URL's schema first on
  its search_path.
- A `Link` holds one connection and makes a new one when the last was lost,
  so the node keeps going after the database restarts: while it is gone,
  every use fails with StoreError (503) and nothing is acknowledged.
- Only `connection_lost` errors are the server's or network's fault; every
  other psycopg error is about the statement.
"""

from __future__ import annotations

import logging
from typing import Any

import psycopg

from relay.errors import StoreError
from relay.logs import event
from relay.storage.interface import NoDatabase
from relay.storage.postgres.sql import Conn
from relay.storage.postgres.url import PgTarget

log = logging.getLogger("relay.store")

CONNECT_TIMEOUT_S = 5


async def connect(target: PgTarget, password: str | None, *, read_only: bool = False) -> Conn:
    """A new connection; NoDatabase naming the URL if the server or database is not there."""
    options = f"-c search_path={target.schema} -c synchronous_commit=on"
    if read_only:
        options += " -c default_transaction_read_only=on"
    kwargs: dict[str, Any] = {"autocommit": True, "options": options}
    if "application_name" not in target.conninfo:
        kwargs["application_name"] = application_name(target)
    if password is not None:
        kwargs["password"] = password
    if "connect_timeout" not in target.conninfo:
        kwargs["connect_timeout"] = CONNECT_TIMEOUT_S
    try:
        return await psycopg.AsyncConnection.connect(target.conninfo, **kwargs)
    except psycopg.Error as e:
        raise NoDatabase(
            f"{target.display}: cannot connect to the database: {_first_line(e)}"
        ) from e


def application_name(target: PgTarget) -> str:
    """How the node's connections show in pg_stat_activity: `relay:SCHEMA`."""
    return f"relay:{target.schema}"


def connection_lost(e: BaseException, db: Conn | None) -> bool:
    """True if `e` means the connection is gone (server down, restarted, network)."""
    if db is not None and (db.closed or db.broken):
        return True
    return isinstance(e, psycopg.OperationalError) and not isinstance(
        e, psycopg.errors.QueryCanceled
    )


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def describe(e: BaseException) -> str:
    """A one-line account of a psycopg error for a StoreError's detail."""
    return _first_line(e)


class Link:
    """One connection, made again after it was lost."""

    def __init__(self, target: PgTarget, password: str | None, *, read_only: bool = False) -> None:
        self.target = target
        self._password = password
        self._read_only = read_only
        self._db: Conn | None = None
        self.reconnects = 0

    @classmethod
    async def open(cls, target: PgTarget, password: str | None, *, read_only: bool = False) -> Link:
        """A link with its first connection made (NoDatabase if it cannot be)."""
        link = cls(target, password, read_only=read_only)
        link._db = await connect(target, password, read_only=read_only)
        return link

    async def get(self) -> Conn:
        """The live connection, connecting again if the last one was lost."""
        db = self._db
        if db is not None and not db.closed and not db.broken:
            return db
        if db is not None:
            await self._discard(db)
        self._db = await connect(self.target, self._password, read_only=self._read_only)
        self.reconnects += 1
        event(log, "store_reconnected", database=self.target.display)
        return self._db

    async def lost(self) -> None:
        """Drop the connection after a failure that left it unusable."""
        if self._db is not None:
            await self._discard(self._db)
            self._db = None

    async def close(self) -> None:
        """Close the connection (a second close does nothing)."""
        await self.lost()

    @staticmethod
    async def _discard(db: Conn) -> None:
        try:
            await db.close()
        except psycopg.Error as e:
            event(log, "store_close_failed", logging.WARNING, detail=describe(e))


def store_error(action: str, e: BaseException) -> StoreError:
    """StoreError for a failed `action`, naming the cause in one line."""
    return StoreError(f"{action}: {describe(e)}")
