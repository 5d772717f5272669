"""Backpressure: answer 503 with Retry-After instead of queueing without bound.

Invariants:
- A write request (client submit, federation batch) holds a slot from its
  admission, before its body is read, until its answer: at most
  `[limits] max_pending_writes` hold one at a time, so the bodies, parsed
  messages and signed envelopes waiting for the writer are bounded by that
  number, however many connections are open. Past it the answer is 503
  `busy` with Retry-After, and the body is never read.
- A submit is also refused while the outbound queue holds `max_queued`
  envelopes or more. The federation endpoint does not look at the queue:
  refusing batches because this node's own queue is long would also refuse
  the results and receipts that drain it, and two busy nodes would wait on
  each other.
- Admission comes after authentication (a token, a verified request
  signature): nobody unknown can take the slots of known clients and peers.
- No one principal (a mailbox, a peer) holds more than `[limits]
  principal_write_share` percent of those slots (at least one): past its
  share it gets 503 `busy` while the others still find slots free.
- A body read before its sender is authenticated (an unknown sender without
  `Relay-Certificate`, read to find a certificate) holds one of
  UNAUTHENTICATED_READS places of its own, never a write slot; past them the
  answer is 503 `busy`, so strangers cost at most that many small bodies.
- A body over OFF_LOOP_BYTES is decoded (and judged) in a worker thread, at
  most DECODERS at once; a smaller one on the event loop. So one large request
  holds the loop for the C parts of decoding only, and the Python parts of
  many large ones share two threads instead of the loop.
- The queue is counted at most once per `max_age` seconds; requests arriving
  while a count is running wait for that one instead of starting their own.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from typing import Protocol, TypeVar

from aiohttp import web

from relay.config.model import Config
from relay.errors import Busy
from relay.policy.ratelimit import Limits
from relay.storage.interface import Storage


class Admitting(Protocol):
    """The running node as admission reads it (NodeState, which imports this module)."""

    @property
    def backpressure(self) -> Backpressure: ...
    @property
    def config(self) -> Config: ...
    @property
    def limits(self) -> Limits: ...
    @property
    def store(self) -> Storage: ...


QUEUE_FULL_RETRY_S = 5
UNAUTHENTICATED_READS = 2
OFF_LOOP_BYTES = 256 * 1024
DECODERS = 2

T = TypeVar("T")


class Backpressure:
    """The node's write slots in use and its (cached) outbound queue length."""

    def __init__(
        self, store: Storage, max_age: float = 1.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.store = store
        self.max_age = max_age
        self.clock = clock
        self._holders: dict[int, str] = {}  # id() of a request holding a write slot -> principal
        self._held_by: Counter[str] = Counter()  # principal -> write slots it holds
        self._unauthenticated: set[int] = set()  # id() of requests reading a stranger's body
        self._count = 0
        self._at: float | None = None
        self._lock = asyncio.Lock()
        self._decoders = asyncio.Semaphore(DECODERS)

    def _fresh(self) -> bool:
        return self._at is not None and self.clock() - self._at < self.max_age

    async def queued(self) -> int:
        """Envelopes in the outbound queue as of at most `max_age` seconds ago."""
        if self._fresh():
            return self._count
        async with self._lock:
            if not self._fresh():
                self._count = await self.store.queue_length()
                self._at = self.clock()
            return self._count

    @property
    def in_progress(self) -> int:
        """Write requests holding a slot now."""
        return len(self._holders)

    def held_by(self, principal: str) -> int:
        """Write slots `principal` holds now."""
        return self._held_by[principal]

    def take_slot(
        self, request: web.Request, bound: int, principal: str = "", share_pct: int = 100
    ) -> None:
        """A slot for `request` of `principal`; Busy when `bound` are taken (0: no bound)
        or `principal` holds its share, `share_pct` percent of `bound` (at least 1)."""
        if bound and len(self._holders) >= bound:
            raise Busy(
                f"this node has {len(self._holders)} write requests in progress, its bound; "
                "retry shortly"
            )
        share = max(1, bound * share_pct // 100)
        if bound and principal and self._held_by[principal] >= share:
            raise Busy(
                f"{principal} has {self._held_by[principal]} write requests in progress, its"
                f" share of this node's {bound} ([limits] principal_write_share ="
                f" {share_pct}%); retry once they are answered"
            )
        self._holders[id(request)] = principal
        self._held_by[principal] += 1

    async def decode(self, size: int, work: Callable[[], T]) -> T:
        """`work()` for a body of `size` bytes: on the loop if small, else in a worker thread."""
        if size <= OFF_LOOP_BYTES:
            return work()
        async with self._decoders:
            return await asyncio.to_thread(work)

    @property
    def unauthenticated_reads(self) -> int:
        """Bodies of unauthenticated senders being read now."""
        return len(self._unauthenticated)

    def take_unauthenticated(self, request: web.Request) -> None:
        """A place to read `request`'s body before its sender is known; Busy when all are taken."""
        if len(self._unauthenticated) >= UNAUTHENTICATED_READS:
            raise Busy(
                f"this node reads at most {UNAUTHENTICATED_READS} bodies of unauthenticated"
                " senders at once; send the certificate in Relay-Certificate, or retry shortly"
            )
        self._unauthenticated.add(id(request))

    def release(self, request: web.Request) -> None:
        """Give back `request`'s slot and its unauthenticated place, if it holds them."""
        principal = self._holders.pop(id(request), None)
        if principal is not None:
            self._held_by[principal] -= 1
            if not self._held_by[principal]:
                del self._held_by[principal]
        self._unauthenticated.discard(id(request))


async def admit_submit(state: Admitting, mailbox: str, request: web.Request) -> None:
    """Take a write slot for `mailbox`'s submit, or Busy (503); `release` gives it back."""
    bp = state.backpressure
    limits = state.config.limits
    bp.take_slot(
        request, limits.max_pending_writes, f"mailbox {mailbox}", limits.principal_write_share
    )
    state.store.check_backlog()
    bound = state.config.limits.max_queued
    if bound:
        queued = await bp.queued()
        if queued >= bound:
            raise Busy(
                f"{queued} envelopes are queued for other nodes, at or over this node's "
                f"bound of {bound}; retry once they drain",
                QUEUE_FULL_RETRY_S,
            )


def admit_batch(state: Admitting, peer: str, request: web.Request) -> None:
    """Charge a batch request to `peer` (429), then take a write slot (503)."""
    state.limits.peer(peer)
    limits = state.config.limits
    state.backpressure.take_slot(
        request, limits.max_pending_writes, f"peer {peer}", limits.principal_write_share
    )
    state.store.check_backlog()


def release(state: Admitting, request: web.Request) -> None:
    """Give back the write slot `request` holds, if any (call once it is answered)."""
    state.backpressure.release(request)
