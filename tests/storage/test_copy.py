"""relay.storage.copying / transfer: every table carried over, counted, and refusals.

The checks read both sides through the storage interface only, so they say
what a node started on the copy will see. They run for every pair of
backends: SQLite to PostgreSQL and back, and each to itself.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from relay.errors import BadRequest, Conflict, StoreError
from relay.storage.backends import BACKENDS, Target, open_storage
from relay.storage.copying import copy_storage, table_io
from relay.storage.interface import DatabaseLocked, Storage, WriteTx
from relay.storage.records import Attempt, DecisionRecord, PeerState, PendingReceipt, Recipient
from relay.storage.transfer import DATA, check_tables
from tests import pgserver
from tests.conftest import require_postgres
from tests.storage.contract import HERE, T0, envelope, new, put

PAIRS = [(a, b) for a in BACKENDS for b in BACKENDS]


@pytest.fixture(params=PAIRS, ids=[f"{a}-to-{b}" for a, b in PAIRS])
def ends(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Target, Target]]:
    """A source and a target of the backends named by the parameter (distinct places)."""
    with contextlib.ExitStack() as stack:
        found: list[Target] = []
        for i, backend in enumerate(request.param):
            if backend == "postgresql":
                require_postgres()
                found.append(stack.enter_context(pgserver.schema_url()))
            else:
                found.append(tmp_path / f"{i}.db")
        yield found[0], found[1]


async def fill(storage: Storage) -> dict[str, object]:
    """Queued mail, an inbox, dedupe, decisions, nonces and the rest; what to look for."""
    out = envelope(origin=HERE, dest="far.test", to=["bob@far.test"], payload=b"queued")
    mail = [envelope(payload=b"for alice %d" % i, to=[f"alice@{HERE}"]) for i in range(3)]
    await put(storage, [new(out, hop="far.test", from_peer=None)])
    rids = await put(storage, [new(e, mailboxes=["alice"]) for e in mail])

    async def job(tx: WriteTx) -> None:
        await tx.add_recipients(
            [Recipient(out.header.id, "bob@far.test", 1, "carol", "queued", T0)]
        )
        await tx.record_nonce("peer.test", "nonce-1", T0)
        await tx.record_batch("peer.test", b"b" * 16, {mail[0].header.id: "accepted"}, T0)
        await tx.remember_answer("carol", "key-1", {"id": "ab"}, T0)
        await tx.record_decisions(
            [DecisionRecord(T0, "accept", b"x" * 16, "peer.test", "deny", "r1", "why", "h")]
        )
        await tx.add_pending_receipts(
            [PendingReceipt("peer.test", "delivered", "", "DE", mail[0].header.id, ("a@b",))], T0
        )
        await tx.save_peer_state("far.test", PeerState(failures=2, next_try=T0 + 5, last_error="e"))
        await tx.ack_inbox("alice", [mail[0].header.id], T0)
        await tx.record_attempts(
            [Attempt(1, "far.test", T0, T0 + 3, "unreachable", "", "ConnectionRefused", 1)]
        )

    await storage.write(job)
    return {"out": out, "rids": rids}


async def test_copy_carries_every_table_and_counts_it(ends: tuple[Target, Target]) -> None:
    source, target = ends
    src = await open_storage(source)
    await fill(src)
    before = await src.row_counts()
    unread_before = await src.unread_bytes(["alice"])
    head_before = await src.queue_head("far.test", 10)
    inbox_before = await src.inbox("alice", 0, 10)
    await src.close()
    assert all(before[t] for t in ("envelopes", "payloads", "queue", "inbox", "nonces"))

    copied = await copy_storage(source, target)

    assert [c.table for c in copied] == list(DATA)
    assert {c.table: c.target for c in copied} == {t: before[t] for t in DATA}
    dst = await open_storage(target)
    try:
        assert await dst.row_counts() == before
        assert await dst.unread_bytes(["alice"]) == unread_before
        assert await dst.queue_head("far.test", 10) == head_before
        assert await dst.inbox("alice", 0, 10) == inbox_before
        assert await dst.nonce_seen("peer.test", "nonce-1")
        assert await dst.stored_results("peer.test", b"b" * 16) is not None
        assert await dst.idempotent_answer("carol", "key-1") == {"id": "ab"}
        assert (await dst.peer_state("far.test")).failures == 2
        assert len(await dst.decisions(None, None, 10)) == 1
        assert (await dst.trace(head_before[0].id, 10)).attempts == (
            Attempt(1, "far.test", T0, T0 + 3, "unreachable", "", "ConnectionRefused", 1),
        )
        # new rows get keys past the copied ones: nothing collides
        later = envelope(payload=b"later", to=[f"alice@{HERE}"])
        rids = await put(dst, [new(later, mailboxes=["alice"])])
        assert rids[0] > max(r.rid for r in head_before)
        # the target's unread counter follows new mail from the recount on
        adds = 5 + len(later.header_bytes)
        assert await dst.unread_bytes(["alice"]) == {"alice": unread_before["alice"] + adds}
    finally:
        await dst.close()


async def test_the_copy_hands_out_no_inbox_seq_the_source_did(ends: tuple[Target, Target]) -> None:
    """Retention deleted the newest inbox rows at the source, whose counter still knows
    their seqs (an app may hold one as its cursor): the target goes on past them too."""
    source, target = ends
    cursor = await _newest_inbox_rows_deleted(source)
    await copy_storage(source, target)
    await _next_inbox_seq_is_past(target, cursor)


@pytest.mark.parametrize("last", BACKENDS)
async def test_a_copy_of_a_copy_hands_out_no_inbox_seq_the_first_did(
    tmp_path: Path, pg_url: str, last: str
) -> None:
    """Copied on from PostgreSQL before any new inbox row (its sequence set, not yet
    used), the next target still goes on past the first source's seqs."""
    source = tmp_path / "first.db"
    cursor = await _newest_inbox_rows_deleted(source)
    await copy_storage(source, pg_url)
    with contextlib.ExitStack() as stack:
        target: Target = tmp_path / "last.db"
        if last == "postgresql":
            target = stack.enter_context(pgserver.schema_url())
        await copy_storage(pg_url, target)
        await _next_inbox_seq_is_past(target, cursor)


async def _newest_inbox_rows_deleted(source: Target) -> int:
    """Put four inbox rows for alice at `source`, delete the newest three; the last seq."""
    src = await open_storage(source)
    try:
        kept = envelope(payload=b"kept", to=[f"alice@{HERE}"])
        gone = [envelope(payload=b"gone %d" % i, to=[f"alice@{HERE}"]) for i in range(3)]
        await put(src, [new(kept, mailboxes=["alice"])])
        rids = await put(src, [new(e, mailboxes=["alice"]) for e in gone])
        cursor = max(i.seq for i in await src.inbox("alice", 0, 10))
        await src.write(lambda tx: tx.delete_envelopes(rids))
        return cursor
    finally:
        await src.close()


async def _next_inbox_seq_is_past(target: Target, cursor: int) -> None:
    dst = await open_storage(target)
    try:
        later = envelope(payload=b"later", to=[f"alice@{HERE}"])
        await put(dst, [new(later, mailboxes=["alice"])])
        assert [i.id for i in await dst.inbox("alice", cursor, 10)] == [later.header.id]
    finally:
        await dst.close()


async def test_a_target_with_data_is_refused_unless_replace(ends: tuple[Target, Target]) -> None:
    for where in ends:
        s = await open_storage(where)
        await fill(s)
        await s.close()
    with pytest.raises(Conflict, match=r"already holds relay data \(payloads: \d+"):
        await copy_storage(*ends)
    copied = await copy_storage(*ends, replace=True)
    assert all(c.source == c.target for c in copied)
    assert {c.table: c.target for c in copied}["envelopes"] == 4


async def test_copy_onto_itself_is_refused(tmp_path: Path) -> None:
    with pytest.raises(BadRequest, match="source database itself"):
        await copy_storage(tmp_path / "a.db", tmp_path / "." / "a.db")


async def test_an_unknown_table_stops_the_copy_before_writing(tmp_path: Path) -> None:
    s = await open_storage(tmp_path / "a.db")
    await fill(s)
    await s.close()
    db = sqlite3.connect(tmp_path / "a.db")
    db.execute("CREATE TABLE mystery (x INTEGER)")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="does not know how to copy: mystery"):
        await copy_storage(tmp_path / "a.db", tmp_path / "b.db")
    dst = await open_storage(tmp_path / "b.db")
    try:
        assert not any((await dst.row_counts()).values())
    finally:
        await dst.close()


async def test_a_running_node_database_is_not_copied(tmp_path: Path) -> None:
    """The source's lock is taken: a store that holds it (a running node) stops the copy."""
    running = await open_storage(tmp_path / "a.db")
    try:
        with pytest.raises(DatabaseLocked, match="in use by another relay process"):
            await copy_storage(tmp_path / "a.db", tmp_path / "b.db")
    finally:
        await running.close()


async def test_every_table_of_a_new_database_is_named(storage: Storage, target: Target) -> None:
    """A migration that adds a table must say whether a copy carries it (DATA, DERIVED, LOCAL)."""
    tables = table_io(target)
    try:
        check_tables(tables)  # StoreError naming any table no list names
        assert set(DATA) <= tables.table_names()
    finally:
        tables.close()


async def test_a_live_lease_stops_the_copy(tmp_path: Path) -> None:
    """A worker on a shared database holds no file lock, but its unexpired leases show it."""
    s = await open_storage(tmp_path / "a.db")
    far = int(time.time() * 1000) + 60_000

    async def take(tx: WriteTx) -> object:
        return await tx.take_leases("worker-7", ["sender:far.test"], int(time.time() * 1000), far)

    await s.write(take)
    await s.close()
    with pytest.raises(Conflict, match=r"hold leases on this storage \(worker-7\)"):
        await copy_storage(tmp_path / "a.db", tmp_path / "b.db")
