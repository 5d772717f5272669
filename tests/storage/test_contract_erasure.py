"""Storage contract, erasure (relay.storage.erasure): every backend erases alike.

Runs against every backend of relay.storage.backends.BACKENDS through the
interface only (tests/storage/contract.py).
"""

from __future__ import annotations

import os
from dataclasses import replace

import pytest

from relay.storage.erasure import (
    ERASED,
    HELD,
    EraseOrder,
    Erasure,
    ErasureTarget,
    StoredAnswer,
)
from relay.storage.interface import Storage, WriteTx
from relay.storage.records import Cutoffs, Recipient, RecipientStatus
from tests.storage.contract import DAY_MS, HERE, T0, envelope, new, put

NOW = T0 + 1000
BY_ADMIN = EraseOrder(source="admin", actor="admin", reason="court order 7", hold_ms=0)


async def erase(storage: Storage, targets: list[ErasureTarget], order: EraseOrder) -> list[Erasure]:
    async def job(tx: WriteTx) -> list[Erasure]:
        return await tx.erase(targets, order, NOW)

    return await storage.write(job)


async def find(storage: Storage, origin: str, ids: list[bytes]) -> list[ErasureTarget]:
    async def job(tx: WriteTx) -> list[ErasureTarget]:
        return await tx.erasable(origin, ids)

    return await storage.write(job)


async def test_erasure_takes_content_inbox_rows_and_leaves_a_tombstone(storage: Storage) -> None:
    body = b"the words to forget"
    env = envelope(payload=body, to=[f"bob@{HERE}", f"carol@{HERE}"])
    keep = envelope(payload=b"another message")
    (rid, _) = await put(
        storage, [new(env, mailboxes=["bob", "carol"]), new(keep, mailboxes=["bob"])]
    )
    # bob read it already, carol did not
    await storage.write(lambda tx: tx.ack_inbox("bob", [env.header.id], T0))
    # an unread message weighs its payload and its header
    kept = len(b"another message") + len(keep.header_bytes)
    assert await storage.unread_bytes(["bob", "carol"]) == {
        "bob": kept,
        "carol": len(body) + len(env.header_bytes),
    }

    before = [*await storage.inbox("bob", 0, 10), *await storage.inbox("carol", 0, 10)]
    top = max(i.seq for i in before)
    (target,) = await find(storage, "peer.test", [env.header.id])
    assert (target.rid, target.origin, target.id, target.has_content, target.erased) == (
        rid,
        "peer.test",
        env.header.id,
        True,
        None,
    )
    (rec,) = await erase(storage, [target], BY_ADMIN)
    assert (rec.status, rec.at, rec.done, rec.hold_until) == (ERASED, NOW, NOW, 0)
    assert (rec.source, rec.actor, rec.reason, rec.fresh) == (
        "admin",
        "admin",
        "court order 7",
        True,
    )
    assert rec.mailboxes == ("bob", "carol")

    # each mailbox gets one unread tombstone with no body; it weighs its header only
    for mb in ("bob", "carol"):
        items = [i for i in await storage.inbox(mb, 0, 10) if i.id == env.header.id]
        assert len(items) == 1 and items[0].payload is None and items[0].erased == NOW
    # tombstones come after every row there was: readers and webhooks page by seq
    after = [*await storage.inbox("bob", top, 10), *await storage.inbox("carol", top, 10)]
    assert sorted((i.id, i.erased) for i in after) == [(env.header.id, NOW)] * 2
    page = await storage.inbox_page("carol", 0, 10, 1 << 20)
    assert [(i.id, i.payload, i.erased) for i in page.items] == [(env.header.id, None, NOW)]
    assert await storage.unread_bytes(["bob", "carol"]) == {
        "bob": kept + len(env.header_bytes),
        "carol": len(env.header_bytes),
    }
    await storage.write(lambda tx: tx.ack_inbox("carol", [env.header.id], NOW))
    assert await storage.unread_bytes(["carol"]) == {"carol": 0}

    # the payload row is gone, the other message's is not
    counts = await storage.row_counts()
    assert counts["payloads"] == 1 and counts["erasures"] == 1 and counts["envelopes"] == 2
    assert await storage.erasure_records([("peer.test", env.header.id)]) == {
        ("peer.test", env.header.id): Erasure(
            "peer.test",
            env.header.id,
            ERASED,
            NOW,
            NOW,
            0,
            "admin",
            "admin",
            "court order 7",
            fresh=False,
        )
    }
    (d,) = await storage.decisions(env.header.id, None, 10)
    assert (d.point, d.outcome, d.rule, d.reason) == (
        "erase",
        ERASED,
        "",
        "admin admin: court order 7",
    )


async def test_tombstones_come_after_seqs_retention_took(storage: Storage) -> None:
    # the newest row is gone (retention) but its seq was handed out: an app
    # holding it as its cursor must still see the tombstone of an older message
    env, gone = envelope(payload=b"older"), envelope(payload=b"newest")
    _, rid_gone = await put(storage, [new(env, mailboxes=["bob"]), new(gone, mailboxes=["bob"])])
    cursor = max(i.seq for i in await storage.inbox("bob", 0, 10))
    await storage.write(lambda tx: tx.delete_envelopes([rid_gone]))
    await erase(storage, await find(storage, "peer.test", [env.header.id]), BY_ADMIN)
    after = await storage.inbox("bob", cursor, 10)
    assert [(i.id, i.erased) for i in after] == [(env.header.id, NOW)]


async def test_erasing_again_changes_nothing_and_returns_the_first_record(storage: Storage) -> None:
    env = envelope()
    await put(storage, [new(env, mailboxes=["bob"])])
    first = await erase(storage, await find(storage, "peer.test", [env.header.id]), BY_ADMIN)
    counts = await storage.row_counts()
    again = await erase(
        storage,
        await find(storage, "peer.test", [env.header.id]),
        EraseOrder("peer", "other.test", "", 0),
    )
    assert again == [replace(first[0], mailboxes=(), fresh=False)]
    assert await storage.row_counts() == counts


async def test_a_legal_hold_keeps_content_until_retention_clears_it(storage: Storage) -> None:
    env = envelope(payload=b"kept by law")
    (rid,) = await put(storage, [new(env, mailboxes=["bob"])], now=T0)
    hold = EraseOrder("admin", "admin", "subject request", hold_ms=30 * DAY_MS)
    (rec,) = await erase(storage, await find(storage, "peer.test", [env.header.id]), hold)
    assert (rec.status, rec.done, rec.hold_until) == (HELD, 0, T0 + 30 * DAY_MS)
    # the recipient no longer sees the content, though the node still holds it
    (item,) = await storage.inbox("bob", 0, 10)
    assert item.payload is None and item.erased == NOW
    assert (await storage.row_counts())["payloads"] == 1
    (d,) = await storage.decisions(env.header.id, None, 10)
    assert (d.outcome, d.rule) == (HELD, "retention.content_min_days")

    async def settle(tx: WriteTx) -> list[Erasure]:
        return await tx.settle_erasures(NOW + 1, 100)

    assert await storage.write(settle) == []  # nothing cleared yet
    # retention's discard path clears it once the minimum passed
    later = T0 + 31 * DAY_MS
    cut = Cutoffs(now=later, cmax=0, cmin=later - 30 * DAY_MS, mmax=0, mmin=0, expired=0)

    async def purge(tx: WriteTx) -> list[int]:
        due, _ = await tx.content_due(cut, 100)
        await tx.clear_content([c.rid for c in due])
        await tx.drop_unreferenced_payloads([c.payload_sha for c in due])
        return [c.rid for c in due]

    assert await storage.write(purge) == [rid]
    (done,) = await storage.write(settle)
    assert (done.status, done.done, done.hold_until, done.fresh) == (
        ERASED,
        NOW + 1,
        rec.hold_until,
        True,
    )
    recs = await storage.erasure_records([("peer.test", env.header.id)])
    assert recs[("peer.test", env.header.id)].status == ERASED


async def test_a_queued_message_is_dequeued_and_its_recipients_end(storage: Storage) -> None:
    env = envelope(origin=HERE, to=["x@far.test"], dest="far.test")
    (rid,) = await put(storage, [new(env, hop="far.test", from_peer=None)])
    msg = env.header.id

    async def recipients(tx: WriteTx) -> None:
        await tx.add_recipients([Recipient(msg, "x@far.test", rid, "alice", "queued", T0)])

    await storage.write(recipients)
    (t,) = await find(storage, HERE, [msg])
    assert t.hop == "far.test" and t.sender == f"alice@{HERE}" and t.dest == "far.test"
    await erase(storage, [t], EraseOrder("mailbox", "alice", "", 0))
    assert await storage.queue_length() == 0
    assert await storage.recipient_statuses(msg, "alice") == [
        RecipientStatus("x@far.test", "rejected", "erased", NOW)
    ]


async def test_erasable_finds_every_envelope_of_a_message_and_only_the_origins(
    storage: Storage,
) -> None:
    a = envelope(origin=HERE, to=["x@far.test"], dest="far.test")
    b = envelope(origin=HERE, to=["y@near.test"], dest="near.test")
    foreign = envelope(origin="peer.test", ident=a.header.id)
    rids = await put(
        storage,
        [
            new(a, hop="far.test", from_peer=None),
            new(b, hop="near.test", from_peer=None),
            new(foreign),
        ],
    )
    msg = a.header.id

    async def recipients(tx: WriteTx) -> None:
        await tx.add_recipients(
            [
                Recipient(msg, "x@far.test", rids[0], "alice", "queued", T0),
                Recipient(msg, "y@near.test", rids[1], "alice", "queued", T0),
            ]
        )

    await storage.write(recipients)
    # by message id: both envelopes; by the second envelope's own id: that one
    assert [t.rid for t in await find(storage, HERE, [msg])] == rids[:2]
    assert [t.rid for t in await find(storage, HERE, [b.header.id])] == [rids[1]]
    assert [t.rid for t in await find(storage, "peer.test", [msg])] == [rids[2]]
    assert await find(storage, "nobody.test", [msg]) == []
    # the reads find the same without the writer (status lookups after an erasure)
    for origin, ident in ((HERE, msg), (HERE, b.header.id), ("peer.test", msg)):
        assert await storage.message_envelopes(origin, ident) == await find(
            storage, origin, [ident]
        )
    assert await storage.message_envelopes("nobody.test", msg) == []

    # by envelope id alone, every origin's copy (not the message's other envelopes)
    async def copies(tx: WriteTx) -> list[tuple[int, str]]:
        return [(t.rid, t.origin) for t in await tx.envelope_copies(msg)]

    assert await storage.write(copies) == [(rids[0], HERE), (rids[2], "peer.test")]

    async def by_sender(tx: WriteTx) -> list[ErasureTarget]:
        return await tx.erasable_by_sender(HERE, f"alice@{HERE}", T0, T0 + 1, 10)

    assert [t.rid for t in await storage.write(by_sender)] == rids[:2]

    async def outside(tx: WriteTx) -> list[ErasureTarget]:
        return await tx.erasable_by_sender(HERE, f"alice@{HERE}", T0 + 1, T0 + 2, 10)

    assert await storage.write(outside) == []


async def test_erasure_requests_answers_origins_and_links(storage: Storage) -> None:
    msg = envelope(origin=HERE, to=["x@far.test"], dest="far.test")
    req = envelope(origin=HERE, to=["y@far.test"], dest="far.test", payload=b"request")
    rids = await put(
        storage,
        [new(msg, hop="far.test", from_peer=None), new(req, hop="far.test", from_peer=None)],
    )
    # the contract helper writes kind "message"; a request is found by kind, so none here
    assert await storage.erasure_requests([req.header.id]) == {}

    async def copies(tx: WriteTx) -> list[list[ErasureTarget]]:
        return [await tx.envelope_copies(i) for i in (msg.header.id, b"\x00" * 16)]

    assert [[t.rid for t in ts] for ts in await storage.write(copies)] == [[rids[0]], []]
    (t,) = await find(storage, HERE, [msg.header.id])
    await erase(storage, [t], BY_ADMIN)

    async def link(tx: WriteTx) -> None:
        await tx.link_requests([(HERE, msg.header.id, req.header.id)])

    await storage.write(link)
    recs = await storage.erasure_records([(HERE, msg.header.id)])
    assert recs[(HERE, msg.header.id)].request == req.header.id
    assert rids

    first = StoredAnswer(req.header.id, "far.test", 10, b"h1", b"s1", b"p1")
    older = StoredAnswer(req.header.id, "far.test", 5, b"h0", b"s0", b"p0")
    newer = StoredAnswer(req.header.id, "far.test", 20, b"h2", b"s2", b"p2")
    other = StoredAnswer(req.header.id, "near.test", 1, b"h3", b"s3", b"p3")

    async def save(a: StoredAnswer) -> bool:
        return await storage.write(lambda tx: tx.save_erasure_answer(a))

    assert await save(first) and not await save(older) and await save(newer) and await save(other)
    assert await storage.erasure_answers([req.header.id, b"\x01" * 16]) == {
        req.header.id: [newer, other]
    }


# --- set-based lookups and writes: one statement per chunk of ids ---------------------

# more ids than one statement takes (relay.storage.chunking.IN_CHUNK, 500), so every
# lookup below runs over several chunks; the stored ones stand in different chunks
MANY = 1_201


def among_absent(present: list[bytes]) -> list[bytes]:
    ids = [os.urandom(16) for _ in range(MANY)]
    for ident, at in zip(present, (0, 600, 1_200), strict=False):
        ids[at] = ident
    return [*ids, *present]  # named twice: found once


async def save_answer(storage: Storage, answer: StoredAnswer) -> bool:
    async def job(tx: WriteTx) -> bool:
        return await tx.save_erasure_answer(answer)

    return await storage.write(job)


async def test_lookups_by_many_ids_find_each_stored_one_once(storage: Storage) -> None:
    msgs = [envelope(origin=HERE, to=["x@far.test"], dest="far.test") for _ in range(3)]
    reqs = [envelope(origin=HERE, dest="far.test", kind="erasure") for _ in range(2)]
    rids = await put(storage, [new(e, hop="far.test", from_peer=None) for e in msgs + reqs])
    msg_ids = [e.header.id for e in msgs]
    req_ids = [e.header.id for e in reqs]

    assert [t.rid for t in await find(storage, HERE, among_absent(msg_ids))] == rids[:3]
    found = await storage.erasure_requests(among_absent(req_ids))
    assert sorted(found) == sorted(req_ids)
    assert [found[i].rid for i in req_ids] == rids[3:]
    assert [found[i].payload for i in req_ids] == [b"hello", b"hello"]
    assert all(found[i].queued and found[i].hop == "far.test" for i in req_ids)

    answers = [
        StoredAnswer(req_ids[1], "near.test", 2, b"h1", b"s1", b"p1"),
        StoredAnswer(req_ids[0], "near.test", 1, b"h0", b"s0", b"p0"),
        StoredAnswer(req_ids[1], "far.test", 3, b"h2", b"s2", b"p2"),
    ]
    for a in answers:
        assert await save_answer(storage, a)
    # by request, each request's answers by writer
    assert await storage.erasure_answers(among_absent(req_ids)) == {
        req_ids[0]: [answers[1]],
        req_ids[1]: [answers[2], answers[0]],
    }

    # the reads and the writer find the same
    async def in_tx(tx: WriteTx) -> tuple[object, object]:
        return await tx.erasure_requests(req_ids), await tx.erasure_answers(req_ids)

    assert await storage.write(in_tx) == (
        await storage.erasure_requests(req_ids),
        await storage.erasure_answers(req_ids),
    )


async def test_saving_an_answer_says_whether_it_is_the_one_kept(storage: Storage) -> None:
    req = os.urandom(16)
    kept = StoredAnswer(req, "far.test", 10, b"h1", b"s1", b"p1")

    assert await save_answer(storage, kept)
    assert await save_answer(storage, kept)  # the same answer again: it is the one kept
    assert not await save_answer(storage, replace(kept, header=b"other"))  # as new, another
    assert not await save_answer(storage, replace(kept, created=9, header=b"older"))
    assert await storage.erasure_answers([req]) == {req: [kept]}


async def test_links_and_settling_reach_every_erasure_named(
    storage: Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    msgs = [
        envelope(origin=HERE, payload=b"held %d" % i, to=["x@far.test"], dest="far.test")
        for i in range(5)
    ]
    await put(storage, [new(e, hop="far.test", from_peer=None) for e in msgs], now=T0)
    targets = await find(storage, HERE, [e.header.id for e in msgs])
    hold = EraseOrder("admin", "admin", "held", hold_ms=30 * DAY_MS)
    assert [r.status for r in await erase(storage, targets, hold)] == [HELD] * 5
    keys = [(HERE, e.header.id) for e in msgs]

    # many links, most naming no erasure; one pair named twice takes its last request
    links = [(HERE, os.urandom(16), os.urandom(16)) for _ in range(MANY)]
    links[3:3] = [(o, i, bytes([n]) * 16) for n, (o, i) in enumerate(keys)]
    links.append((*keys[0], b"\xee" * 16))
    await storage.write(lambda tx: tx.link_requests(links))
    recs = await storage.erasure_records(keys)
    assert [recs[k].request for k in keys] == [b"\xee" * 16] + [
        bytes([n]) * 16 for n in range(1, 5)
    ]

    later = T0 + 31 * DAY_MS
    cut = Cutoffs(now=later, cmax=0, cmin=later - 30 * DAY_MS, mmax=0, mmin=0, expired=0)

    async def purge(tx: WriteTx) -> None:
        due, _ = await tx.content_due(cut, 100)
        await tx.clear_content([c.rid for c in due])

    await storage.write(purge)
    # settled a few rows per statement, so several statements settle these five
    monkeypatch.setattr("relay.storage.chunking.IN_CHUNK", 2)
    settled = await storage.write(lambda tx: tx.settle_erasures(later, 100))
    assert sorted((r.origin, r.id) for r in settled) == sorted(keys)
    assert all((r.status, r.done, r.fresh) == (ERASED, later, True) for r in settled)
    recs = await storage.erasure_records(keys)
    assert all((recs[k].status, recs[k].done) == (ERASED, later) for k in keys)
    assert await storage.write(lambda tx: tx.settle_erasures(later + 1, 100)) == []
