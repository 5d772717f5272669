"""Leases: which worker of a node does which piece of work (docs/workers.md).

A node may run as several workers (`relay run` processes on one storage,
on one machine or many). They share the work through leases in the storage
(WriteTx.take_leases), renewed by each worker's Coordinator every RENEW_S:

- `worker:<id>`: held by every live worker; the count of live ones sets the
  fair share.
- `sender:<hop>`: the sender of that next hop's queue runs in the worker that
  holds it, and only there. A worker takes at most ceil(D/W) of them (D next
  hops with work, W live workers), so the queues spread over the workers; one
  that holds more than its share gives the surplus up at its next renewal.
- `leader`: the background jobs (receipt flushing, expiry, retention purge,
  pruning, webhooks, the policy re-check) run in the worker that holds it.

Invariants:
- A lease is held until TTL_MS after the renewal that took it began. A sender
  starts a batch only while its worker renewed less than FRESH_MS ago
  (FRESH_MS < TTL_MS), so a worker that cannot reach the storage stops
  sending well before anyone else may take its queues over: no envelope is
  sent by two workers at once.
- Work starts only after its lease committed and a lease is released only
  after its work stopped. A worker that dies leaves its leases to expire;
  the next renewal of another worker after that takes them, so nothing is
  stranded for more than TTL_MS + RENEW_S.
- With one worker (SQLite: one process per database) it holds every lease
  and behaves as a node without workers did.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import random
import socket
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from relay.errors import RelayError
from relay.logs import event
from relay.storage.interface import Storage, WriteTx
from relay.storage.records import Lease

log = logging.getLogger("relay.leases")

TTL_MS = 10_000  # a lease not renewed for this long is free
RENEW_S = 3.0  # how often a worker renews its leases and takes free ones
FRESH_MS = 6_000  # a sender starts a batch only this soon after a renewal began
FORGET_MS = 3_600_000  # expired leases (of workers gone) are dropped this long after

WORKER = "worker:"
SENDER = "sender:"
LEADER = "leader"


def worker_id() -> str:
    """A name for this worker, unique across restarts and machines."""
    return f"{socket.gethostname()}:{os.getpid()}:{os.urandom(4).hex()}"


class Work(Protocol):
    """What the Coordinator starts and stops (relay.node.app.Node)."""

    async def start_sender(self, hop: str) -> None:
        """Start the sender of `hop` (its lease is now held)."""
        ...

    async def stop_sender(self, hop: str) -> None:
        """Stop the sender of `hop` and wait until it stopped."""
        ...

    async def lead(self) -> None:
        """Start the background jobs (the leader lease is now held)."""
        ...

    async def unlead(self) -> None:
        """Stop the background jobs and wait until they stopped."""
        ...


class Coordinator:
    """Holds this worker's leases and starts and stops the work they cover."""

    def __init__(
        self,
        store: Storage,
        work: Work,
        clock: Callable[[], int],
        *,
        me: str | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.store = store
        self.work = work
        self.clock = clock
        self.me = me or worker_id()
        self.hops: set[str] = set()  # next hops whose sender lease this worker holds
        self.leading = False
        self.renewed = -TTL_MS  # when the last successful renewal began (clock ms)
        self._wanted: set[str] = set()  # hops announced since the last renewal
        self._others: set[str] = set()  # hops other live workers held at the last renewal
        self._poke = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._rng = rng or random.Random()
        self._lock = asyncio.Lock()  # one renewal at a time
        self._stopped = False

    # --- what the rest of the node asks -------------------------------------------

    def fresh(self) -> bool:
        """True while this worker's leases are fresh enough to start a batch."""
        return self.clock() - self.renewed < FRESH_MS

    def may_send(self, hop: str) -> bool:
        """True if the sender of `hop` may start a batch now."""
        return hop in self.hops and self.fresh()

    def held_elsewhere(self, hop: str) -> bool:
        """True if another live worker held the sender lease of `hop` at the last renewal."""
        return hop in self._others

    def want(self, hop: str) -> None:
        """`hop` has work and no sender here: try to take its lease now."""
        if hop not in self.hops and hop not in self._others and not self._stopped:
            self._wanted.add(hop)
            self._poke.set()

    # --- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="leases")

    async def stop(self, before_release: Callable[[], Awaitable[None]] | None = None) -> None:
        """Stop the work this worker does, then release its leases for the others.

        `before_release` runs after the senders stopped and before the jobs
        stop, while this worker still holds what it held (the leader's last
        receipt flush).
        """
        self._stopped = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        async with self._lock:
            names = [SENDER + h for h in sorted(self.hops)]
            for hop in sorted(self.hops):
                await self.work.stop_sender(hop)
            self.hops.clear()
            if before_release is not None:
                await before_release()
            if self.leading:
                await self.work.unlead()
                self.leading = False
                names.append(LEADER)
            names.append(WORKER + self.me)
            try:
                await self.store.write(lambda tx: tx.release_leases(self.me, names))
            except RelayError as e:  # they expire by themselves
                event(log, "lease_release_failed", logging.WARNING, holder=self.me, detail=e.detail)

    async def _loop(self) -> None:
        failing = False  # logged once when renewals start failing, once when they work again
        while not self._stopped:
            try:
                await self.renew()
            except RelayError as e:
                if not failing:
                    event(log, "lease_renew_failed", logging.ERROR, holder=self.me, detail=e.detail)
                failing = True
            else:
                if failing:
                    event(log, "lease_renew_recovered", holder=self.me)
                failing = False
            self._poke.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._poke.wait(), timeout=RENEW_S)

    # --- one renewal -------------------------------------------------------------------

    async def renew(self) -> None:
        """Renew what this worker holds, take its share of what is free, give up
        its surplus, and start or stop the work that follows."""
        async with self._lock:
            if self._stopped:
                return
            began = self.clock()
            leases = await self.store.leases()
            queued = set(await self.store.queue_hops())
            wanted, self._wanted = self._wanted, set()
            plan = plan_leases(self.me, began, leases, queued | wanted, self.hops, self._rng)
            self._others = held_by_others(self.me, began, leases)
            # the surplus is renewed too: released only once its sender stopped
            senders = plan.keep + plan.give + plan.take
            names = [WORKER + self.me, LEADER, *(SENDER + h for h in senders)]

            async def job(tx: WriteTx) -> list[str]:
                got = await tx.take_leases(self.me, names, began, began + TTL_MS)
                if self.leading or LEADER in got:
                    await tx.drop_expired_leases(began - FORGET_MS)
                return got

            got = set(await self.store.write(job))
            if WORKER + self.me not in got:  # taken over while this worker was cut off
                event(log, "worker_lease_lost", logging.WARNING, holder=self.me)
            self.renewed = began
            await self._apply(got, plan.give)

    async def _apply(self, got: set[str], give: Sequence[str]) -> None:
        held = {n.removeprefix(SENDER) for n in got if n.startswith(SENDER)}
        for hop in sorted(self.hops - held):
            event(log, "sender_lease_lost", logging.WARNING, holder=self.me, peer=hop)
            await self.work.stop_sender(hop)
            self.hops.discard(hop)
        if LEADER in got and not self.leading:
            self.leading = True
            event(log, "leader_lease_taken", holder=self.me)
            await self.work.lead()
        elif LEADER not in got and self.leading:
            self.leading = False
            event(log, "leader_lease_lost", logging.WARNING, holder=self.me)
            await self.work.unlead()
        for hop in sorted(held - self.hops):
            event(log, "sender_lease_taken", holder=self.me, peer=hop)
            self.hops.add(hop)  # before it starts: stop() stops what may have started
            await self.work.start_sender(hop)
        if give := [h for h in give if h in self.hops]:
            for hop in give:
                await self.work.stop_sender(hop)
                self.hops.discard(hop)
            await self.store.write(
                lambda tx: tx.release_leases(self.me, [SENDER + h for h in give])
            )
            event(log, "sender_leases_given", holder=self.me, peers=",".join(give))


class Plan:
    """What one renewal does with the sender leases: keep, take, give up."""

    def __init__(self, keep: list[str], take: list[str], give: list[str]) -> None:
        self.keep = keep
        self.take = take
        self.give = give


def plan_leases(
    me: str,
    now: int,
    leases: Sequence[Lease],
    busy: set[str],
    held: set[str],
    rng: random.Random,
) -> Plan:
    """Which sender leases `me` renews, tries to take and gives up at `now`.

    `busy` are the next hops with work, `held` the hops whose lease `me` holds.
    The share is ceil(D / W): D hops with work or a sender here, W live workers
    (`me` included). Free hops are tried in random order so that workers
    renewing at once do not all reach for the same one.
    """
    live = {ls.holder for ls in leases if ls.name.startswith(WORKER) and ls.expires > now}
    live.add(me)
    others = held_by_others(me, now, leases)
    hops = busy | held
    share = math.ceil(len(hops) / len(live)) if hops else 0
    free = sorted(hops - held - others)
    rng.shuffle(free)
    if len(held) <= share:
        return Plan(sorted(held), free[: share - len(held)], [])
    # idle hops go first, then any: the surplus moves to the workers below their share
    order = sorted(held, key=lambda h: (h in busy, h))
    surplus = order[: len(held) - share]
    return Plan(sorted(held - set(surplus)), [], surplus)


def held_by_others(me: str, now: int, leases: Sequence[Lease]) -> set[str]:
    """The next hops whose sender lease another worker holds at `now`."""
    return {
        ls.name.removeprefix(SENDER)
        for ls in leases
        if ls.name.startswith(SENDER) and ls.holder != me and ls.expires > now
    }
