"""relay.storage.sqlite.sqlstats: the writer's statements timed by SQL text when asked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from relay.storage.interface import WriteTx
from relay.storage.sqlite.sqlstats import COMMIT, STATS_ENV, TimedConnection
from relay.storage.sqlite.store import open_store, sqlite_tx

NONCE = "INSERT INTO nonces (peer, nonce, at) VALUES (?, ?, ?)"


async def _three_nonces(tx: WriteTx) -> None:
    db = sqlite_tx(tx)
    await db.execute(NONCE, ("p", "n0", 1))
    await db.executemany(NONCE, [("p", "n1", 1), ("p", "n2", 1)])
    cur = await db.execute("SELECT count(*) FROM   nonces\n WHERE peer = ?", ("p",))
    row = await cur.fetchone()
    assert row is not None and row[0] == 3


async def test_statements_are_counted_by_text_and_added_to_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "stats.json"
    monkeypatch.setenv(STATS_ENV, str(out))
    for _ in range(2):  # a second run adds to the figures of the first
        store = await open_store(tmp_path / "relay.db")
        try:
            assert isinstance(store._db, TimedConnection)
            await store.write(_three_nonces)
            await store.write(lambda tx: sqlite_tx(tx).execute("DELETE FROM nonces"))
        finally:
            await store.close()
    rows = {r["sql"]: r for r in json.loads(out.read_text())["statements"]}
    assert (rows[NONCE]["calls"], rows[NONCE]["rows"]) == (4, 6)
    # whitespace folded; the fetch counts to its statement, not as a call
    count = rows["SELECT count(*) FROM nonces WHERE peer = ?"]
    assert (count["calls"], count["rows"]) == (2, 2)
    assert rows[COMMIT]["calls"] >= 4  # at least one per job, each in the writer thread
    assert all(r["cpu_s"] >= 0 for r in rows.values())


async def test_no_file_and_no_timing_unless_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(STATS_ENV, raising=False)
    store = await open_store(tmp_path / "relay.db")
    try:
        assert not isinstance(store._db, TimedConnection)
        await store.write(_three_nonces)
    finally:
        await store.close()
    assert sorted(p.name for p in tmp_path.iterdir() if "stats" in p.name) == []
