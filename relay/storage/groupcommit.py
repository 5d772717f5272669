"""Group commit, the part every backend shares (relay.storage.interface.Storage.write).

Invariants:
- One writer task per store takes the queued jobs of many callers and hands
  them to the backend's `_run_batch` as one transaction. A caller's future
  resolves only after the backend reported the COMMIT returned, so nothing is
  acknowledged before it is durable.
- `_run_batch` settles every future of its batch: with the job's result or
  error after a commit (`_committed`), or with StoreError when the
  transaction was lost (`fail`).
- `trouble` names the last storage failure until a transaction commits
  cleanly again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from relay.errors import Busy, RelayError, StoreError
from relay.logs import event
from relay.storage.interface import Job

log = logging.getLogger("relay.store")

T = TypeVar("T")


@dataclass
class Pending:
    """A queued write job and the future its caller awaits."""

    job: Job[Any]
    future: asyncio.Future[Any]


Outcome = tuple[Pending, Any, BaseException | None]


class GroupCommit:
    """The writer queue, backlog bound, commit hooks and trouble state of a store."""

    def __init__(self) -> None:
        self._jobs: asyncio.Queue[Pending | None] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None
        self._after_commit: list[Callable[[], None]] = []
        self._announce_hooks: list[Callable[[Sequence[tuple[str, str]]], None]] = []
        self.commits = 0
        self.max_jobs_per_commit = 512
        # Fault injection (relay.node.fault): awaited after a transaction's jobs ran
        # and before its COMMIT, so crash tests can kill the process inside it.
        self.before_commit: Callable[[], Awaitable[None]] | None = None
        # Jobs that may wait for the writer before `write(admit=True)` answers
        # Busy ([limits] max_pending_writes; 0 = no bound).
        self.max_backlog = 0
        # Why the last transaction failed for a storage reason until one
        # commits cleanly; readyz reports it.
        self.trouble: str | None = None

    async def _run_batch(self, batch: list[Pending]) -> None:
        raise NotImplementedError

    def start(self) -> None:
        """Start the writer task (once)."""
        if self._writer is None:
            self._writer = asyncio.create_task(self._write_loop(), name="store-writer")

    async def _stop_writer(self) -> None:
        """Let the writer finish every queued job, then end it."""
        if self._writer is not None:
            await self._jobs.put(None)
            await self._writer
            self._writer = None

    def on_commit(self, hook: Callable[[], None]) -> None:
        """Run `hook` after every successful commit (wake senders, long-polls)."""
        self._after_commit.append(hook)

    def on_announce(self, hook: Callable[[Sequence[tuple[str, str]]], None]) -> None:
        """Run `hook` with each commit's announcements (WriteTx.announce), once each."""
        self._announce_hooks.append(hook)

    def _heard(self, items: Sequence[tuple[str, str]]) -> None:
        """Hand announcements to the on_announce hooks."""
        if items:
            for hook in self._announce_hooks:
                hook(items)

    def check_backlog(self) -> None:
        """Busy (503) while `max_backlog` or more jobs wait for the writer (0: no bound)."""
        waiting = self._jobs.qsize()
        if self.max_backlog and waiting >= self.max_backlog:
            raise Busy(f"the store writer is behind ({waiting} writes waiting); retry shortly")

    async def write(self, job: Job[T], *, admit: bool = False) -> T:
        """Run `job` in the next group-commit transaction; return once committed.

        With `admit` (request handlers), refuse with Busy rather than queue past
        `max_backlog`; the node's own tasks always queue (there are few of them).
        StoreError (503) when the database refused: nothing of the job is stored.
        """
        if self._writer is None:
            raise StoreError("the store is not accepting writes")
        if admit:
            self.check_backlog()
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        await self._jobs.put(Pending(job, fut))
        return await fut

    async def _write_loop(self) -> None:
        stop = False
        while not stop:
            first = await self._jobs.get()
            if first is None:
                break
            batch = [first]
            while len(batch) < self.max_jobs_per_commit and not self._jobs.empty():
                nxt = self._jobs.get_nowait()
                if nxt is None:
                    stop = True
                    break
                batch.append(nxt)
            await self._run_batch(batch)

    def _committed(
        self,
        outcomes: Iterable[Outcome],
        failure: BaseException | None,
        announced: Sequence[tuple[str, str]] = (),
    ) -> None:
        """After COMMIT returned: count it, settle every job, run the hooks.

        `failure` is a storage failure a job met (its savepoint rolled back) in
        an otherwise committed transaction; it keeps `trouble` set. `announced`
        are the transaction's announcements, once each, in order.
        """
        self.commits += 1
        if failure is not None:
            self._set_trouble(failure)
        elif self.trouble is not None:
            event(log, "store_recovered", previous=self.trouble)
            self.trouble = None
        for p, result, exc in outcomes:
            settle(p.future, result, exc)
        for hook in self._after_commit:
            hook()
        self._heard(announced)

    def _set_trouble(self, cause: BaseException | str) -> None:
        why = cause.detail if isinstance(cause, RelayError) else str(cause)
        if self.trouble is None:
            event(log, "store_trouble", logging.ERROR, detail=why)
        self.trouble = why


def fail(batch: Iterable[Pending], err: BaseException) -> None:
    """Settle every job of `batch` with `err`."""
    for p in batch:
        settle(p.future, None, err)


def settle(fut: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    """Resolve `fut` with `result` or `exc` unless its caller gave up on it."""
    if fut.done():
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(result)
