"""Announcements between workers on one PostgreSQL schema (WriteTx.announce).

Invariants:
- A transaction's announcements go out with `pg_notify` inside it, so
  PostgreSQL delivers them only if it commits, after the commit, to every
  session LISTENing on the schema's channel.
- Each store listens on a connection of its own and hands what other stores
  announced to its on_announce hooks; its own come back too and are skipped
  by their sender token (the store heard them right after its COMMIT).
- The listener reconnects by itself; what was announced while it was away
  is not replayed (log `announce_gap`): the node's periodic passes pick up
  what a lost wake-up would have woken.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Sequence

import psycopg

from relay.errors import StoreError
from relay.logs import event
from relay.storage.postgres import sql as q
from relay.storage.postgres.connect import connect, describe
from relay.storage.postgres.url import PgTarget

log = logging.getLogger("relay.store")

PAYLOAD_MAX = 7000  # bytes per NOTIFY; the server's limit is 8000
RETRY_MAX_S = 5.0


def channel(target: PgTarget) -> str:
    """The schema's channel name (at most 63 bytes, an identifier's limit)."""
    return f"relay_{target.schema}"[:63]


def payloads(schema: str, token: str, items: Sequence[tuple[str, str]]) -> list[str]:
    """`items` as NOTIFY payloads, each under PAYLOAD_MAX bytes."""
    found: list[str] = []
    chunk: list[tuple[str, str]] = []
    size = 0
    for item in items:
        cost = len(json.dumps(item).encode()) + 1
        if chunk and size + cost > PAYLOAD_MAX - 200:
            found.append(json.dumps({"s": schema, "w": token, "a": chunk}))
            chunk, size = [], 0
        chunk.append(item)
        size += cost
    if chunk:
        found.append(json.dumps({"s": schema, "w": token, "a": chunk}))
    return found


async def send(db: q.Conn, target: PgTarget, token: str, items: Sequence[tuple[str, str]]) -> None:
    """NOTIFY `items` inside the open transaction."""
    name = channel(target)
    await q.many(
        db, "SELECT pg_notify(%s, %s)", [(name, p) for p in payloads(target.schema, token, items)]
    )


def parse(payload: str, schema: str, token: str) -> list[tuple[str, str]]:
    """The announcements of another store on `schema` in a payload ([] for our own or junk)."""
    try:
        found = json.loads(payload)
        if found.get("s") != schema or found.get("w") == token:
            return []
        return [(str(t), str(k)) for t, k in found["a"]]
    except (ValueError, TypeError, KeyError, AttributeError):
        event(log, "announce_unreadable", logging.WARNING, payload=payload[:200])
        return []


class Listener:
    """LISTENs on the schema's channel and hands other stores' announcements on."""

    def __init__(
        self,
        target: PgTarget,
        password: str | None,
        token: str,
        deliver: Callable[[Sequence[tuple[str, str]]], None],
    ) -> None:
        self.target = target
        self._password = password
        self.token = token
        self._deliver = deliver
        self._task: asyncio.Task[None] | None = None
        self.listening = asyncio.Event()

    def start(self) -> None:
        """Start listening in the background (once)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="store-listener")

    async def close(self) -> None:
        """Stop listening."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        wait = 0.1
        gap = False
        while True:
            try:
                db = await connect(self.target, self._password)
            except StoreError as e:
                event(log, "announce_listen_failed", logging.WARNING, detail=e.detail)
                await asyncio.sleep(wait)
                wait = min(wait * 2, RETRY_MAX_S)
                continue
            try:
                await db.execute(f'LISTEN "{channel(self.target)}"')
                if gap:
                    event(log, "announce_gap", logging.WARNING, database=self.target.display)
                wait = 0.1
                self.listening.set()
                async for note in db.notifies():
                    items = parse(note.payload, self.target.schema, self.token)
                    if items:
                        self._deliver(items)
            except psycopg.Error as e:
                event(log, "announce_listen_lost", logging.WARNING, detail=describe(e))
            finally:
                self.listening.clear()
                gap = True
                try:
                    await db.close()
                except psycopg.Error as e:
                    event(log, "store_close_failed", logging.WARNING, detail=describe(e))
            await asyncio.sleep(wait)
