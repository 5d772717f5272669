"""Large client JSON bodies decoded in other processes, so the event loop never waits for them.

Invariants:
- Python's JSON decoder holds the interpreter lock for the whole of a
  document: in a thread it stops the event loop all the same (a 4 MiB body
  of two million values: 0.2-0.3 s). A submit body that is not
  `jsonbody.loop_sized` is therefore decoded and checked in one of DECODERS
  child processes. A document refused there (malformed, too many values, a
  bad message) never comes back: only its error does.
- What comes back of a body that checked out is the submit's messages,
  pickled one by one and unpickled on the loop with a pause every
  UNPICKLE_RUN messages, so even the largest legitimate batch does not hold
  the loop in one piece.
- One principal (a mailbox) has at most one body in a decoder at a time:
  its other large bodies wait their turn (each holding its write slot), so a
  token holder sending hostile bodies delays its own requests, and everyone
  else waits for at most DECODERS bodies ahead of them.
- The processes are started on first use (spawn: nothing of the node's
  threads, sockets or keys is copied into them), replaced after
  TASKS_PER_CHILD bodies (a hostile body can leave a child holding memory),
  and replaced at once if one dies; the body whose decoder died is answered
  503 `unavailable`. `close` ends them when the node stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import pickle
from collections import Counter
from collections.abc import AsyncIterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from relay.api import jsonbody
from relay.errors import Unavailable
from relay.logs import event

log = logging.getLogger("relay.decoders")

DECODERS = 2
TASKS_PER_CHILD = 256
UNPICKLE_RUN = 16


def _check_submit_pieces(
    raw: bytes, batch: bool, idem: str | None
) -> tuple[str | None, list[bytes]]:
    """`jsonbody.check_submit` in a child: its messages pickled one by one."""
    scoped, parsed = jsonbody.check_submit(raw, batch, idem)
    return scoped, [pickle.dumps(m, pickle.HIGHEST_PROTOCOL) for m in parsed]


class Decoders:
    """The node's decoder processes and whose turn it is to use them."""

    def __init__(self, processes: int = DECODERS) -> None:
        self.processes = processes
        self._pool: ProcessPoolExecutor | None = None
        self._slots = asyncio.Semaphore(processes)
        self._turns: dict[str, asyncio.Lock] = {}
        self._waiting: Counter[str] = Counter()
        self.decoded = 0  # bodies sent to a child (for tests and figures)

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                self.processes,
                mp_context=multiprocessing.get_context("spawn"),
                max_tasks_per_child=TASKS_PER_CHILD,
            )
        return self._pool

    @contextlib.asynccontextmanager
    async def _turn(self, principal: str) -> AsyncIterator[None]:
        """One decoder for `principal`, after its earlier bodies and a free process."""
        lock = self._turns.setdefault(principal, asyncio.Lock())
        self._waiting[principal] += 1
        try:
            async with lock, self._slots:
                yield
        finally:
            self._waiting[principal] -= 1
            if not self._waiting[principal]:
                del self._waiting[principal], self._turns[principal]

    async def check_submit(
        self, principal: str, raw: bytes, batch: bool, idem: str | None
    ) -> tuple[str | None, list[dict[str, Any]]]:
        """`jsonbody.check_submit(raw, batch, idem)`, on the loop if `raw` is small, else in
        a child process; raises what it raises (a RelayError naming what is wrong)."""
        if jsonbody.loop_sized(raw):
            return jsonbody.check_submit(raw, batch, idem)
        async with self._turn(principal):
            pool = self._executor()
            self.decoded += 1
            try:
                future = pool.submit(_check_submit_pieces, raw, batch, idem)
                scoped, pieces = await asyncio.wrap_future(future)
            except BrokenProcessPool:
                await self._replace(pool, principal, len(raw))
                raise Unavailable(
                    "the process decoding this body ended before it answered; retry"
                ) from None
        parsed: list[dict[str, Any]] = []
        for i, piece in enumerate(pieces, 1):
            parsed.append(pickle.loads(piece))
            if i % UNPICKLE_RUN == 0:
                await asyncio.sleep(0)
        return scoped, parsed

    async def _replace(self, pool: ProcessPoolExecutor, principal: str, size: int) -> None:
        """Drop a pool whose child died; the next body starts a new one."""
        if self._pool is pool:
            self._pool = None
        event(log, "decoder_died", logging.ERROR, principal=principal, bytes=size)
        await asyncio.to_thread(pool.shutdown, wait=True, cancel_futures=True)

    async def close(self) -> None:
        """End the child processes (waits for the bodies they are decoding)."""
        pool, self._pool = self._pool, None
        if pool is not None:
            await asyncio.to_thread(pool.shutdown, wait=True, cancel_futures=True)
