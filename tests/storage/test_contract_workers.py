"""Storage contract, workers: leases and announcements (relay.node.leases).

Runs against every backend of relay.storage.backends.BACKENDS through the
interface only (tests/storage/contract.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from relay.errors import RelayError
from relay.storage.interface import Storage, WriteTx
from relay.storage.records import Lease
from tests.storage.contract import T0

TTL = 10_000


async def take(storage: Storage, holder: str, names: Sequence[str], now: int) -> list[str]:
    async def job(tx: WriteTx) -> list[str]:
        return await tx.take_leases(holder, names, now, now + TTL)

    return await storage.write(job)


async def test_a_lease_is_held_by_one_holder_until_it_expires(storage: Storage) -> None:
    assert await take(storage, "w1", ["sender:a", "sender:b"], T0) == ["sender:a", "sender:b"]
    # w2 gets only what w1 does not hold, in the order it asked
    assert await take(storage, "w2", ["sender:c", "sender:a", "leader"], T0 + 1) == [
        "sender:c",
        "leader",
    ]
    # a renewal moves the expiry on; another holder still cannot take it
    assert await take(storage, "w1", ["sender:a"], T0 + 5_000) == ["sender:a"]
    assert await take(storage, "w2", ["sender:a"], T0 + TTL) == []
    # once expired (expires <= now) it is anyone's
    assert await take(storage, "w2", ["sender:a", "sender:b"], T0 + 5_000 + TTL) == [
        "sender:a",
        "sender:b",
    ]
    assert await storage.leases() == [
        Lease("leader", "w2", T0 + 1 + TTL),
        Lease("sender:a", "w2", T0 + 5_000 + 2 * TTL),
        Lease("sender:b", "w2", T0 + 5_000 + 2 * TTL),
        Lease("sender:c", "w2", T0 + 1 + TTL),
    ]


async def test_release_frees_only_the_holders_own_leases(storage: Storage) -> None:
    await take(storage, "w1", ["sender:a", "sender:b"], T0)
    await take(storage, "w2", ["leader"], T0)

    async def release(tx: WriteTx) -> None:
        await tx.release_leases("w1", ["sender:a", "leader", "never:held"])

    await storage.write(release)
    assert [(ls.name, ls.holder) for ls in await storage.leases()] == [
        ("leader", "w2"),
        ("sender:b", "w1"),
    ]
    # released: free at once, long before its expiry
    assert await take(storage, "w2", ["sender:a"], T0 + 1) == ["sender:a"]


async def test_expired_leases_are_forgotten_on_request(storage: Storage) -> None:
    await take(storage, "gone", ["worker:gone"], T0)
    await take(storage, "alive", ["worker:alive"], T0 + TTL)

    async def drop(tx: WriteTx) -> int:
        return await tx.drop_expired_leases(T0 + TTL + 1)

    assert await storage.write(drop) == 1
    assert [ls.name for ls in await storage.leases()] == ["worker:alive"]


async def test_a_rolled_back_lease_is_not_held(storage: Storage) -> None:
    async def job(tx: WriteTx) -> None:
        assert await tx.take_leases("w1", ["leader"], T0, T0 + TTL) == ["leader"]
        raise RelayError("changed its mind")

    with pytest.raises(RelayError):
        await storage.write(job)
    assert await storage.leases() == []
    assert await take(storage, "w2", ["leader"], T0) == ["leader"]


async def test_announcements_arrive_after_commit_once_each(storage: Storage) -> None:
    heard: list[list[tuple[str, str]]] = []
    seen_committed: list[bool] = []

    def hook(items: Sequence[tuple[str, str]]) -> None:
        heard.append(list(items))

    storage.on_announce(hook)

    async def job(tx: WriteTx) -> None:
        tx.announce("hop", "b.test")
        tx.announce("inbox", "bob")
        tx.announce("hop", "b.test")
        assert await tx.record_nonce("p.test", "n-announce", T0)
        seen_committed.append(bool(heard))

    await storage.write(job)
    assert seen_committed == [False]  # nothing was heard inside the transaction
    assert heard == [[("hop", "b.test"), ("inbox", "bob")]]
    assert await storage.nonce_seen("p.test", "n-announce")


async def test_a_rolled_back_job_announces_nothing(storage: Storage) -> None:
    heard: list[tuple[str, str]] = []
    storage.on_announce(heard.extend)

    async def fails(tx: WriteTx) -> None:
        tx.announce("hop", "lost.test")
        raise RelayError("refused")

    async def works(tx: WriteTx) -> None:
        tx.announce("hop", "kept.test")

    with pytest.raises(RelayError):
        await storage.write(fails)
    await storage.write(works)
    assert heard == [("hop", "kept.test")]
