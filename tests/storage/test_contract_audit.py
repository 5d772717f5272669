"""Storage contract, the audit log: entries appended in the same transaction as
what they record, numbered without gaps; tree heads and witnessed heads kept.

Runs against every backend of relay.storage.backends.BACKENDS through the
interface only (tests/storage/contract.py).
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from relay.errors import RelayError
from relay.protocol.audit import CONFIG, DECISION, PURGED, STORED, decode_entry
from relay.protocol.merkle import leaf_hash, root
from relay.storage.audit import (
    PROOF_CONSISTENT,
    PROOF_FORKED,
    AuditEvent,
    StoredHead,
    WitnessedHead,
)
from relay.storage.interface import Storage, WriteTx
from relay.storage.records import Counts, DecisionRecord
from tests.storage.contract import T0, envelope, new, put, readonly


def decision(env_id: bytes | None, outcome: str = "allow") -> DecisionRecord:
    return DecisionRecord(
        at=T0 + 1,
        point="accept",
        envelope=env_id,
        peer="peer.test",
        outcome=outcome,
        rule="rule-1",
        reason="",
        policy_hash="ab" * 8,
    )


async def test_stored_envelopes_decisions_and_purges_are_logged(storage: Storage) -> None:
    env = envelope()
    await put(storage, [new(env, mailboxes=["bob"])])
    await storage.write(lambda tx: tx.record_decisions([decision(env.header.id), decision(None)]))
    await storage.write(lambda tx: tx.record_purge(T0 + 2, "retention", Counts(envelopes=3)))
    await storage.write(
        lambda tx: tx.append_audit([AuditEvent(T0 + 3, CONFIG, {"policy": "cd" * 8})])
    )

    rows = await storage.audit_entries(0, 100)
    assert [r.seq for r in rows] == [0, 1, 2, 3, 4]
    assert [r.kind for r in rows] == [STORED, DECISION, DECISION, PURGED, CONFIG]
    assert all(r.leaf == leaf_hash(r.entry) for r in rows)
    stored = decode_entry(rows[0].entry)
    assert stored.seq == 0 and stored.at == T0
    assert stored.blob("envelope") == env.header.id
    assert stored.names("residency") == ("DE",)
    assert stored.text("from") == "peer.test"
    assert stored.text("origin") == "peer.test"
    assert stored.fields["local"] == 1
    assert decode_entry(rows[1].entry).text("outcome") == "allow"
    assert "envelope" not in decode_entry(rows[2].entry).fields
    assert decode_entry(rows[3].entry).fields["envelopes"] == 3
    assert await storage.audit_size() == 5
    assert await storage.audit_leaves(1, 3) == [rows[1].leaf, rows[2].leaf]
    assert await storage.audit_seqs(env.header.id) == [0, 1]
    assert await storage.audit_span(T0 + 1, T0 + 2) == (1, 4)
    assert await storage.audit_span(T0 + 10, T0 + 20) == (0, 0)


async def test_a_failed_job_leaves_no_entry_and_no_gap(storage: Storage) -> None:
    async def failing(tx: WriteTx) -> None:
        await tx.record_decisions([decision(None, "deny")])
        raise RelayError("the job fails after logging")

    async def fine(tx: WriteTx) -> None:
        await tx.record_decisions([decision(None)])

    results = await asyncio.gather(
        storage.write(fine), storage.write(failing), storage.write(fine), return_exceptions=True
    )
    assert isinstance(results[1], RelayError)
    rows = await storage.audit_entries(0, 100)
    assert [r.seq for r in rows] == [0, 1]
    assert [decode_entry(r.entry).text("outcome") for r in rows] == ["allow", "allow"]


async def test_many_jobs_of_one_commit_number_their_entries_in_order(storage: Storage) -> None:
    envs = [envelope() for _ in range(30)]
    await asyncio.gather(*(put(storage, [new(e)]) for e in envs))
    rows = await storage.audit_entries(0, 100)
    assert [r.seq for r in rows] == list(range(30))
    assert {decode_entry(r.entry).blob("envelope") for r in rows} == {e.header.id for e in envs}
    leaves = await storage.audit_leaves(0, 30)
    assert root(leaves) == root([r.leaf for r in rows])


async def test_tree_heads_keep_the_latest_per_size(storage: Storage) -> None:
    await storage.write(lambda tx: tx.save_tree_head(StoredHead(2, T0 + 10, b"two-a")))
    await storage.write(lambda tx: tx.save_tree_head(StoredHead(2, T0 + 5, b"older")))
    await storage.write(lambda tx: tx.save_tree_head(StoredHead(0, T0, b"zero")))
    await storage.write(lambda tx: tx.save_tree_head(StoredHead(2, T0 + 20, b"two-b")))
    assert await storage.tree_heads() == [
        StoredHead(0, T0, b"zero"),
        StoredHead(2, T0 + 20, b"two-b"),
    ]
    assert await storage.latest_tree_head() == StoredHead(2, T0 + 20, b"two-b")
    assert await storage.latest_tree_head(below=2) == StoredHead(0, T0, b"zero")
    assert await storage.latest_tree_head(below=0) is None


async def test_witnessed_heads_are_kept_once(storage: Storage) -> None:
    a = WitnessedHead("a.test", 3, T0, b"head-a3", T0 + 1)
    b = WitnessedHead("b.test", 1, T0, b"head-b1", T0 + 1)
    await storage.write(lambda tx: tx.save_witnessed([a, b]))
    await storage.write(lambda tx: tx.save_witnessed([a]))
    assert await storage.witnessed_heads(None) == [a, b]
    assert await storage.witnessed_heads("b.test") == [b]
    assert await storage.witnessed_heads("a.test", 3) == [a]
    assert await storage.witnessed_heads("a.test", 1) == []
    assert await storage.last_witnessed("c.test") is None


async def test_the_last_witnessed_head_is_the_largest_then_latest(storage: Storage) -> None:
    heads = [
        WitnessedHead("a.test", 7, T0 + 1, b"a7-1", T0),
        WitnessedHead("a.test", 9, T0, b"a9-0", T0),
        WitnessedHead("a.test", 9, T0 + 5, b"a9-5", T0),
        WitnessedHead("a.test", 4, T0 + 9, b"a4-9", T0),
        WitnessedHead("b.test", 20, T0, b"b20", T0),
    ]
    await storage.write(lambda tx: tx.save_witnessed(heads))
    assert await storage.last_witnessed("a.test") == heads[2]
    assert await storage.witnessed_heads("a.test", 9) == heads[1:3]


async def test_a_proof_outcome_fills_in_a_kept_head_once(storage: Storage) -> None:
    """A head kept unproven gets the outcome of a proof that came with it later; an
    outcome once kept is evidence and never changes."""
    a = WitnessedHead("a.test", 5, T0, b"head-a5", T0 + 1)
    await storage.write(lambda tx: tx.save_witnessed([a]))
    proven = replace(a, seen=T0 + 2, proof_from=3, proof=PROOF_CONSISTENT)
    await storage.write(lambda tx: tx.save_witnessed([proven]))
    forked = replace(a, seen=T0 + 3, proof_from=4, proof=PROOF_FORKED)
    await storage.write(lambda tx: tx.save_witnessed([forked, replace(a, seen=T0 + 4)]))
    (kept,) = await storage.witnessed_heads("a.test")
    assert (kept.seen, kept.proof_from, kept.proof) == (T0 + 1, 3, PROOF_CONSISTENT)
    b = WitnessedHead("a.test", 9, T0, b"head-a9", T0 + 1, 5, PROOF_FORKED)
    await storage.write(lambda tx: tx.save_witnessed([b]))
    assert (await storage.witnessed_heads("a.test"))[1] == b


async def test_old_witnessed_heads_go_but_the_latest_and_the_evidence_stay(
    storage: Storage,
) -> None:
    """prune_witnessed(before) deletes heads seen before `before`, except each peer's
    latest (the next head is compared with it) and every head that shows trouble: two
    roots of one size, a forked proof and the head it was from, a shrink: both heads
    of each pair, the later one naming the other's size in `evidence`."""
    old, cut = T0, T0 + 100

    def w(peer: str, size: int, seen: int, wire: bytes = b"", **kw: object) -> WitnessedHead:
        return WitnessedHead(peer, size, seen, wire or f"{peer}{size}".encode(), seen, **kw)  # type: ignore[arg-type]

    gone = [w("a.test", 1, old), w("a.test", 2, old + 1, proof_from=1, proof=PROOF_CONSISTENT)]
    kept = [
        w("a.test", 3, old + 2, b"a3-one"),  # two roots of size 3: a conflict
        w("a.test", 3, old + 3, b"a3-two", evidence=3),
        w("a.test", 4, old + 4),  # the forked proof below was from this one
        w("a.test", 5, old + 5, proof_from=4, proof=PROOF_FORKED, evidence=4),
        w("a.test", 8, old + 6),  # larger than the head seen after it: a shrink
        w("a.test", 7, old + 7, evidence=8),
        w("a.test", 9, cut, proof_from=8, proof=PROOF_CONSISTENT),  # not old enough
        w("b.test", 6, old),  # b's latest, however old
    ]
    gone += [w("b.test", 2, old), w("b.test", 5, old + 9)]
    await storage.write(lambda tx: tx.save_witnessed([*gone, *kept]))

    async def prune(tx: WriteTx) -> int:
        return await tx.prune_witnessed(cut, 2)

    assert [await storage.write(prune) for _ in range(3)] == [2, 2, 0]  # at most 2 a call
    key = lambda h: (h.peer, h.size, h.at)  # noqa: E731
    assert sorted(map(key, await storage.witnessed_heads(None))) == sorted(map(key, kept))


async def test_the_head_a_forked_conflict_was_proven_from_stays(storage: Storage) -> None:
    """A head that is both a conflict (its evidence names the other root) and a
    forked proof still keeps the head its proof was from."""
    old, cut = T0, T0 + 100
    heads = [
        WitnessedHead("a.test", 4, old, b"a4", old),
        WitnessedHead("a.test", 5, old + 1, b"a5-one", old + 1),
        WitnessedHead("a.test", 5, old + 2, b"a5-two", old + 2, 4, PROOF_FORKED, evidence=5),
        WitnessedHead("a.test", 9, old + 3, b"a9", old + 3),
    ]
    await storage.write(lambda tx: tx.save_witnessed(heads))

    async def prune(tx: WriteTx) -> int:
        return await tx.prune_witnessed(cut, 10)

    assert await storage.write(prune) == 0
    assert await storage.witnessed_heads("a.test") == heads


async def test_export_reads_envelopes_and_only_receipt_payloads(storage: Storage) -> None:
    env = envelope(payload=b"secret content")
    await put(storage, [new(env, mailboxes=["bob"])])
    (found,) = await storage.audit_envelopes([env.header.id, b"\x00" * 16])
    assert (found.header, found.signature, found.payload) == (
        env.header_bytes,
        env.signature,
        b"",
    )


@pytest.mark.parametrize("n", [1, 3])
async def test_a_readonly_open_sees_the_log(storage: Storage, n: int) -> None:
    await put(storage, [new(envelope()) for _ in range(n)])
    ro = await readonly(storage)
    try:
        assert await ro.audit_size() == n
        assert [r.seq for r in await ro.audit_entries(0, 10)] == list(range(n))
    finally:
        await ro.close()
