"""The purge job and content deletion paths against a real store (relay.node.retention).

Every test drives time by hand: `purge` and `drop_content` take `now`.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import msgpack
import pytest

from relay.config.model import DAY_MS, RetentionConfig
from relay.node.retention import EXPIRY_MARGIN_MS, Counts, drop_content, preview, purge
from relay.protocol.envelope import Envelope
from relay.storage.erasure import ERASED, HELD, EraseOrder, Erasure
from relay.storage.interface import WriteTx
from relay.storage.records import DecisionRecord, NewEnvelope, Recipient
from relay.storage.sqlite.store import (
    MIGRATIONS,
    SCHEMA_VERSION,
    Store,
    open_readonly,
    open_store,
    sqlite_tx,
)
from tests.storage.contract import HERE, T0, envelope


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await open_store(tmp_path / "relay.db")
    try:
        yield s
    finally:
        await s.close()


async def put(
    store: Store,
    env: Envelope,
    received: int,
    *,
    from_peer: str | None = "peer.test",
    hop: str | None = None,
    mailboxes: Sequence[str] = ("bob",),
    recipients: bool = False,
) -> int:
    """Store `env` as received at `received`; with `recipients`, as sent from here."""

    async def job(tx: WriteTx) -> int:
        item = NewEnvelope(
            env=env,
            trace=(env.header.origin,) if from_peer else (),
            from_peer=from_peer,
            hop=hop,
            mailboxes=tuple(mailboxes),
        )
        (rid,) = await tx.insert_envelopes([item], received)
        if recipients:
            status = "queued" if hop else "delivered"
            await tx.add_recipients(
                [Recipient(env.header.id, a, rid, "alice", status, received) for a in env.header.to]
            )
        return rid

    return await store.write(job)


async def one(store: Store, sql: str, *params: object) -> sqlite3.Row:
    row = await store.fetchone(sql, params)
    assert row is not None, sql
    return row


async def has_content(store: Store, rid: int) -> bool:
    row = await one(
        store,
        "SELECT e.payload_sha IS NOT NULL AND p.sha IS NOT NULL FROM envelopes e"
        " LEFT JOIN payloads p ON p.sha = e.payload_sha WHERE e.rid = ?",
        rid,
    )
    return bool(row[0])


async def exists(store: Store, rid: int) -> bool:
    return await store.fetchone("SELECT 1 FROM envelopes WHERE rid = ?", (rid,)) is not None


async def purges(store: Store) -> list[tuple[object, ...]]:
    rows = await store.fetchall(
        "SELECT at, source, contents, payloads, payload_bytes, ended, envelopes, inbox,"
        " recipients, decisions FROM purges ORDER BY seq"
    )
    return [tuple(r) for r in rows]


def retention(
    content_min: int = 0, content_max: int = 10, metadata_min: int = 0, metadata_max: int = 100
) -> RetentionConfig:
    return RetentionConfig(content_min, content_max, metadata_min, metadata_max)


# --- content -------------------------------------------------------------------------


async def test_content_past_max_is_deleted_and_younger_content_kept(store: Store) -> None:
    old = await put(store, envelope(payload=b"old message"), T0)
    young = await put(store, envelope(payload=b"young"), T0 + 5 * DAY_MS)
    r = retention(content_max=10)

    assert await purge(store, r, HERE, T0 + 10 * DAY_MS - 1) == Counts()
    assert await purges(store) == []

    now = T0 + 10 * DAY_MS
    counts = await purge(store, r, HERE, now)
    assert counts == Counts(contents=1, payloads=1, payload_bytes=len(b"old message"))
    assert not await has_content(store, old)
    assert await has_content(store, young)
    # metadata stays: only content was past its maximum
    assert await exists(store, old)
    assert (await one(store, "SELECT count(*) FROM inbox"))[0] == 2
    assert await purges(store) == [(now, "job", 1, 1, len(b"old message"), 0, 0, 0, 0, 0)]
    # a second run finds nothing and records nothing
    assert await purge(store, r, HERE, now) == Counts()
    assert len(await purges(store)) == 1


async def test_shared_payload_stays_while_a_younger_copy_references_it(store: Store) -> None:
    body = b"the same bytes twice"
    old = await put(store, envelope(payload=body), T0)
    young = await put(store, envelope(payload=body), T0 + 8 * DAY_MS)
    counts = await purge(store, retention(content_max=10), HERE, T0 + 10 * DAY_MS)
    assert counts == Counts(contents=1)
    assert not await has_content(store, old)
    assert await has_content(store, young)
    counts = await purge(store, retention(content_max=10), HERE, T0 + 18 * DAY_MS)
    assert counts == Counts(contents=1, payloads=1, payload_bytes=len(body))
    assert (await one(store, "SELECT count(*) FROM payloads"))[0] == 0


async def test_content_under_min_is_kept_even_when_acked_and_discarded(store: Store) -> None:
    r = retention(content_min=30, content_max=60)
    rid = await put(store, envelope(payload=b"legal hold"), T0)

    async def ack(tx: WriteTx) -> None:
        await sqlite_tx(tx).execute("UPDATE inbox SET acked = ? WHERE rid = ?", (T0 + DAY_MS, rid))

    await store.write(ack)
    # a deletion path (re-check) asks for the content to go a day later: it only marks it
    counts = await store.write(lambda tx: drop_content(tx, [rid], r, T0 + DAY_MS, source="recheck"))
    assert counts == Counts()
    assert await has_content(store, rid)
    assert (await one(store, "SELECT discard FROM envelopes WHERE rid = ?", rid))[0] == 1
    assert await purge(store, r, HERE, T0 + 30 * DAY_MS - 1) == Counts()
    assert await has_content(store, rid)
    assert await purges(store) == []

    # once the minimum has passed, the purge job deletes what was marked
    counts = await purge(store, r, HERE, T0 + 30 * DAY_MS)
    assert counts == Counts(contents=1, payloads=1, payload_bytes=len(b"legal hold"))
    assert not await has_content(store, rid)
    assert [p[1] for p in await purges(store)] == ["job"]


async def test_deletion_path_past_min_deletes_at_once_and_records_it(store: Store) -> None:
    r = retention(content_min=1, content_max=60)
    rid = await put(store, envelope(payload=b"go now"), T0)
    now = T0 + 2 * DAY_MS
    counts = await store.write(lambda tx: drop_content(tx, [rid], r, now, source="recheck"))
    assert counts == Counts(contents=1, payloads=1, payload_bytes=6)
    assert not await has_content(store, rid)
    assert await purges(store) == [(now, "recheck", 1, 1, 6, 0, 0, 0, 0, 0)]


async def test_queued_envelope_past_content_max_ends_as_expired(store: Store) -> None:
    r = retention(content_max=1, metadata_max=100)
    mine = envelope(origin=HERE, to=["carol@far.test"], dest="far.test", expires=T0 + 20 * DAY_MS)
    mine_rid = await put(
        store, mine, T0, from_peer=None, hop="far.test", mailboxes=(), recipients=True
    )
    relayed = envelope(to=["carol@far.test"], dest="far.test", expires=T0 + 20 * DAY_MS)
    relayed_rid = await put(store, relayed, T0, hop="far.test", mailboxes=())

    counts = await purge(store, r, HERE, T0 + DAY_MS)
    assert counts.ended == 2 and counts.contents == 2
    assert (await one(store, "SELECT count(*) FROM queue"))[0] == 0
    status = await one(store, "SELECT status, reason FROM recipients WHERE rid = ?", mine_rid)
    assert tuple(status) == ("expired", "retention")
    receipt = await one(
        store, "SELECT origin, status, reason, id, recipients FROM pending_receipts"
    )
    assert tuple(receipt[:4]) == ("peer.test", "expired", "retention", relayed.header.id)
    assert msgpack.unpackb(receipt[4]) == ["carol@far.test"]
    assert await exists(store, relayed_rid)


# --- metadata --------------------------------------------------------------------------


async def test_dedupe_rows_outlive_expires(store: Store) -> None:
    r = retention(content_max=1, metadata_max=1)
    expires = T0 + 20 * DAY_MS
    env = envelope(expires=expires)
    rid = await put(store, env, T0)

    counts = await purge(store, r, HERE, T0 + 2 * DAY_MS)
    assert counts == Counts(contents=1, payloads=1, payload_bytes=5)
    assert await exists(store, rid)  # still the dedupe record: the envelope has not expired

    async def seen(tx: WriteTx) -> dict[tuple[str, bytes], bytes]:
        return await tx.existing_digests([(env.header.origin, env.header.id)])

    assert await store.write(seen)
    assert await purge(store, r, HERE, expires + EXPIRY_MARGIN_MS - 1) == Counts()
    assert await exists(store, rid)

    now = expires + EXPIRY_MARGIN_MS
    counts = await purge(store, r, HERE, now)
    assert counts == Counts(envelopes=1, inbox=1)
    assert not await exists(store, rid)
    assert not await store.write(seen)
    assert (await purges(store))[-1] == (now, "job", 0, 0, 0, 0, 1, 1, 0, 0)


async def test_metadata_waits_for_content_minimum(store: Store) -> None:
    # metadata_max below content_min: the envelope row (which holds the
    # reference to the content) must stay until the content minimum passed.
    r = retention(content_min=10, content_max=20, metadata_max=2)
    rid = await put(store, envelope(expires=T0 + DAY_MS), T0)
    assert await purge(store, r, HERE, T0 + 5 * DAY_MS) == Counts()
    assert await has_content(store, rid)
    counts = await purge(store, r, HERE, T0 + 10 * DAY_MS)
    assert counts == Counts(envelopes=1, inbox=1, payloads=1, payload_bytes=5)
    assert not await exists(store, rid)


async def test_origin_metadata_and_old_decisions_go(store: Store) -> None:
    r = retention(content_max=1, metadata_max=3)
    env = envelope(origin=HERE, to=["carol@far.test"], dest="far.test")
    rid = await put(store, env, T0, from_peer=None, mailboxes=(), recipients=True)

    async def decide(tx: WriteTx) -> None:
        await tx.record_decisions(
            [
                DecisionRecord(
                    at=at,
                    point="submit",
                    envelope=env.header.id,
                    peer="far.test",
                    outcome="deny",
                    rule="builtin:dest_jurisdiction",
                    reason="test",
                    policy_hash="0" * 16,
                )
                for at in (T0, T0 + 5 * DAY_MS)
            ]
        )

    await store.write(decide)
    counts = await purge(store, r, HERE, T0 + 3 * DAY_MS)
    assert counts == Counts(
        contents=1, payloads=1, payload_bytes=5, envelopes=1, recipients=1, decisions=1
    )
    assert not await exists(store, rid)
    left = await store.fetchall("SELECT at FROM decisions")
    assert [row[0] for row in left] == [T0 + 5 * DAY_MS]


# --- preview -----------------------------------------------------------------------------


async def test_preview_says_exactly_what_purge_then_does(tmp_path: Path, store: Store) -> None:
    r = retention(content_min=2, content_max=5, metadata_max=8)
    shared = b"shared"
    rids = [
        await put(store, envelope(payload=shared), T0),
        await put(store, envelope(payload=shared), T0 + 4 * DAY_MS),
        await put(store, envelope(payload=b"young"), T0 + 7 * DAY_MS),
        await put(store, envelope(payload=b"x", expires=T0 + 2 * DAY_MS), T0 - 3 * DAY_MS),
        await put(
            store,
            envelope(origin=HERE, to=["c@far.test"], dest="far.test", expires=T0 + 9 * DAY_MS),
            T0,
            from_peer=None,
            hop="far.test",
            mailboxes=(),
            recipients=True,
        ),
    ]
    await store.write(lambda tx: drop_content(tx, [rids[2]], r, T0 + 7 * DAY_MS, source="t"))
    now = T0 + 9 * DAY_MS + DAY_MS // 2
    reads = await open_readonly(store.path)
    try:
        assert reads.schema_version == SCHEMA_VERSION
        before = await preview(reads, r, now, limit=2)
    finally:
        await reads.close()
    counts = await purge(store, r, HERE, now)
    assert before.counts == counts
    # all five lose their content (the young one was marked and is past its
    # minimum), the queued one ends, three are old and expired enough to go
    assert (counts.contents, counts.payloads, counts.ended, counts.envelopes) == (5, 4, 1, 3)
    assert len(before.content) == 2  # listed up to the limit, counted in full
    assert {d.why for d in before.content} == {"content_max"}
    assert [d.why for d in before.metadata] == ["metadata_max", "metadata_max"]
    later = await store.fetchall("SELECT rid FROM envelopes ORDER BY rid")
    assert [row[0] for row in later] == [rids[1], rids[2]]


async def test_version_1_database_migrates(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.executescript(MIGRATIONS[1])
    db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    db.execute("INSERT INTO schema_version VALUES (1)")
    db.commit()
    db.close()
    s = await open_store(path)
    try:
        assert (await one(s, "SELECT max(version) FROM schema_version"))[0] == SCHEMA_VERSION
        assert (await s.row_counts())["purges"] == 0
        assert await purge(s, retention(), HERE, T0) == Counts()
    finally:
        await s.close()


async def test_large_purges_go_in_chunks(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("relay.node.retention.CHUNK", 2)
    rids = [await put(store, envelope(payload=b"m%d" % i), T0) for i in range(5)]
    counts = await purge(store, retention(content_max=1, metadata_max=1), HERE, T0 + 3 * DAY_MS)
    assert counts == Counts(contents=5, payloads=5, payload_bytes=10, envelopes=5, inbox=5)
    assert not any([await exists(store, rid) for rid in rids])
    rows = await purges(store)
    assert len(rows) >= 3  # one row per transaction, each with its own counts
    assert sum(int(str(r[2])) for r in rows) == 5


# --- held erasures -------------------------------------------------------------------


async def test_only_the_node_settles_a_held_erasure_so_the_asker_is_always_answered(
    store: Store,
) -> None:
    env = envelope(payload=b"kept by law")
    rid = await put(store, env, T0)
    hold = EraseOrder("peer", "peer.test", "", hold_ms=30 * DAY_MS)

    async def erase(tx: WriteTx) -> list[Erasure]:
        return await tx.erase(await tx.erasable("peer.test", [env.header.id]), hold, T0 + 1)

    (rec,) = await store.write(erase)
    assert rec.status == HELD
    r = retention(content_min=30, content_max=40, metadata_max=100)
    later = T0 + 31 * DAY_MS
    key = ("peer.test", env.header.id)

    # `relay purge` (no on_settled): the held content goes, the record stays held
    counts = await purge(store, r, HERE, later, source="admin")
    assert counts.contents == 1 and not await has_content(store, rid)
    assert (await store.erasure_records([key]))[key].status == HELD

    # the node's purge job settles it and hands it to whoever answers the asker
    told: list[Erasure] = []

    async def on_settled(tx: WriteTx, recs: list[Erasure], now: int) -> None:
        told.extend(recs)

    await purge(store, r, HERE, later + 1, on_settled=on_settled)
    assert [(e.origin, e.id, e.status, e.done) for e in told] == [(*key, ERASED, later + 1)]
    assert (await store.erasure_records([key]))[key].status == ERASED
