"""Disk trouble (issue 4 point 8): a full or read-only database is a 503, never an ack.

The store is made full with `PRAGMA max_page_count` (the file may not grow)
and read-only with `PRAGMA query_only` on the writer connection, both inside
the running process, so no mount or privilege is needed. The federation side
of the same promise is in tests/federation/test_disk_trouble.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from relay.errors import StoreError
from relay.node.app import Node
from relay.storage.interface import WriteTx
from relay.storage.sqlite.store import Store, open_store, sqlite_store, sqlite_tx
from tests.inprocess import PeerLine, send, start_node, status, token, url_of, write_node

UNLIMITED_PAGES = 1_073_741_823
TIMEOUT = 10.0


async def _exec(tx: WriteTx, sql: str, params: tuple[Any, ...] = ()) -> None:
    await (await sqlite_tx(tx).execute(sql, params)).close()


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await open_store(tmp_path / "t.db")
    await s.write(lambda tx: _exec(tx, "CREATE TABLE t (x BLOB)"))
    try:
        yield s
    finally:
        await s.close()


async def test_full_disk_fails_every_job_of_the_rolled_back_transaction(store: Store) -> None:
    """SQLite rolls the whole transaction back on SQLITE_FULL: every job of it must fail.

    The writer must go on afterwards (it used to die on `ROLLBACK TO` of the
    vanished savepoint, leaving every later write waiting forever).
    """
    await store.write(lambda tx: _exec(tx, "INSERT INTO t VALUES (?)", (b"before",)))
    await store.write(lambda tx: _exec(tx, "PRAGMA max_page_count = 1"))  # cannot grow now
    gate = asyncio.Event()

    async def hold(tx: WriteTx) -> None:  # keeps the writer busy until the three jobs are queued
        await gate.wait()

    held = asyncio.ensure_future(store.write(hold))
    await asyncio.sleep(0.05)
    small = asyncio.ensure_future(store.write(lambda tx: _exec(tx, "INSERT INTO t VALUES (1)")))
    big = asyncio.ensure_future(
        store.write(lambda tx: _exec(tx, "INSERT INTO t VALUES (?)", (b"x" * 50_000,)))
    )
    after = asyncio.ensure_future(store.write(lambda tx: _exec(tx, "INSERT INTO t VALUES (2)")))
    await asyncio.sleep(0.05)
    gate.set()
    await asyncio.wait_for(held, TIMEOUT)
    results = await asyncio.wait_for(
        asyncio.gather(small, big, after, return_exceptions=True), TIMEOUT
    )
    assert all(isinstance(r, StoreError) and r.status == 503 for r in results), results
    assert store.trouble is not None and "full" in store.trouble
    rows = await sqlite_store(store).fetchall("SELECT x FROM t")
    assert [bytes(r[0]) for r in rows] == [b"before"]  # nothing of the three was stored

    await asyncio.wait_for(
        store.write(lambda tx: _exec(tx, f"PRAGMA max_page_count = {UNLIMITED_PAGES}")), TIMEOUT
    )
    assert store.trouble is None  # a clean commit ends the trouble
    await asyncio.wait_for(
        store.write(lambda tx: _exec(tx, "INSERT INTO t VALUES (?)", (b"y" * 50_000,))), TIMEOUT
    )
    assert await sqlite_store(store).pragma("integrity_check") == "ok"
    assert len(await sqlite_store(store).fetchall("SELECT x FROM t")) == 2


async def test_read_errors_are_store_errors(store: Store) -> None:
    with pytest.raises(StoreError):
        await sqlite_store(store).fetchall("SELECT * FROM no_such_table")
    with pytest.raises(StoreError):
        await sqlite_store(store).fetchone("SELECT * FROM no_such_table")


# --- two nodes: a sender whose own store fails keeps going ----------------------


def writer_of(node: Node) -> Any:
    """The writer connection of a running node (the test reaches inside to break it)."""
    assert node.state is not None
    return sqlite_store(node.state.store)._db


async def set_read_only(node: Node, on: bool) -> None:
    await writer_of(node).execute(f"PRAGMA query_only = {int(on)}")


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[tuple[Node, Node]]:
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    a_key = write_node(a_dir, "a.test")
    b_key = write_node(b_dir, "b.test", peers=[PeerLine("a.test", a_key)])
    b = await start_node(b_dir)
    write_node(a_dir, "a.test", peers=[PeerLine("b.test", b_key, url_of(b))])
    a = await start_node(a_dir)
    try:
        yield a, b
    finally:
        for n in (a, b):
            await set_read_only(n, False)
        await a.stop()
        await b.stop()


async def _until(probe: Any, what: str, timeout: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if await probe():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
async def test_both_stores_read_only_then_everything_is_delivered(
    pair: tuple[Node, Node],
) -> None:
    """B refuses batches with 503 while read-only; A's sender, whose own store
    then refuses to record the failed attempt, survives and delivers once both
    recover. A refuses submits with 503 + Retry-After and says it is not ready."""
    a, b = pair
    assert a.state is not None and b.state is not None
    async with aiohttp.ClientSession() as session:
        await set_read_only(b, True)
        code, doc = await send(session, a, ["bob@b.test"], "through trouble")
        assert code == 202, doc
        msg = doc["id"]

        async def a_retried() -> bool:
            assert a.state is not None
            row = await sqlite_store(a.state.store).fetchone(
                "SELECT failures, last_error FROM peer_state WHERE peer = 'b.test'"
            )
            return row is not None and row[0] >= 1 and "503" in row[1]

        await _until(a_retried, "a's first attempt refused with 503 by b")
        before = await b.state.store.row_counts()

        await set_read_only(a, True)

        async def a_sender_hit_trouble() -> bool:  # recording its failed attempt was refused
            assert a.state is not None
            return a.state.store.trouble is not None

        await _until(a_sender_hit_trouble, "a's sender meeting its read-only store")
        await asyncio.sleep(0.5)  # and again, a few times, at its 20..200 ms backoff
        async with session.post(
            url_of(a) + "/v1/messages",
            json={"to": ["bob@b.test"], "text": "refused"},
            headers={"Authorization": f"Bearer {token('alice')}"},
        ) as resp:
            assert resp.status == 503, await resp.text()
            assert (await resp.json())["error"] == "store"
            assert int(resp.headers["Retry-After"]) >= 1
        async with session.get(url_of(a) + "/readyz") as resp:
            assert resp.status == 503
            assert "store" in (await resp.json())["status"]
        assert await b.state.store.row_counts() == before  # b stored nothing meanwhile

        await set_read_only(b, False)
        await set_read_only(a, False)

        async def delivered() -> bool:  # b's signed result states the delivery
            got = await status(session, a, msg)  # (delivery-v1, protocol.md §22)
            return bool(got["bob@b.test"]["status"] == "delivered")

        await _until(delivered, "the message delivered after both stores recovered")
        async with session.get(url_of(a) + "/readyz") as resp:
            assert resp.status == 200, await resp.text()
        async with session.get(
            url_of(b) + "/v1/inbox", headers={"Authorization": f"Bearer {token('bob')}"}
        ) as resp:
            texts = [m.get("text") for m in (await resp.json())["messages"]]
        assert texts == ["through trouble"]
        for n in (a, b):
            assert n.state is not None
            assert await sqlite_store(n.state.store).pragma("integrity_check") == "ok"
