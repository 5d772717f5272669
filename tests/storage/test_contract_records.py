"""Storage contract, part 2: nonces, batches, idempotency, receipts, peers, inbox,
decisions, certificates and retention.

Runs against every backend of relay.storage.backends.BACKENDS through the
interface only (tests/storage/contract.py).
"""

from __future__ import annotations

import os
from dataclasses import replace

import pytest

from relay.errors import RelayError
from relay.protocol.envelope import RECEIPT_CTYPE, Envelope, make_header, seal
from relay.protocol.receipt import Receipt, decode_receipt, encode_receipt
from relay.storage.interface import Storage, WriteTx
from relay.storage.records import (
    CertificateRecord,
    Counts,
    Cutoffs,
    DecisionRecord,
    Deleted,
    InboxPage,
    PeerState,
    PendingReceipt,
    Recipient,
    TraceRows,
    WebhookFailure,
)
from tests.storage.contract import DAY_MS, HERE, KEY, KEY_ID, T0, envelope, new, put

# --- federation requests --------------------------------------------------------------


async def test_nonces_batches_and_prune(storage: Storage) -> None:
    assert await storage.write(lambda tx: tx.record_nonce("p.test", "n1", T0))
    assert not await storage.write(lambda tx: tx.record_nonce("p.test", "n1", T0 + 5))  # replay
    assert await storage.write(lambda tx: tx.record_nonce("q.test", "n1", T0))  # per peer
    assert await storage.nonce_seen("p.test", "n1")
    assert not await storage.nonce_seen("p.test", "n2")

    results = {b"\x01" * 16: "accepted", b"\x02" * 16: "rejected:residency"}
    await storage.write(lambda tx: tx.record_batch("p.test", b"B" * 16, results, T0))
    # a batch id is answered once: a second record keeps the first results
    await storage.write(lambda tx: tx.record_batch("p.test", b"B" * 16, {}, T0))
    assert await storage.stored_results("p.test", b"B" * 16) == results
    assert await storage.write(lambda tx: tx.stored_results("p.test", b"B" * 16)) == results
    assert await storage.stored_results("q.test", b"B" * 16) is None

    await storage.write(lambda tx: tx.remember_answer("alice", "k", {"id": "x"}, T0))
    await storage.write(lambda tx: tx.prune(T0 + 1, T0 + 1, T0))
    assert not await storage.nonce_seen("p.test", "n1")
    assert await storage.stored_results("p.test", b"B" * 16) is None
    assert await storage.idempotent_answer("alice", "k") == {"id": "x"}  # not older than T0
    await storage.write(lambda tx: tx.prune(T0 + 1, T0 + 1, T0 + 1))
    assert await storage.idempotent_answer("alice", "k") is None


async def test_idempotent_answers(storage: Storage) -> None:
    first = {"ids": ["aa", "bb"]}
    assert await storage.write(lambda tx: tx.remember_answer("alice", "k\nmessage:1", first, T0))
    again = {"ids": ["cc"]}
    assert not await storage.write(
        lambda tx: tx.remember_answer("alice", "k\nmessage:1", again, T0)
    )
    assert await storage.idempotent_answer("alice", "k\nmessage:1") == first
    assert await storage.write(lambda tx: tx.idempotent_answer("alice", "k\nmessage:1")) == first
    assert await storage.idempotent_answer("bob", "k\nmessage:1") is None
    assert await storage.key_used("alice", "k")
    assert not await storage.key_used("alice", "kk")
    assert not await storage.key_used("bob", "k")


# --- receipts and peers ---------------------------------------------------------------


async def test_pending_receipts_come_back_in_order_and_go(storage: Storage) -> None:
    receipts = [
        PendingReceipt("o.test", "delivered", "", "DE", bytes([i]) * 16, (f"u{i}@o.test",))
        for i in range(3)
    ]
    await storage.write(lambda tx: tx.add_pending_receipts(receipts, T0))
    got = await storage.write(lambda tx: tx.pending_receipts(2))
    assert [(r.id, r.recipients) for r in got] == [(x.id, x.recipients) for x in receipts[:2]]
    assert got[0].seq < got[1].seq
    await storage.write(lambda tx: tx.delete_pending_receipts([got[0].seq]))
    left = await storage.write(lambda tx: tx.pending_receipts(10))
    assert [r.id for r in left] == [receipts[1].id, receipts[2].id]


async def test_peer_state_round_trip_and_backoff_clear(storage: Storage) -> None:
    assert await storage.peer_state("b.test") == PeerState()
    assert not await storage.write(lambda tx: tx.has_peer_state("b.test"))
    st = PeerState(failures=3, next_try=T0 + 60_000, last_error="HTTP 503", last_ok=T0, delivered=7)
    await storage.write(lambda tx: tx.save_peer_state("b.test", st))
    assert await storage.peer_state("b.test") == st
    assert await storage.write(lambda tx: tx.has_peer_state("b.test"))
    await storage.write(lambda tx: tx.clear_backoff(["b.test", "nobody.test"]))
    cleared = await storage.peer_state("b.test")
    assert cleared == PeerState(3, 0, "HTTP 503", T0, 7)  # failures stay counted
    assert await storage.peer_states() == {"b.test": cleared}


# --- inbox and webhooks ---------------------------------------------------------------


async def test_inbox_ack_and_webhook_cursor(storage: Storage) -> None:
    envs = [envelope(payload=f"m{i}".encode()) for i in range(3)]
    await put(
        storage, [new(e, mailboxes=["bob"]) for e in envs] + [new(envelope(), mailboxes=["carol"])]
    )
    items = await storage.inbox("bob", 0, 10)
    assert [i.id for i in items] == [e.header.id for e in envs]
    assert items[0].payload == b"m0" and items[0].header == envs[0].header_bytes
    assert items[0].residency == "DE"
    assert [i.seq for i in await storage.inbox("bob", items[0].seq, 1)] == [items[1].seq]
    assert await storage.unacked_counts() == {"bob": 3, "carol": 1}

    acked = await storage.write(lambda tx: tx.ack_inbox("bob", [envs[0].header.id] * 2, T0))
    assert acked == 1
    assert await storage.write(lambda tx: tx.ack_inbox("carol", [envs[1].header.id], T0)) == 0
    await storage.write(lambda tx: tx.ack_inbox_seqs([items[1].seq], T0))
    assert [i.id for i in await storage.inbox("bob", 0, 10)] == [envs[2].header.id]

    assert await storage.webhook_cursor("bob") == 0
    await storage.write(lambda tx: tx.webhook_failure("bob", WebhookFailure(2, T0 + 5, "HTTP 500")))
    await storage.write(lambda tx: tx.webhook_advance("bob", items[1].seq, 1))
    await storage.write(lambda tx: tx.webhook_advance("bob", items[0].seq, 1))  # never back
    assert await storage.webhook_cursor("bob") == items[1].seq


async def test_an_ack_by_ids_counts_and_weighs_each_row_it_acks_once(storage: Storage) -> None:
    envs = [envelope(payload=bytes([i]) * (10 * (i + 1))) for i in range(4)]
    s = [e.header.size + len(e.header_bytes) for e in envs]
    await put(storage, [new(e, mailboxes=["bob", "carol"]) for e in envs])
    ids = [e.header.id for e in envs]
    assert await storage.write(lambda tx: tx.ack_inbox("bob", [ids[0]], T0)) == 1
    # repeated, already acked, unknown here, and two fresh ones in one ack
    mixed = [ids[1], ids[0], b"\x07" * 16, ids[2], ids[1]]
    assert await storage.write(lambda tx: tx.ack_inbox("bob", mixed, T0)) == 2
    assert await storage.unread_bytes(["bob", "carol"]) == {"bob": s[3], "carol": sum(s)}
    assert [i.id for i in await storage.inbox("bob", 0, 10)] == [ids[3]]
    assert len(await storage.inbox("carol", 0, 10)) == 4  # the other mailbox's rows untouched
    assert await storage.write(lambda tx: tx.ack_inbox("bob", [b"\x07" * 16], T0)) == 0
    assert await storage.unread_bytes(["bob"]) == {"bob": s[3]}


async def test_inbox_page_stops_at_the_byte_budget(storage: Storage) -> None:
    envs = [envelope(payload=bytes([i]) * n) for i, n in enumerate([40, 30, 30, 100, 5])]
    await put(storage, [new(e, mailboxes=["bob"]) for e in envs])
    ids = [e.header.id for e in envs]

    page = await storage.inbox_page("bob", 0, 10, 100)
    assert [i.id for i in page.items] == ids[:3] and page.more  # 40+30+30 = 100, +100 over
    assert page.items[2].payload == bytes([2]) * 30
    after = page.items[-1].seq
    big = await storage.inbox_page("bob", after, 10, 50)
    assert [i.id for i in big.items] == [ids[3]] and big.more  # alone over the budget: still read
    last = await storage.inbox_page("bob", big.items[0].seq, 10, 50)
    assert [i.id for i in last.items] == [ids[4]] and not last.more
    by_count = await storage.inbox_page("bob", 0, 2, 10**6)
    assert [i.id for i in by_count.items] == ids[:2] and by_count.more
    assert (await storage.inbox_page("bob", 0, 10, 10**6)).more is False
    assert await storage.inbox_page("carol", 0, 10, 100) == InboxPage([], more=False)


async def test_inbox_seqs_are_never_handed_out_twice(storage: Storage) -> None:
    # an app pages GET /v1/inbox "after seq N": once retention has deleted the
    # newest rows, a new message must still get a seq past every one there was,
    # or an app holding N would skip it
    old = [envelope(payload=f"old{i}".encode()) for i in range(3)]
    rids = await put(storage, [new(e, mailboxes=["bob"]) for e in old])
    cursor = max(i.seq for i in await storage.inbox("bob", 0, 10))
    await storage.write(lambda tx: tx.delete_envelopes(rids))
    assert await storage.inbox("bob", 0, 10) == []

    fresh = envelope(payload=b"fresh")
    await put(storage, [new(fresh, mailboxes=["bob"])])
    page = await storage.inbox_page("bob", cursor, 10, 1 << 20)
    assert [i.id for i in page.items] == [fresh.header.id]
    assert page.items[0].seq > cursor


async def test_unread_bytes_follow_delivery_ack_and_deletion(storage: Storage) -> None:
    envs = [envelope(payload=bytes([i]) * (10 * (i + 1))) for i in range(4)]  # 10 20 30 40
    # an unread message counts its header as well as its payload
    s = [e.header.size + len(e.header_bytes) for e in envs]
    assert s[0] > 10 and s[1] - s[0] == 10
    rids = await put(storage, [new(e, mailboxes=["bob", "carol"]) for e in envs[:3]])
    rids += await put(storage, [new(envs[3], mailboxes=["bob"])])
    assert await storage.unread_bytes(["bob", "carol", "dave"]) == {
        "bob": sum(s),
        "carol": sum(s[:3]),
        "dave": 0,
    }
    assert await storage.write(lambda tx: tx.unread_bytes(["bob"])) == {"bob": sum(s)}

    await storage.write(lambda tx: tx.ack_inbox("bob", [envs[0].header.id], T0))
    await storage.write(lambda tx: tx.ack_inbox("bob", [envs[0].header.id], T0))  # no twice
    seq = (await storage.inbox("carol", 0, 1))[0].seq
    await storage.write(lambda tx: tx.ack_inbox_seqs([seq], T0))
    assert await storage.unread_bytes(["bob", "carol"]) == {
        "bob": sum(s[1:]),
        "carol": s[1] + s[2],
    }

    # deleting an acked row changes nothing, an unacked one takes its bytes away
    await storage.write(lambda tx: tx.delete_envelopes([rids[0], rids[3]]))
    assert await storage.unread_bytes(["bob", "carol"]) == {
        "bob": s[1] + s[2],
        "carol": s[1] + s[2],
    }


async def _recount(storage: Storage, mailboxes: list[str]) -> dict[str, int]:
    """The unread weight of each mailbox, summed from its unacked rows (payload + header)."""
    return {
        mb: sum(len(it.header) + len(it.payload or b"") for it in await storage.inbox(mb, 0, 1000))
        for mb in mailboxes
    }


async def test_unread_bytes_stay_exact_through_batches_repeats_and_rollbacks(
    storage: Storage,
) -> None:
    """The counter is kept per batch of rows, not per row: a batch with a mailbox named
    twice, ids that two origins share, acks repeated or of rows already acked, and a job
    that rolls back all leave it equal to a recount of the unacked rows."""
    mbs = ["bob", "carol", "dave"]
    shared = os.urandom(16)
    one = envelope(payload=b"1" * 11)
    twins = [envelope(origin=o, ident=shared, payload=b"2" * 22) for o in ("p.test", "q.test")]
    other = envelope(payload=b"3" * 33)
    await put(
        storage, [new(one, mailboxes=["bob", "bob", "carol"]), new(twins[0], mailboxes=["bob"])]
    )
    rids = await put(
        storage, [new(twins[1], mailboxes=["bob", "dave"]), new(other, mailboxes=["carol"])]
    )
    counted = await storage.unread_bytes(mbs)
    assert counted == await _recount(storage, mbs)
    assert counted["bob"] == sum(e.header.size + len(e.header_bytes) for e in (one, *twins))

    async def ack_then_fail(tx: WriteTx) -> None:
        await tx.ack_inbox("bob", [one.header.id], T0)
        raise RelayError("rolled back on purpose")

    with pytest.raises(RelayError):
        await storage.write(ack_then_fail)
    assert await storage.unread_bytes(mbs) == counted

    # one id, two origins: both of bob's rows go, dave's stays
    assert await storage.write(lambda tx: tx.ack_inbox("bob", [shared, shared], T0)) == 2
    seqs = [it.seq for mb in ("carol", "dave") for it in await storage.inbox(mb, 0, 10)]
    bob_seq = (await storage.inbox("bob", 0, 10))[0].seq
    await storage.write(lambda tx: tx.ack_inbox_seqs([seqs[0], seqs[0], bob_seq], T0))
    # carol's first row again changes nothing; dave's row goes
    await storage.write(lambda tx: tx.ack_inbox_seqs([seqs[0], seqs[-1]], T0))
    assert await storage.unread_bytes(mbs) == await _recount(storage, mbs)
    assert await storage.unread_bytes(mbs) == {
        "bob": 0,
        "carol": other.header.size + len(other.header_bytes),
        "dave": 0,
    }
    await storage.write(lambda tx: tx.delete_envelopes(rids))
    assert await storage.unread_bytes(mbs) == {"bob": 0, "carol": 0, "dave": 0}


# --- decisions and certificates -------------------------------------------------------


def _decision(i: int, outcome: str, envelope: bytes | None) -> DecisionRecord:
    return DecisionRecord(T0 + i, "accept", envelope, "p.test", outcome, f"r{i}", f"why {i}", "h")


async def test_decisions_newest_first_and_filtered(storage: Storage) -> None:
    e = b"\x05" * 16
    rows = [_decision(0, "deny", None), _decision(1, "audit", e), _decision(2, "deny", e)]
    await storage.write(lambda tx: tx.record_decisions(rows))
    assert await storage.decisions(None, None, 10) == rows[::-1]
    assert await storage.decisions(e, None, 10) == [rows[2], rows[1]]
    assert await storage.decisions(None, "deny", 1) == [rows[2]]
    assert await storage.decisions(b"\x06" * 16, None, 10) == []


async def test_allows_come_from_stored_envelopes(storage: Storage) -> None:
    accepted = envelope()
    submitted = envelope(origin=HERE, to=["x@far.test"], dest="far.test")
    await put(storage, [new(accepted), new(submitted, from_peer=None, hop="far.test")], T0 + 7)
    allows = await storage.allows(None, 10)
    assert [(a.envelope, a.point, a.peer, a.rule, a.residency, a.at) for a in allows] == [
        (submitted.header.id, "submit", "far.test", "rule-1", "DE", T0 + 7),
        (accepted.header.id, "accept", "peer.test", "rule-1", "DE", T0 + 7),
    ]
    assert [a.envelope for a in await storage.allows(accepted.header.id, 10)] == [
        accepted.header.id
    ]


async def test_certificates_first_copy_wins_and_expired_go(storage: Storage) -> None:
    a = CertificateRecord("fp-a", "a.test", T0 + DAY_MS, b"blob-a")
    b = CertificateRecord("fp-b", "b.test", T0 + 10, b"blob-b")
    await storage.write(lambda tx: tx.save_certificates([a, b], T0))
    await storage.write(lambda tx: tx.save_certificates([replace(a, blob=b"other copy")], T0 + 1))
    assert await storage.certificates(T0) == [b"blob-a", b"blob-b"]
    assert await storage.certificates(T0 + 11) == [b"blob-a"]  # read: only the valid
    await storage.write(lambda tx: tx.save_certificates([], T0 + 11))  # write: drops expired
    assert (await storage.row_counts())["certificates"] == 1


# --- retention ------------------------------------------------------------------------


def _cut(now: int, *, content: int, metadata: int) -> Cutoffs:
    return Cutoffs(
        now=now,
        cmax=now - content,
        cmin=now - content,
        mmax=now - metadata,
        mmin=now - metadata,
        expired=now - 600_000,
    )


async def test_retention_steps_and_preview_agree(storage: Storage) -> None:
    shared = b"shared body"
    old = envelope(payload=shared, expires=T0 + 1000)
    young = envelope(payload=shared)
    queued = envelope(payload=b"queued", expires=T0 + 1000)
    rids = await put(storage, [new(old, mailboxes=["bob"]), new(queued, hop="b.test")], T0)
    (young_rid,) = await put(storage, [new(young)], T0 + 5 * DAY_MS)
    await storage.write(lambda tx: tx.record_decisions([_decision(0, "deny", None)]))
    cut = _cut(T0 + 3 * DAY_MS, content=2 * DAY_MS, metadata=2 * DAY_MS)

    preview = await storage.retention_preview(cut, 1)
    assert preview.counts.contents == 2 and preview.counts.ended == 1
    assert len(preview.content) == 1  # listed up to the limit, counted in full

    async def steps(tx: WriteTx) -> tuple[list[int], list[int], Deleted, int, tuple[int, int]]:
        due, more = await tx.content_due(cut, 10)
        assert not more
        await tx.dequeue([d.rid for d in due if d.queued])
        await tx.clear_content([d.rid for d in due])
        meta = await tx.metadata_due(cut, 10)
        deleted = await tx.delete_envelopes([m.rid for m in meta])
        decisions = await tx.delete_decisions_due(cut, 10)
        shas = [d.payload_sha for d in due]
        dropped = await tx.drop_unreferenced_payloads(shas)
        await tx.record_purge(cut.now, "test", Counts(contents=len(due)))
        return sorted(d.rid for d in due), [m.rid for m in meta], deleted, decisions, dropped

    content, meta, deleted, decisions, dropped = await storage.write(steps)
    assert content == rids
    assert meta == rids  # no content left, expired, no longer queued
    assert deleted == Deleted(envelopes=2, inbox=1, recipients=0)
    assert decisions == 1
    assert dropped == (1, len(b"queued"))  # `shared` stays: the young copy references it
    assert (preview.counts.envelopes, preview.counts.decisions) == (2, 1)
    counts = await storage.row_counts()
    assert (counts["envelopes"], counts["payloads"], counts["purges"]) == (1, 1, 1)

    # a deletion path marks content; what is past the cut can go at once
    await storage.write(lambda tx: tx.mark_discard([young_rid]))
    past = await storage.write(lambda tx: tx.content_received_before([young_rid], T0))
    assert past == {}
    past = await storage.write(lambda tx: tx.content_received_before([young_rid], T0 + 5 * DAY_MS))
    assert past == {young_rid: young.header.sha256}
    later = _cut(T0 + 6 * DAY_MS, content=30 * DAY_MS, metadata=30 * DAY_MS)
    marked = await storage.retention_preview(
        Cutoffs(later.now, later.cmax, later.now, later.mmax, later.mmin, later.expired), 10
    )
    assert [(d.id, d.why) for d in marked.content] == [(young.header.id, "discarded")]


# --- relay trace ----------------------------------------------------------------------


def _receipt(ids: list[bytes], received: int) -> Envelope:
    payload = encode_receipt(
        Receipt(
            "delivered", "", received, "DE", "enforce", tuple((i, (f"bob@{HERE}",)) for i in ids)
        )
    )
    header = make_header(
        id=os.urandom(16),
        kind="receipt",
        origin=HERE,
        key_id=KEY_ID,
        sender=f"postmaster@{HERE}",
        to=["postmaster@peer.test"],
        dest="peer.test",
        created=received,
        expires=received + DAY_MS,
        residency=["DE"],
        ctype=RECEIPT_CTYPE,
        payload=payload,
    )
    return seal(header, payload, KEY)


async def test_trace_finds_everything_stored_about_one_id(storage: Storage) -> None:
    # at the origin: a message of two envelopes (the first one's id is the message id),
    # one queued for its hop with a failed attempt
    msg = b"\x01" * 16
    first = envelope(origin=HERE, ident=msg, dest="peer.test", to=["bob@peer.test"])
    second = envelope(origin=HERE, ident=b"\x02" * 16, dest="far.test", to=["eve@far.test"])
    rid1, rid2 = await put(
        storage,
        [new(first, hop="peer.test", from_peer=None), new(second, hop="peer.test", from_peer=None)],
    )
    await storage.write(
        lambda tx: tx.add_recipients(
            [
                Recipient(msg, "bob@peer.test", rid1, "alice", "queued", T0),
                Recipient(msg, "eve@far.test", rid2, "alice", "queued", T0),
            ]
        )
    )
    await storage.write(lambda tx: tx.note_attempt([rid1], "HTTP 503"))
    # received from a peer: in bob's inbox, read, a receipt owed and one written
    inbound = envelope(ident=b"\x03" * 16)
    await put(storage, [new(inbound, mailboxes=["bob"])], now=T0 + 5)
    await storage.write(lambda tx: tx.ack_inbox("bob", [inbound.header.id], T0 + 9))
    owed = PendingReceipt("peer.test", "delivered", "", "DE", inbound.header.id, (f"bob@{HERE}",))
    await storage.write(lambda tx: tx.add_pending_receipts([owed], T0 + 6))
    receipt = _receipt([inbound.header.id], T0 + 7)
    await put(storage, [new(receipt, hop="peer.test", from_peer=None)], now=T0 + 7)

    rows = await storage.trace(msg, 100)
    assert [e.id for e in rows.envelopes] == [msg, second.header.id]
    e = rows.envelopes[0]
    assert (e.kind, e.origin, e.dest, e.from_peer, e.has_content) == (
        "message",
        HERE,
        "peer.test",
        None,
        True,
    )
    assert [(r.address, r.rid, r.status) for r in rows.recipients] == [
        ("bob@peer.test", rid1, "queued"),
        ("eve@far.test", rid2, "queued"),
    ]
    assert sorted((q.rid, q.hop, q.attempts, q.last_error) for q in rows.queue) == [
        (rid1, "peer.test", 1, "HTTP 503"),
        (rid2, "peer.test", 0, ""),
    ]
    assert rows.inbox == () and rows.pending_receipts == ()
    assert [r.received for r in rows.receipts] == [T0 + 7]  # stored since; the caller filters

    rows = await storage.trace(inbound.header.id, 100)
    assert [(e.id, e.from_peer) for e in rows.envelopes] == [(inbound.header.id, "peer.test")]
    assert [(i.mailbox, i.delivered, i.acked) for i in rows.inbox] == [("bob", T0 + 5, T0 + 9)]
    assert [(p.origin, p.status, p.at) for p in rows.pending_receipts] == [
        ("peer.test", "delivered", T0 + 6)
    ]
    assert [(r.writer, r.dest) for r in rows.receipts] == [(HERE, "peer.test")]
    assert decode_receipt(rows.receipts[0].payload).entries[0][0] == inbound.header.id

    assert await storage.trace(b"\x09" * 16, 100) == TraceRows()
    assert len((await storage.trace(inbound.header.id, 0)).receipts) == 0
