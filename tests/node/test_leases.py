"""Leases between workers (relay.node.leases): several Coordinators on one storage.

Each Coordinator here stands for one worker; they share a real store (every
backend) and a clock the test moves, and record the work they start and stop.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from relay.node.leases import FRESH_MS, LEADER, SENDER, TTL_MS, WORKER, Coordinator
from relay.storage.backends import BACKENDS, Target, open_storage
from relay.storage.interface import Storage
from tests.storage.contract import T0, envelope, new, put


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> int:
        return self.now


class Worker:
    """The work one Coordinator starts and stops (relay.node.leases.Work)."""

    def __init__(self) -> None:
        self.senders: set[str] = set()
        self.leading = False
        self.log: list[str] = []

    async def start_sender(self, hop: str) -> None:
        assert hop not in self.senders
        self.senders.add(hop)
        self.log.append(f"start {hop}")

    async def stop_sender(self, hop: str) -> None:
        self.senders.remove(hop)
        self.log.append(f"stop {hop}")

    async def lead(self) -> None:
        assert not self.leading
        self.leading = True
        self.log.append("lead")

    async def unlead(self) -> None:
        assert self.leading
        self.leading = False
        self.log.append("unlead")


HOPS = ["a.test", "b.test", "c.test", "d.test"]


@pytest.fixture(params=BACKENDS)
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Target:
    if request.param == "postgresql":
        url: str = request.getfixturevalue("pg_url")
        return url
    return tmp_path / "relay.db"


@pytest.fixture
async def store(target: Target) -> AsyncIterator[Storage]:
    s = await open_storage(target)
    try:
        await put(s, [new(envelope(dest=hop, to=[f"x@{hop}"]), hop=hop) for hop in HOPS])
        yield s
    finally:
        await s.close()


def worker(store: Storage, clock: Clock, name: str) -> tuple[Coordinator, Worker]:
    work = Worker()
    return Coordinator(store, work, clock, me=name, rng=random.Random(name)), work


async def holders(store: Storage, now: int) -> dict[str, str]:
    return {ls.name: ls.holder for ls in await store.leases() if ls.expires > now}


async def test_one_worker_holds_everything(store: Storage) -> None:
    clock = Clock()
    a, work = worker(store, clock, "w1")
    await a.renew()
    assert work.leading
    assert work.senders == set(HOPS)
    assert work.log[0] == "lead"  # the re-check runs before any sender starts
    assert all(a.may_send(hop) for hop in HOPS)
    assert not a.may_send("other.test")
    assert set((await holders(store, clock.now)).values()) == {"w1"}


async def test_two_workers_share_the_queues_and_one_leads(store: Storage) -> None:
    clock = Clock()
    a, wa = worker(store, clock, "w1")
    b, wb = worker(store, clock, "w2")
    await a.renew()
    await b.renew()  # b is live now, but a holds every queue
    assert wb.senders == set() and not wb.leading
    clock.now += 1_000
    await a.renew()  # a sees two live workers: it keeps its share of 2 and gives 2 up
    await b.renew()  # which b takes
    assert len(wa.senders) == len(wb.senders) == 2
    assert wa.senders | wb.senders == set(HOPS)
    assert wa.leading and not wb.leading
    leases = await holders(store, clock.now)
    for hop in HOPS:
        holder = leases[SENDER + hop]
        assert hop in (wa.senders if holder == "w1" else wb.senders)
    # steady: more renewals move nothing
    before = (list(wa.log), list(wb.log))
    for _ in range(3):
        clock.now += 3_000
        await a.renew()
        await b.renew()
    assert (wa.log, wb.log) == before


async def test_a_dead_workers_queues_and_jobs_move_once_its_leases_expire(
    store: Storage,
) -> None:
    clock = Clock()
    a, _ = worker(store, clock, "w1")
    b, wb = worker(store, clock, "w2")
    await a.renew()
    await b.renew()
    # a dies (no release): until its leases expire, b takes nothing of a's
    clock.now += TTL_MS - 1
    await b.renew()
    assert wb.senders == set() and not wb.leading
    clock.now += 1
    await b.renew()
    assert wb.senders == set(HOPS) and wb.leading
    assert set((await holders(store, clock.now)).values()) == {"w2"}


async def test_a_worker_cut_off_stops_sending_before_its_lease_can_move(
    store: Storage,
) -> None:
    clock = Clock()
    a, _ = worker(store, clock, "w1")
    await a.renew()
    clock.now += FRESH_MS - 1
    assert a.may_send("a.test")
    clock.now += 1
    assert FRESH_MS < TTL_MS
    assert not a.may_send("a.test")  # and nobody else may take it for TTL_MS - FRESH_MS more


async def test_a_worker_that_lost_a_lease_stops_that_sender(store: Storage) -> None:
    clock = Clock()
    a, wa = worker(store, clock, "w1")
    b, wb = worker(store, clock, "w2")
    await a.renew()
    clock.now += TTL_MS  # a stalled past its leases; b takes them all
    await b.renew()
    assert wb.senders == set(HOPS) and wb.leading
    await a.renew()  # a comes back: it stops what it no longer holds
    assert wa.senders == set() and not wa.leading
    assert wa.log[-5:] == [*(f"stop {hop}" for hop in HOPS), "unlead"]


async def test_a_clean_stop_hands_over_at_once(store: Storage) -> None:
    clock = Clock()
    a, wa = worker(store, clock, "w1")
    b, wb = worker(store, clock, "w2")
    await a.renew()
    await a.stop()
    assert wa.senders == set() and not wa.leading
    assert not any(ls.holder == "w1" for ls in await store.leases())
    await b.renew()  # no wait for an expiry
    assert wb.senders == set(HOPS) and wb.leading


async def test_an_announced_hop_is_taken_by_one_worker(store: Storage) -> None:
    clock = Clock()
    a, wa = worker(store, clock, "w1")
    b, wb = worker(store, clock, "w2")
    await a.renew()
    await b.renew()
    a.want("new.test")
    b.want("new.test")
    await a.renew()
    await b.renew()
    assert ("new.test" in wa.senders) != ("new.test" in wb.senders)


async def test_gone_workers_leases_are_forgotten_by_the_leader(store: Storage) -> None:
    clock = Clock()
    a, _ = worker(store, clock, "w1")
    await a.renew()
    await a.stop()  # worker lease released
    b, _ = worker(store, clock, "w2")
    c, _ = worker(store, clock, "w3")
    await b.renew()
    await c.renew()  # c dies without a release
    clock.now += 2 * 3_600_000
    await b.renew()
    names = [ls.name for ls in await store.leases()]
    assert WORKER + "w3" not in names
    assert WORKER + "w2" in names and LEADER in names
