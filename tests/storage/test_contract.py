"""Storage contract, part 1: group commit, envelopes, recipients and the queue.

Runs against every backend of relay.storage.backends.BACKENDS through the
interface only (tests/storage/contract.py).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable

import pytest

from relay.errors import Busy, RelayError, StoreError
from relay.protocol.envelope import header_digest
from relay.protocol.receipt import MAX_RECEIPT_ENTRIES
from relay.storage.interface import Storage, WriteTx
from relay.storage.records import (
    AgeBucket,
    PeerState,
    QueueCount,
    Recipient,
    RecipientStatus,
    StatusUpdate,
)
from tests.storage.contract import HERE, T0, envelope, new, put, readonly

# --- group commit ---------------------------------------------------------------------


async def test_a_failing_job_rolls_back_only_itself(storage: Storage) -> None:
    commits = storage.commits
    hooks: list[int] = []
    storage.on_commit(lambda: hooks.append(storage.commits))

    def job(i: int, fail: bool) -> Callable[[WriteTx], Awaitable[int]]:
        async def run(tx: WriteTx) -> int:
            assert await tx.record_nonce("p.test", f"n{i}", T0)
            if fail:
                raise RelayError("this job fails on purpose")
            return i

        return run

    results = await asyncio.gather(
        *(storage.write(job(i, i == 3)) for i in range(8)),
        return_exceptions=True,
    )
    assert [i for i, r in enumerate(results) if isinstance(r, BaseException)] == [3]
    assert isinstance(results[3], RelayError) and "on purpose" in results[3].detail
    assert [r for i, r in enumerate(results) if i != 3] == [0, 1, 2, 4, 5, 6, 7]
    # what `write` answered is committed: the reads see it, the failed job left nothing
    for i in range(8):
        assert await storage.nonce_seen("p.test", f"n{i}") == (i != 3)
    assert storage.commits > commits
    assert hooks and hooks[-1] == storage.commits
    assert storage.trouble is None
    assert all(isinstance(v, str) and v for v in (await storage.settings()).values())


async def test_before_commit_runs_inside_the_transaction(storage: Storage) -> None:
    seen: list[bool] = []

    async def peek() -> None:  # the job ran but has not committed yet
        seen.append(await storage.nonce_seen("p.test", "n"))

    storage.before_commit = peek
    try:
        await storage.write(lambda tx: tx.record_nonce("p.test", "n", T0))
    finally:
        storage.before_commit = None
    assert seen == [False]
    assert await storage.nonce_seen("p.test", "n")


async def test_backlog_bound_answers_busy(storage: Storage) -> None:
    release = asyncio.Event()
    started = asyncio.Event()

    async def hold(tx: WriteTx) -> None:
        started.set()
        await release.wait()

    first = asyncio.create_task(storage.write(hold))
    await started.wait()
    queued = [asyncio.create_task(storage.write(hold)) for _ in range(2)]
    await asyncio.sleep(0)
    storage.max_backlog = 2
    try:
        with pytest.raises(Busy):
            await storage.write(hold, admit=True)
        with pytest.raises(Busy):
            storage.check_backlog()
    finally:
        storage.max_backlog = 0
        release.set()
        await asyncio.gather(first, *queued)
    storage.check_backlog()  # nothing waits any more


async def test_no_write_after_close(storage: Storage) -> None:
    await storage.close()
    await storage.close()  # closing twice is harmless
    with pytest.raises(StoreError):
        await storage.write(lambda tx: tx.record_nonce("p.test", "n", T0))


# --- envelopes and dedupe -------------------------------------------------------------


async def test_insert_assigns_rids_and_dedupes_payloads(storage: Storage) -> None:
    shared = b"same body"
    a, b = envelope(payload=shared), envelope(payload=shared)
    c = envelope(payload=b"other")
    rids = await put(storage, [new(a, mailboxes=["bob"]), new(b, hop="far.test"), new(c)])
    assert len(set(rids)) == 3 and rids == sorted(rids)
    more = await put(storage, [new(envelope())])
    assert more[0] > rids[-1]
    counts = await storage.row_counts()
    assert counts["envelopes"] == 4
    assert counts["payloads"] == 3  # `shared` is stored once
    assert counts["queue"] == 1 and counts["inbox"] == 1

    keys = [(x.header.origin, x.header.id) for x in (a, b, c)] + [("other.test", a.header.id)]

    async def digests(tx: WriteTx) -> dict[tuple[str, bytes], bytes]:
        return await tx.existing_digests(keys)

    found = await storage.write(digests)
    assert found == {
        (x.header.origin, x.header.id): header_digest(x.header_bytes) for x in (a, b, c)
    }
    assert await storage.write(lambda tx: tx.insert_envelopes([], T0)) == []


async def test_final_status_is_never_overwritten(storage: Storage) -> None:
    env = envelope(origin=HERE, to=["x@far.test", "y@far.test"], dest="far.test")
    (rid,) = await put(storage, [new(env, hop="far.test", from_peer=None)])
    msg = env.header.id

    async def add(tx: WriteTx) -> None:
        await tx.add_recipients(
            [Recipient(msg, a, rid, "alice", "queued", T0) for a in env.header.to]
        )

    await storage.write(add)

    async def status(updates: list[StatusUpdate], now: int) -> list[RecipientStatus]:
        await storage.write(lambda tx: tx.set_status(updates, now))
        return await storage.recipient_statuses(msg, "alice")

    after = await status([StatusUpdate(rid, "delivered", "", ("x@far.test",))], T0 + 1)
    assert [(r.address, r.status, r.at) for r in after] == [
        ("x@far.test", "delivered", T0 + 1),
        ("y@far.test", "queued", T0),
    ]
    after = await status([StatusUpdate(rid, "sent", "")], T0 + 2)
    assert [(r.status, r.at) for r in after] == [("delivered", T0 + 1), ("sent", T0 + 2)]
    after = await status([StatusUpdate(rid, "rejected", "residency")], T0 + 3)
    assert [(r.status, r.reason) for r in after] == [("delivered", ""), ("rejected", "residency")]
    after = await status([StatusUpdate(rid, "expired", "expires")], T0 + 4)
    assert [r.status for r in after] == ["delivered", "rejected"]
    assert await storage.recipient_statuses(msg, "someone-else") == []


async def test_a_batch_of_status_updates_lands_as_one_by_one(storage: Storage) -> None:
    # whole-envelope updates go out one statement per (status, reason); a rid that
    # comes twice keeps the order: a final status stops the later update
    envs = [envelope(origin=HERE, to=["x@far.test"], dest="far.test") for _ in range(5)]
    rids = await put(storage, [new(e, hop="far.test", from_peer=None) for e in envs])

    async def add(tx: WriteTx) -> None:
        await tx.add_recipients(
            [
                Recipient(e.header.id, "x@far.test", rid, "alice", "queued", T0)
                for e, rid in zip(envs, rids, strict=True)
            ]
        )

    await storage.write(add)

    async def statuses() -> list[tuple[str, str, int]]:
        out = []
        for e in envs:
            (r,) = await storage.recipient_statuses(e.header.id, "alice")
            out.append((r.status, r.reason, r.at))
        return out

    batch = [
        StatusUpdate(rids[0], "delivered", ""),
        StatusUpdate(rids[1], "sent", ""),
        StatusUpdate(rids[2], "delivered", ""),
        StatusUpdate(rids[3], "rejected", "residency"),
    ]
    await storage.write(lambda tx: tx.set_status(batch, T0 + 1))
    assert await statuses() == [
        ("delivered", "", T0 + 1),
        ("sent", "", T0 + 1),
        ("delivered", "", T0 + 1),
        ("rejected", "residency", T0 + 1),
        ("queued", "", T0),
    ]
    twice = [
        StatusUpdate(rids[1], "queued", "again"),
        StatusUpdate(rids[4], "sent", ""),
        StatusUpdate(rids[4], "queued", "again"),  # the last word for rids[4]
        StatusUpdate(rids[0], "sent", ""),  # final already: stays delivered
    ]
    await storage.write(lambda tx: tx.set_status(twice, T0 + 2))
    assert await statuses() == [
        ("delivered", "", T0 + 1),
        ("queued", "again", T0 + 2),
        ("delivered", "", T0 + 1),
        ("rejected", "residency", T0 + 1),
        ("queued", "again", T0 + 2),
    ]
    await storage.write(lambda tx: tx.set_status([StatusUpdate(rids[4], "expired", "x")], T0 + 3))
    await storage.write(lambda tx: tx.set_status([StatusUpdate(rids[4], "sent", "")], T0 + 4))
    assert (await statuses())[4] == ("expired", "x", T0 + 3)
    await storage.write(lambda tx: tx.dequeue(rids[1:4]))
    left = await storage.queue_head("far.test", 10)
    assert [it.rid for it in left] == [rids[0], rids[4]]
    assert {it.dest for it in left} == {"far.test"}


async def test_what_a_mailbox_name_leaves_is_counted(storage: Storage) -> None:
    """`relay mailbox add` of a removed name refuses while any of these are left."""
    assert (await storage.sent_count("alice"), await storage.answer_count("alice")) == (0, 0)
    envs = [envelope(origin=HERE, to=["x@far.test", "y@far.test"], dest="far.test")]
    envs.append(envelope(origin=HERE, to=["z@far.test"], dest="far.test"))
    rids = await put(storage, [new(e, hop="far.test", from_peer=None) for e in envs])

    async def add(tx: WriteTx) -> None:
        await tx.add_recipients(
            [
                Recipient(e.header.id, a, rid, "alice", "queued", T0)
                for e, rid in zip(envs, rids, strict=True)
                for a in e.header.to
            ]
        )
        await tx.remember_answer("alice", "k1", {"id": "aa"}, T0)
        await tx.remember_answer("alice", "k2", {"id": "bb"}, T0)
        await tx.remember_answer("bob", "k1", {"id": "cc"}, T0)

    await storage.write(add)
    assert await storage.sent_count("alice") == 2  # messages, not recipients
    assert await storage.answer_count("alice") == 2
    assert (await storage.sent_count("bob"), await storage.answer_count("bob")) == (0, 1)


async def test_sent_envelopes_are_found_by_origin_and_id(storage: Storage) -> None:
    mine = envelope(origin=HERE, to=["x@far.test"], dest="far.test")
    theirs = envelope(origin="peer.test")
    rids = await put(storage, [new(mine, hop="relay.test", from_peer=None), new(theirs)])
    ids = [mine.header.id, theirs.header.id, b"\x00" * 16]

    found = await storage.write(lambda tx: tx.sent_envelopes(HERE, ids))
    assert list(found) == [mine.header.id]
    sent = found[mine.header.id]
    assert (sent.rid, sent.dest, sent.kind, sent.hop) == (
        rids[0],
        "far.test",
        "message",
        "relay.test",
    )


async def test_sent_envelopes_finds_a_full_receipt_of_ids_at_once(storage: Storage) -> None:
    """A receipt's 1,000 ids in one call (more than one `IN` chunk), known ones found anywhere."""
    mine = [envelope(origin=HERE, payload=f"m{i}".encode()) for i in range(2)]
    rids = await put(storage, [new(e, from_peer=None) for e in mine])
    ids = [os.urandom(16) for _ in range(MAX_RECEIPT_ENTRIES - 2)]
    ids[1:1] = [mine[0].header.id]
    ids.append(mine[1].header.id)

    found = await storage.write(lambda tx: tx.sent_envelopes(HERE, ids))
    assert {i: f.rid for i, f in found.items()} == {
        mine[0].header.id: rids[0],
        mine[1].header.id: rids[1],
    }


# --- the queue ------------------------------------------------------------------------


async def test_queue_order_hold_attempts_and_dequeue(storage: Storage) -> None:
    envs = [envelope(payload=f"m{i}".encode()) for i in range(4)]
    rids = await put(
        storage, [new(e, hop="b.test") for e in envs[:3]] + [new(envs[3], hop="c.test")]
    )
    assert sorted(await storage.queue_hops()) == ["b.test", "c.test"]
    assert await storage.queue_length() == 4

    head = await storage.queue_head("b.test", 10)
    assert [q.rid for q in head] == rids[:3]
    assert head[0].payload == b"m0" and head[0].hop == "b.test" and head[0].attempts == 0
    assert head[0].header == envs[0].header_bytes and head[0].signature == envs[0].signature
    assert head[0].trace == ("peer.test",) and head[0].policy_hash == "ab" * 8
    assert [q.rid for q in await storage.queue_head("b.test", 1, after=rids[0])] == [rids[1]]

    refs = await storage.write(lambda tx: tx.queue_refs([envs[1].header.id, b"\x01" * 16]))
    assert [(r.id, r.rid, r.hop, r.held) for r in refs] == [
        (envs[1].header.id, rids[1], "b.test", False)
    ]
    await storage.write(lambda tx: tx.set_held([rids[1]], True))
    assert [q.rid for q in await storage.queue_head("b.test", 10)] == [rids[0], rids[2]]
    counts = await storage.queue_counts()
    assert counts == [QueueCount("b.test", 3, 1, T0), QueueCount("c.test", 1, 0, T0)]
    assert await storage.write(lambda tx: tx.queue_count("b.test")) == counts[0]
    assert await storage.write(lambda tx: tx.queue_count("none.test")) == QueueCount(
        "none.test", 0, 0, None
    )

    await storage.write(lambda tx: tx.note_attempt([rids[0]], "HTTP 500"))
    listing = await storage.queue_listing("b.test", -1)
    assert [(q.rid, q.attempts, q.last_error, q.held) for q in listing] == [
        (rids[0], 1, "HTTP 500", False),
        (rids[1], 0, "", True),
        (rids[2], 0, "", False),
    ]
    assert [q.rid for q in await storage.queue_listing(None, 2)] == rids[:2]

    page = await storage.write(lambda tx: tx.queue_page(rids[0], 2))
    assert [q.rid for q in page] == rids[1:3] and all(q.payload == b"" for q in page)
    queued = await storage.write(lambda tx: tx.queued([rids[3], rids[0], 10_000]))
    assert [q.rid for q in queued] == [rids[0], rids[3]]

    await storage.write(lambda tx: tx.dequeue(rids[:2]))
    assert [q.rid for q in await storage.queue_listing(None, -1)] == rids[2:]
    assert (await storage.row_counts())["envelopes"] == 4  # dequeued envelopes stay stored


async def test_deferred_entries_wait_while_the_rest_of_the_hop_flows(storage: Storage) -> None:
    """A peer deferred some entries (a full mailbox): queue_head skips them until
    their time; an admin's retry makes them due at once."""
    rids = await put(storage, [new(envelope(), hop="b.test") for _ in range(3)])
    (other,) = await put(storage, [new(envelope(), hop="c.test")])
    await storage.write(lambda tx: tx.defer([rids[0], rids[2]], T0 + 30_000, "mailbox full"))
    assert [q.rid for q in await storage.queue_head("b.test", 10, now=T0)] == [rids[1]]
    assert [q.rid for q in await storage.queue_head("b.test", 10, now=T0 + 29_999)] == [rids[1]]
    due = await storage.queue_head("b.test", 10, now=T0 + 30_000)
    assert [q.rid for q in due] == rids and [q.attempts for q in due] == [1, 0, 1]
    assert [q.rid for q in await storage.queue_head("b.test", 10)] == rids  # no clock: all
    listing = await storage.queue_listing("b.test", -1)
    assert [(q.attempts, q.last_error, q.next_try) for q in listing] == [
        (1, "mailbox full", T0 + 30_000),
        (0, "", 0),
        (1, "mailbox full", T0 + 30_000),
    ]
    await storage.write(lambda tx: tx.clear_deferred(["c.test"]))  # another hop's: no change
    assert [q.rid for q in await storage.queue_head("b.test", 10, now=T0)] == [rids[1]]
    await storage.write(lambda tx: tx.clear_deferred(["b.test"]))
    assert [q.rid for q in await storage.queue_head("b.test", 10, now=T0)] == rids
    assert [q.rid for q in await storage.queue_head("c.test", 10, now=T0)] == [other]


async def test_queue_hops_are_the_hops_with_something_queued(storage: Storage) -> None:
    assert await storage.queue_hops() == []
    hops = ["z.test", "a.test", "m.test", "a.test", "z.test"]
    rids = await put(storage, [new(envelope(), hop=h) for h in hops])
    assert sorted(await storage.queue_hops()) == ["a.test", "m.test", "z.test"]
    await storage.write(lambda tx: tx.dequeue([rids[2], rids[0]]))  # m.test, one z.test
    assert sorted(await storage.queue_hops()) == ["a.test", "z.test"]
    await storage.write(lambda tx: tx.dequeue(rids))
    assert await storage.queue_hops() == []


async def test_queue_ages_and_lifetime_at_backing_off_hops(storage: Storage) -> None:
    old = envelope(expires=T0 + 10)
    young = envelope()
    elsewhere = envelope(expires=T0 + 10)
    rids = await put(
        storage, [new(old, hop="b.test"), new(young, hop="b.test"), new(elsewhere, hop="c.test")]
    )
    ages = await storage.queue_ages(T0 + 120_000, (60_000, 300_000))
    assert sorted(ages, key=lambda a: a.hop) == [
        AgeBucket("b.test", 1, 2, 0),
        AgeBucket("c.test", 1, 1, 0),
    ]

    now = T0 + 1000
    await storage.write(lambda tx: tx.save_peer_state("b.test", PeerState(1, now + 60_000, "down")))
    ended = await storage.write(lambda tx: tx.queued_past_lifetime(now, T0 - 1, 10))
    assert [q.rid for q in ended] == [rids[0]]  # c.test is not backing off: its sender ends it
    ended = await storage.write(lambda tx: tx.queued_past_lifetime(now, T0, 10))
    assert [q.rid for q in ended] == rids[:2]  # enqueued at T0: past a lifetime ending at T0


async def test_reads_from_a_readonly_open_see_commits(storage: Storage) -> None:
    (rid,) = await put(storage, [new(envelope(), hop="b.test")])
    reads = await readonly(storage)
    try:
        assert reads.schema_version >= 1
        assert [q.rid for q in await reads.queue_listing(None, -1)] == [rid]
        await put(storage, [new(envelope(), hop="b.test")])
        assert await reads.queue_length() == 2  # each read sees the last commit
        await reads.ping()
    finally:
        await reads.close()


async def test_reroute_moves_queue_rows_and_the_recorded_hop(storage: Storage) -> None:
    envs = [envelope(origin=HERE, dest="d.test", to=["bob@d.test"]) for _ in range(3)]
    rids = await put(storage, [new(e, hop="b.test", from_peer=None) for e in envs])
    await storage.write(lambda tx: tx.reroute(rids[:2], "c.test"))
    assert [q.rid for q in await storage.queue_head("c.test", 10)] == rids[:2]
    assert [q.rid for q in await storage.queue_head("b.test", 10)] == rids[2:]
    ids = [e.header.id for e in envs]
    sent = await storage.write(lambda tx: tx.sent_envelopes(HERE, ids))
    assert [sent[i].hop for i in ids] == ["c.test", "c.test", "b.test"]


async def test_resign_replaces_header_signature_and_digest_under_the_same_id(
    storage: Storage,
) -> None:
    old = envelope(origin=HERE, dest="d.test", to=["bob@d.test"])
    other = envelope(origin=HERE, dest="d.test", to=["bob@d.test"])
    (rid,) = await put(storage, [new(old, hop="d.test", from_peer=None)])
    h = old.header
    again = envelope(
        origin=HERE, dest="d.test", to=["bob@d.test"], ident=h.id, created=h.created + 1
    )
    assert again.header_bytes != old.header_bytes
    await storage.write(lambda tx: tx.resign([(rid, again)]))
    (row,) = await storage.queue_head("d.test", 10)
    assert (row.rid, row.header, row.signature) == (rid, again.header_bytes, again.signature)
    digests = await storage.write(lambda tx: tx.existing_digests([(HERE, h.id)]))
    assert digests == {(HERE, h.id): header_digest(again.header_bytes)}
    with pytest.raises(RelayError, match="keeps its origin and id"):
        await storage.write(lambda tx: tx.resign([(rid, other)]))
    (row,) = await storage.queue_head("d.test", 10)
    assert row.header == again.header_bytes  # the refused job changed nothing
