"""Storage contract, delivery attempts (the `attempts` table): recorded, read by
trace, bounded per envelope, gone with the envelope and on erasure.

Runs against every backend of relay.storage.backends.BACKENDS through the
interface only (tests/storage/contract.py).
"""

from __future__ import annotations

from relay.storage.erasure import EraseOrder, ErasureTarget
from relay.storage.interface import Storage, WriteTx
from relay.storage.records import MAX_ATTEMPTS_KEPT, Attempt
from tests.storage.contract import HERE, T0, envelope, new, put


def attempt(rid: int, at: int, outcome: str = "retry", error: str = "HTTP 503") -> Attempt:
    return Attempt(rid, "peer.test", at, at + 7, outcome, "", error, 2)


async def record(storage: Storage, attempts: list[Attempt]) -> None:
    async def job(tx: WriteTx) -> None:
        await tx.record_attempts(attempts)

    await storage.write(job)


async def queued_pair(storage: Storage) -> tuple[bytes, bytes, int, int]:
    one = envelope(origin=HERE, dest="peer.test", to=["bob@peer.test"])
    two = envelope(origin=HERE, dest="peer.test", to=["eve@peer.test"])
    rid1, rid2 = await put(
        storage, [new(one, hop="peer.test", from_peer=None), new(two, hop="peer.test")]
    )
    return one.header.id, two.header.id, rid1, rid2


async def test_attempts_are_read_back_in_order_with_every_field(storage: Storage) -> None:
    id1, id2, rid1, rid2 = await queued_pair(storage)
    failed = [
        Attempt(rid1, "peer.test", T0, T0 + 30, "unreachable", "", "ClientConnectorError", 2),
        Attempt(rid2, "peer.test", T0, T0 + 30, "unreachable", "", "ClientConnectorError", 2),
    ]
    await storage.write(lambda tx: tx.record_attempts(failed))
    settled = [
        Attempt(rid1, "peer.test", T0 + 50, T0 + 60, "accepted", "", "", 2),
        Attempt(rid2, "peer.test", T0 + 50, T0 + 60, "rejected", "residency", "", 2),
    ]
    await storage.write(lambda tx: tx.record_attempts(settled))
    await storage.write(lambda tx: tx.record_attempts([]))  # nothing to write is fine

    assert (await storage.trace(id1, 10)).attempts == (failed[0], settled[0])
    assert (await storage.trace(id2, 10)).attempts == (failed[1], settled[1])
    ro = await storage.trace(b"\x09" * 16, 10)
    assert ro.attempts == ()


async def test_an_envelope_tried_again_keeps_its_latest_attempts(storage: Storage) -> None:
    id1, id2, rid1, rid2 = await queued_pair(storage)
    total = MAX_ATTEMPTS_KEPT + 5
    for i in range(total):
        await record(storage, [attempt(rid1, T0 + i)])
    await storage.write(lambda tx: tx.record_attempts([attempt(rid2, T0)]))
    kept = (await storage.trace(id1, 10)).attempts
    assert [a.started for a in kept] == [T0 + i for i in range(5, total)]
    assert len((await storage.trace(id2, 10)).attempts) == 1  # the trim is per envelope

    # several rows of one envelope in one call are trimmed alike
    many = [attempt(rid2, T0 + 100 + i, "deferred", "full mailbox") for i in range(total)]
    await storage.write(lambda tx: tx.record_attempts(many))
    assert (await storage.trace(id2, 10)).attempts == tuple(many[-MAX_ATTEMPTS_KEPT:])


async def test_attempts_go_with_the_envelope_and_on_erasure(storage: Storage) -> None:
    id1, id2, rid1, rid2 = await queued_pair(storage)
    await storage.write(
        lambda tx: tx.record_attempts([attempt(rid1, T0), attempt(rid2, T0, "accepted", "")])
    )
    deleted = await storage.write(lambda tx: tx.delete_envelopes([rid1]))
    assert deleted.envelopes == 1
    assert (await storage.trace(id1, 10)).attempts == ()
    assert len((await storage.trace(id2, 10)).attempts) == 1

    async def erase(tx: WriteTx) -> None:
        targets: list[ErasureTarget] = await tx.erasable(HERE, [id2])
        await tx.erase(targets, EraseOrder("admin", "root", "test", 0), T0 + 100)

    await storage.write(erase)
    rows = await storage.trace(id2, 10)
    assert [e.id for e in rows.envelopes] == [id2]  # the envelope's row stays
    assert rows.attempts == ()
