"""Concurrent client submits stored by one write job (issue 13, single-message requests).

Twenty clients each posting one message used to queue twenty store jobs per
transaction, each with its own savepoint and its own one-row statement per
table. Here the submits that arrive while a group waits for the store writer
join that group, and the group is one job: each submission's idempotency key
is remembered in turn, then every fresh message is recorded at once.

Invariants:
- A submitter is answered only after the transaction that holds its
  messages (or its key's earlier answer) committed: its future is settled
  from the store's answer, never before.
- A group is closed when its job starts: a submit arriving later starts a
  new group, so nothing is added to a job that is running.
- A submission's answer is its own: an Idempotency-Key already remembered
  (also by an earlier submission of the same group) gets the stored answer
  and records nothing.
- One submission cannot fail the others. If the group's job raises, nothing
  of it was stored (its savepoint or transaction rolled back) and each
  submission is written again alone, as its own job, and answered from that.
  If the store fails around a job that ran (a COMMIT lost with the connection
  may have landed), every submission gets that error, never a second write.
- A submission that delivers into a local mailbox while `[limits]
  mailbox_unread_bytes` is set is written alone: its quota is checked
  against the unread bytes of the submits committed before it, as if no
  group existed. A reload can set the quota after a group was formed: a job
  that finds more than one such submission raises, and each is written alone.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from relay.errors import StoreError
from relay.logs import LOG_IDS, event, id_fields
from relay.node import submit
from relay.node.state import NodeState
from relay.storage.groupcommit import settle
from relay.storage.interface import WriteTx

log = logging.getLogger("relay.api")

Answer = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Submission:
    """One submit request, checked and planned: what its store job needs."""

    mailbox: str
    scoped: str | None  # the stored form of its Idempotency-Key (jsonbody.idempotency_key)
    answer: Answer  # what it is answered once stored
    planned: Sequence[submit.PlannedMessage]


@dataclass(slots=True)
class Stored:
    """What one committed job stored: each submission's answer, and per mailbox the
    submissions that were fresh (not answered from an Idempotency-Key)."""

    answers: list[Answer] = field(default_factory=list)
    fresh: dict[str, list[Submission]] = field(default_factory=dict)

    def counted(self, state: NodeState) -> None:
        """Count and log what was stored: `submitted` lines per mailbox, not per request.

        Each request's first LOG_IDS ids are named in full, as a line per request
        did, so `grep ID` still finds every single-message submit; a line names at
        most LOG_IDS ids (requests are packed into lines), so lines do not grow
        with the group.
        """
        for mailbox, subs in self.fresh.items():
            state.metrics.submitted_messages(mailbox, [pm for sub in subs for pm in sub.planned])
            for line in _lines(subs):
                planned = [pm for sub in line for pm in sub.planned]
                named = [pm.msg_id for sub in line for pm in sub.planned[:LOG_IDS]]
                ids = id_fields(named, limit=len(named))
                if len(planned) > len(named):
                    ids["ids_more"] = len(planned) - len(named)
                event(
                    log,
                    "submitted",
                    mailbox=mailbox,
                    requests=len(line),
                    messages=len(planned),
                    **ids,
                )


def _lines(subs: Sequence[Submission]) -> list[list[Submission]]:
    """`subs` in order, packed into lines naming at most LOG_IDS ids each."""
    lines: list[list[Submission]] = []
    named = LOG_IDS  # ids named by the last line: full, so the first sub opens one
    for sub in subs:
        n = min(len(sub.planned), LOG_IDS)
        if named + n > LOG_IDS:
            lines.append([])
            named = 0
        lines[-1].append(sub)
        named += n
    return lines


@dataclass(frozen=True, slots=True)
class _Waiting:
    sub: Submission
    future: asyncio.Future[Answer]


class SubmitGroups:
    """The open group of a node's HTTP app and the tasks committing closed ones."""

    def __init__(self) -> None:
        self._open: list[_Waiting] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.groups = 0  # group jobs started, for tests and benchmarks

    async def write(self, state: NodeState, sub: Submission) -> Answer:
        """Store `sub` (in the next group, or alone if it must be); its answer once committed."""
        if _alone(state, sub):
            return await _store_alone(state, sub)
        fut: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        if self._open is None:
            self._open = []
            group = self._open
            task = asyncio.create_task(self._commit(state, group), name="submit-group")
            self._tasks.add(task)
            task.add_done_callback(lambda t: self._finished(t, group))
        self._open.append(_Waiting(sub, fut))
        return await fut

    def _close(self, group: list[_Waiting]) -> None:
        if self._open is group:
            self._open = None

    def _finished(self, task: asyncio.Task[None], group: list[_Waiting]) -> None:
        """However its task ended (also cancelled before its first step), the group
        is closed and no submitter waits on it forever."""
        self._tasks.discard(task)
        self._close(group)
        for w in group:
            w.future.cancel()  # a no-op once settled

    async def _commit(self, state: NodeState, group: list[_Waiting]) -> None:
        rolled_back = False  # the job itself raised: its savepoint or transaction rolled back

        async def job(tx: WriteTx) -> Stored:
            nonlocal rolled_back
            self._close(group)
            self.groups += 1
            try:
                return await record_all(state, tx, [w.sub for w in group])
            except Exception:
                rolled_back = True
                raise

        try:
            stored = await state.store.write(job)
        except Exception as e:  # noqa: BLE001 - each submission gets its own outcome below
            self._close(group)  # (a cancelled task is closed by _finished: nobody is answered)
            if not rolled_back or len(group) == 1:
                # The job never ran, or its transaction failed around it (a lost COMMIT
                # may have landed): its error, which says so, answers everyone. Writing
                # each again could store a message twice or deny one that is stored.
                for w in group:
                    settle(w.future, None, e)
                return
            await asyncio.gather(*(_write_alone(state, w) for w in group))
            return
        for w, answer in zip(group, stored.answers, strict=True):
            settle(w.future, answer, None)
        stored.counted(state)


def _alone(state: NodeState, sub: Submission) -> bool:
    """Whether `sub` takes a quota-checked local delivery (see the module invariants)."""
    if state.config.limits.mailbox_unread_bytes <= 0:
        return False
    return any(p.mailboxes for pm in sub.planned for p in pm.parts)


class _Regroup(Exception):
    """A group's job found submissions it must not store together (see record_all)."""


async def _store_alone(state: NodeState, sub: Submission) -> Answer:
    """Store `sub` as its own job; its answer once committed."""
    stored = await state.store.write(lambda tx: record_all(state, tx, [sub]))
    stored.counted(state)
    return stored.answers[0]


async def _write_alone(state: NodeState, w: _Waiting) -> None:
    try:
        answer = await _store_alone(state, w.sub)
    except Exception as e:  # noqa: BLE001 - handed to the submitter through its future
        settle(w.future, None, e)
    else:
        settle(w.future, answer, None)


async def record_all(state: NodeState, tx: WriteTx, subs: Sequence[Submission]) -> Stored:
    """Store `subs` in `tx`: remember each key in order, then record every fresh message.

    Each submission's answer is its own, or the one stored earlier for its key.
    """
    if len(subs) > 1 and sum(_alone(state, sub) for sub in subs) > 1:
        raise _Regroup  # a reload set the quota after these were grouped: each is written alone
    stored = Stored()
    for sub in subs:
        if sub.scoped is not None and not await tx.remember_answer(
            sub.mailbox, sub.scoped, sub.answer, state.now_ms()
        ):
            earlier = await tx.idempotent_answer(sub.mailbox, sub.scoped)
            if earlier is None:  # taken and gone within one transaction: a storage bug
                raise StoreError("the stored answer of this Idempotency-Key vanished")
            stored.answers.append(earlier)
            continue
        stored.answers.append(sub.answer)
        stored.fresh.setdefault(sub.mailbox, []).append(sub)
    for mailbox, fresh in stored.fresh.items():
        await submit.record(state, tx, mailbox, [pm for sub in fresh for pm in sub.planned])
    return stored
