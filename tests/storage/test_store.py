"""relay.storage.sqlite.store: durability settings, locking, migrations and group commit."""

from __future__ import annotations

import asyncio
import sqlite3
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from relay.errors import RelayError, StoreError
from relay.storage.audit import _PRUNE_WITNESSED
from relay.storage.interface import WriteTx
from relay.storage.records import Cutoffs
from relay.storage.sqlite.schema import statements
from relay.storage.sqlite.store import (
    MIGRATIONS,
    SCHEMA_VERSION,
    TABLES,
    DatabaseLocked,
    open_store,
    sqlite_tx,
)
from tests.storage.contract import (
    PRE_EVIDENCE_HEADS,
    T0,
    envelope,
    new,
    pre_evidence_heads_stay,
    put,
)


async def test_wal_full_sync_and_private_file(tmp_path: Path) -> None:
    db = tmp_path / "relay.db"
    store = await open_store(db)
    try:
        assert await store.pragma("journal_mode") == "wal"
        # synchronous is per connection: 2 = FULL on the reader as on the writer
        assert await store.pragma("synchronous") == "2"
        assert stat.S_IMODE(db.stat().st_mode) == 0o600
        assert set(await store.row_counts()) == set(TABLES)
    finally:
        await store.close()


async def test_an_sqlite_without_returning_is_refused_naming_its_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite3, "sqlite_version_info", (3, 34, 1))
    with pytest.raises(
        StoreError, match=r"SQLite 3\.34\.1 is too old: relay needs SQLite 3\.35\.0"
    ):
        await open_store(tmp_path / "relay.db")
    assert not (tmp_path / "relay.db").exists()  # refused before anything was written


async def test_second_opener_is_refused_while_the_first_runs(tmp_path: Path) -> None:
    db = tmp_path / "relay.db"
    store = await open_store(db)
    try:
        with pytest.raises(DatabaseLocked, match="in use by another relay process"):
            await open_store(db)
    finally:
        await store.close()
    again = await open_store(db)  # released on close
    await again.close()


async def test_database_newer_than_the_code_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "relay.db"
    store = await open_store(db)
    await store.close()
    con = sqlite3.connect(db)
    con.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION + 1,))
    con.commit()
    con.close()
    with pytest.raises(StoreError, match=f"schema version {SCHEMA_VERSION + 1}, newer"):
        await open_store(db)


async def test_migration_6_counts_the_unread_bytes_already_there(tmp_path: Path) -> None:
    """A database at version 5 with unread mail starts its per-mailbox counters right."""
    db = tmp_path / "relay.db"
    store = await open_store(db)
    seven, five = envelope(payload=b"x" * 7), envelope(payload=b"y" * 5)
    await put(store, [new(seven, mailboxes=["bob"])])
    await put(store, [new(five, mailboxes=["bob", "carol"])])
    await store.close()
    con = sqlite3.connect(db)
    for trigger in ("unread_delivered", "unread_acked", "unread_deleted"):
        con.execute(f"DROP TRIGGER IF EXISTS {trigger}")  # migration 16 dropped them
    con.execute("DROP TABLE unread")
    con.execute("DROP TABLE leases")  # migration 7's, so that 6 and later run again
    for table in ("audit_log", "audit_heads", "audit_witnessed"):  # and 8's
        con.execute(f"DROP TABLE {table}")
    con.execute("ALTER TABLE queue DROP COLUMN not_before")  # and 9's
    for table in ("erasures", "erasure_answers"):  # and 11's and 12's
        con.execute(f"DROP TABLE IF EXISTS {table}")
    con.execute("ALTER TABLE envelopes DROP COLUMN erased")
    con.execute("DROP TABLE attempts")  # and 17's
    con.execute("DELETE FROM schema_version WHERE version >= 6")
    con.commit()
    con.close()
    store = await open_store(db)
    try:
        h7, h5 = len(seven.header_bytes), len(five.header_bytes)  # headers count (migration 10)
        assert await store.unread_bytes(["bob", "carol"]) == {"bob": 12 + h7 + h5, "carol": 5 + h5}
    finally:
        await store.close()


async def test_payloads_survive_the_migration_to_a_rowid_table(tmp_path: Path) -> None:
    """A database at version 4 keeps its payloads through migration 5."""
    db = tmp_path / "relay.db"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    for version in range(1, 5):
        for stmt in (s.strip() for s in MIGRATIONS[version].split(";")):
            if stmt:
                con.execute(stmt)
        con.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))
    con.execute("INSERT INTO payloads (sha, body) VALUES (?, ?)", (b"\x01" * 32, b"kept"))
    con.commit()
    con.close()
    store = await open_store(db)
    try:
        row = await store.fetchone("SELECT body FROM payloads WHERE sha = ?", (b"\x01" * 32,))
        assert row is not None and bytes(row[0]) == b"kept"
        row = await store.fetchone("SELECT max(version) FROM schema_version")
        assert row is not None and row[0] == SCHEMA_VERSION

        async def again(tx: WriteTx) -> None:
            await sqlite_tx(tx).execute(
                "INSERT INTO payloads (sha, body) VALUES (?, ?)", (b"\x01" * 32, b"x")
            )

        with pytest.raises(StoreError):  # sha is still unique: payloads are stored once
            await store.write(again)
    finally:
        await store.close()


async def test_recipients_keep_their_rows_as_a_rowid_table(tmp_path: Path) -> None:
    """A database at version 12 keeps its recipients through migration 13, in rid order."""
    db = tmp_path / "relay.db"
    con = _database_at(db, 12)
    rows = [
        (bytes([9 - rid]) * 16, f"r{rid}@b.example", rid, "alice", "sent", "", 5)
        for rid in (1, 2, 3)
    ]
    con.executemany("INSERT INTO recipients VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
    con.commit()
    con.close()
    store = await open_store(db)
    try:
        got = await store.fetchall(
            "SELECT msg, address, rid, mailbox, status, reason, at FROM recipients ORDER BY rowid"
        )
        assert [tuple(bytes(r[0]) if i == 0 else r[i] for i in range(7)) for r in got] == rows
        sql = await store.fetchone("SELECT sql FROM sqlite_master WHERE name = 'recipients'")
        assert sql is not None and "WITHOUT ROWID" not in sql[0]

        async def again(tx: WriteTx) -> None:
            await sqlite_tx(tx).execute(
                "INSERT INTO recipients VALUES (?, ?, ?, ?, ?, ?, ?)", rows[0]
            )

        with pytest.raises(StoreError):  # (msg, address) is still the key
            await store.write(again)
    finally:
        await store.close()


async def test_group_commit_answers_after_commit_and_isolates_a_failing_job(
    tmp_path: Path,
) -> None:
    store = await open_store(tmp_path / "relay.db")
    try:

        def job(i: int) -> Callable[[WriteTx], Awaitable[int]]:
            async def run(tx: WriteTx) -> int:
                await sqlite_tx(tx).execute(
                    "INSERT INTO nonces (peer, nonce, at) VALUES (?, ?, ?)", ("p", f"n{i}", i)
                )
                if i == 7:
                    raise RelayError("job 7 fails on purpose")
                return i

            return run

        commits_before = store.commits
        results: list[int | BaseException] = await asyncio.gather(
            *(store.write(job(i)) for i in range(50)), return_exceptions=True
        )
        failed = [r for r in results if isinstance(r, BaseException)]
        assert len(failed) == 1 and failed[0] is results[7]
        assert isinstance(results[7], RelayError)
        done = [r for r in results if isinstance(r, int)]
        assert done == [i for i in range(50) if i != 7]
        # many jobs shared few transactions, and every answer came after its commit
        assert store.commits - commits_before < 50
        counts = await store.row_counts()
        assert counts["nonces"] == 49
    finally:
        await store.close()


async def test_every_read_maps_database_errors_to_store_error(tmp_path: Path) -> None:
    store = await open_store(tmp_path / "relay.db")
    try:

        async def drop_all(tx: WriteTx) -> None:  # every read now fails inside SQLite
            for table in TABLES:
                await sqlite_tx(tx).execute(f"DROP TABLE {table}")

        await store.write(drop_all)
        cut = Cutoffs(0, 0, 0, 0, 0, 0)
        reads: list[Callable[[], Awaitable[object]]] = [
            lambda: store.queue_head("b.test", 10),
            lambda: store.queue_hops(),
            lambda: store.queue_length(),
            lambda: store.queue_counts(),
            lambda: store.queue_listing(None, -1),
            lambda: store.queue_ages(0, (60_000,)),
            lambda: store.peer_state("b.test"),
            lambda: store.peer_states(),
            lambda: store.nonce_seen("b.test", "n"),
            lambda: store.stored_results("b.test", b"b"),
            lambda: store.idempotent_answer("alice", "k"),
            lambda: store.key_used("alice", "k"),
            lambda: store.recipient_statuses(b"m", "alice"),
            lambda: store.inbox("alice", 0, 10),
            lambda: store.unacked_counts(),
            lambda: store.webhook_cursor("alice"),
            lambda: store.certificates(0),
            lambda: store.decisions(None, None, 10),
            lambda: store.allows(None, 10),
            lambda: store.retention_preview(cut, 10),
            lambda: store.row_counts(),
        ]
        for read in reads:
            with pytest.raises(StoreError, match="cannot read the database"):
                await read()
    finally:
        await store.close()


def _database_at(db: Path, version: int) -> sqlite3.Connection:
    """A database migrated by hand up to `version` (the migrations as released)."""
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    for v in range(1, version + 1):
        for stmt in statements(MIGRATIONS[v]):
            con.execute(stmt)
        con.execute("INSERT INTO schema_version (version) VALUES (?)", (v,))
    return con


async def test_envelopes_keep_their_rows_keyed_id_first(tmp_path: Path) -> None:
    """A database at version 13 keeps its envelopes, rids and unread counts through
    migration 14, which keys the table (id, origin) and drops the index on id, and
    through 16, which drops the unread triggers."""
    db = tmp_path / "relay.db"
    con = _database_at(db, 13)
    cols = (
        "rid, origin, id, hdigest, header, signature, payload_sha, trace, kind, sender, dest,"
        " created, expires, received, size, residency, from_peer, rule_id, policy_hash,"
        " discard, hop, erased"
    )
    rows = [
        (rid, f"o{rid % 2}.test", bytes([rid]) * 16, b"d", b"h" * rid, b"s", b"p", b"t",
         "message", "s@x", "here.test", 1, 2, 3, 100 * rid, "DE", None, "r", "ph",
         rid % 2, None, None)
        for rid in (3, 1, 7)
    ]  # fmt: skip
    con.executemany(f"INSERT INTO envelopes ({cols}) VALUES ({', '.join('?' * 22)})", rows)
    con.executemany(
        "INSERT INTO inbox (mailbox, rid, delivered) VALUES (?, ?, ?)",
        [("alice", 1, 5), ("alice", 3, 5), ("bob", 7, 5)],
    )
    unread = con.execute("SELECT mailbox, bytes FROM unread ORDER BY mailbox").fetchall()
    assert unread == [("alice", 100 + 1 + 300 + 3), ("bob", 700 + 7)]
    con.commit()
    con.close()
    store = await open_store(db)
    try:
        got = await store.fetchall(f"SELECT {cols} FROM envelopes ORDER BY rid")
        assert [tuple(r) for r in got] == sorted(rows)
        assert [tuple(r) for r in await store.fetchall("SELECT * FROM unread")] == unread
        names = {r[0] for r in await store.fetchall("PRAGMA index_list(envelopes)")}
        assert "envelopes_id" not in names
        plan = await store.fetchall(
            "EXPLAIN QUERY PLAN SELECT origin, hdigest FROM envelopes WHERE id IN (?, ?)",
            (b"a", b"b"),
        )
        assert any("USING INDEX sqlite_autoindex_envelopes" in str(r[3]) for r in plan)

        async def again(tx: WriteTx) -> None:
            db = sqlite_tx(tx)
            await db.execute(
                f"INSERT INTO envelopes ({cols}) VALUES ({', '.join('?' * 22)})",
                (9, *rows[0][1:]),
            )

        with pytest.raises(StoreError):  # (origin, id) is still unique
            await store.write(again)

        # migration 16 then dropped the unread triggers; the counts stayed as they were
        assert await store.fetchall("SELECT name FROM sqlite_master WHERE type = 'trigger'") == []
    finally:
        await store.close()


async def test_inbox_seqs_go_on_past_every_seq_known_after_migration_18(tmp_path: Path) -> None:
    """A database at version 17 whose newest inbox rows retention deleted: migration
    18 starts the seq counter past the rows left and past the webhooks' cursors."""
    db = tmp_path / "relay.db"
    con = _database_at(db, 17)
    con.executemany(
        "INSERT INTO inbox (seq, mailbox, rid, delivered, acked) VALUES (?, ?, ?, ?, ?)",
        [(1, "alice", 1, 5, None), (2, "alice", 2, 5, 6), (4, "bob", 4, 5, None)],
    )
    con.execute("INSERT INTO webhook_state (mailbox, cursor) VALUES ('carol', 9)")
    con.commit()
    con.close()
    store = await open_store(db)
    try:
        got = await store.fetchall("SELECT seq, mailbox, rid, delivered, acked FROM inbox")
        assert [tuple(r) for r in got] == [
            (1, "alice", 1, 5, None),
            (2, "alice", 2, 5, 6),
            (4, "bob", 4, 5, None),
        ]
        await store.write(lambda tx: put_inbox_row(tx, "carol", 10))
        await store.write(lambda tx: sqlite_tx(tx).execute("DELETE FROM inbox WHERE rid = 10"))
        await store.write(lambda tx: put_inbox_row(tx, "dave", 11))
        seqs = await store.fetchall("SELECT mailbox, seq FROM inbox WHERE rid > 4")
        assert [tuple(r) for r in seqs] == [("dave", 11)]  # 10 went to carol's row
        names = {r[1] for r in await store.fetchall("PRAGMA index_list(inbox)")}
        assert names == {"inbox_once", "inbox_unacked"}
    finally:
        await store.close()


async def test_no_head_witnessed_before_migration_19_is_pruned(tmp_path: Path) -> None:
    """A database at version 18 did not record which heads conflicted or shrank:
    migration 19 keeps every head it had as evidence (docs/audit.md)."""
    db = tmp_path / "relay.db"
    con = _database_at(db, 18)
    con.executemany(
        "INSERT INTO audit_witnessed (peer, size, at, head, seen, proof_from, proof)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        [(p, size, at, head, at, f, proof) for p, size, at, head, f, proof in PRE_EVIDENCE_HEADS],
    )
    con.commit()
    con.close()
    store = await open_store(db)
    try:
        await pre_evidence_heads_stay(store)
    finally:
        await store.close()


async def test_the_witnessed_heads_prune_reads_no_table_whole(tmp_path: Path) -> None:
    """The retention job's prune runs in the writer: every look-up it makes goes
    through an index (candidates by seen, evidence and forked proofs by peer)."""
    store = await open_store(tmp_path / "relay.db")
    try:
        plan = await store.fetchall(f"EXPLAIN QUERY PLAN {_PRUNE_WITNESSED}", (T0, 10))
        steps = [str(r[3]) for r in plan]
        assert not [s for s in steps if s.startswith("SCAN")], steps
        assert "SEARCH w USING INDEX audit_witnessed_seen (seen<?)" in steps
    finally:
        await store.close()


async def put_inbox_row(tx: WriteTx, mailbox: str, rid: int) -> None:
    await sqlite_tx(tx).execute(
        "INSERT INTO inbox (mailbox, rid, delivered) VALUES (?, ?, 7)", (mailbox, rid)
    )
