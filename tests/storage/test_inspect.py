"""relay.storage.sqlite.inspect: what `relay bench` reads from a node's database, read-only."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import aiohttp
import pytest

from relay.storage.sqlite.inspect import DatabaseView, sqlite_version, worker_thread_lines
from tests.inprocess import send, start_node, write_node


async def test_a_running_nodes_inbox_and_envelopes(tmp_path: Path) -> None:
    write_node(tmp_path, "x.test")
    node = await start_node(tmp_path)
    view = DatabaseView(tmp_path / "relay.db")
    try:
        assert (view.max_inbox_seq(), view.inbox_count(), view.inbox_rows(True)) == (0, 0, [])
        assert view.message_envelopes() == (0, 0)
        ids = []
        async with aiohttp.ClientSession() as session:
            for text in ("one", "two"):
                code, doc = await send(session, node, ["bob@x.test"], text)
                assert code == 202, doc
                ids.append(bytes.fromhex(doc["id"]))
        assert view.inbox_count() == 2
        rows = view.inbox_rows(True)
        assert sorted(r[0] for r in rows) == sorted(ids)
        assert all(created <= delivered for _, delivered, created, _ in rows)
        assert view.max_inbox_seq() == max(seq for *_, seq in rows)
        assert [r[0] for r in view.inbox_rows(False)] == [b"", b""]
        messages, not_from_a_peer = view.message_envelopes()
        assert messages == not_from_a_peer == 2  # submitted here: no from_peer
        assert view.journal_mode() == "wal"
    finally:
        view.close()
        await node.stop()


def test_the_view_cannot_write(tmp_path: Path) -> None:
    db = tmp_path / "relay.db"
    sqlite3.connect(db).execute("CREATE TABLE inbox (seq INTEGER)").connection.close()
    view = DatabaseView(db)
    try:
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            view._db.execute("INSERT INTO inbox VALUES (1)")
    finally:
        view.close()


def test_worker_thread_lines_name_aiosqlite_s_loop() -> None:
    names = set(worker_thread_lines().values())
    assert any(n.startswith("idle: aiosqlite thread") for n in names), names
    assert any("one sqlite call" in n for n in names), names
    assert sqlite_version() == sqlite3.sqlite_version
