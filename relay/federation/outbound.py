"""Outbound delivery: one sender task per next hop (DESIGN §5 "Sending").

Invariants:
- A queue row leaves the queue only inside the transaction that records the
  peer's correctly signed answer for it (or its expiry/rejection).
- What to send and what an answer means (batch size, batch-id reuse,
  halving on 400/413, giving up, backoff, Retry-After) is decided by
  `relay.protocol.outbound.Planner`; this shell does the HTTP, the queue rows,
  metrics and logs, and acts on the decision.
- Every attempt carries a fresh nonce; a batch that failed is re-sent with the
  same batch id while its envelopes are still the head of the queue, so a
  lost response is answered from the peer's stored results.
- The backoff state is persisted per destination so a restart keeps it. A
  dead peer only ever delays its own sender.
- The first item of each origin in a batch carries the certificate this node
  holds for that origin (its own, for its own envelopes), so that a next hop
  that has not pinned the origin can still verify it (relay.federation.relaying).
- A next hop trusted by certificate is reached at the certificate's URL and
  its answers are checked against the certificate's keys.
- Up to BATCHES_IN_FLIGHT batches are in flight per destination, one per
  lane: each lane is a Sender with its own Planner, and the lanes of one
  destination share a `_Pipeline`. A lane takes rows no other lane holds
  (claimed rids, taken under one lock from fetch to plan); answers are
  recorded one at a time, each from the peer state as last committed. Extra
  lanes send only while the peer is healthy: any answer that leaves rows
  queued (retry, split, give-up, rows missing from a signed result) drains
  the pipeline (no lane fetches until all are back, then the next fetch
  starts again at the head of the queue) and leaves lane 0 sending alone,
  exactly as a single sender would, until one of its batches settles in
  full with no failure recorded for the peer.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import random as _random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from relay.errors import BadSignature, MalformedError, RelayError
from relay.federation import relaying
from relay.logs import event, id_fields
from relay.node.decisions import decision_record
from relay.node.http import read_capped
from relay.node.queue_end import Ending, end_queued
from relay.node.state import NodeState
from relay.policy.residency import Decision, check_forward
from relay.policy.trust import TrustedNode
from relay.protocol import httpsig
from relay.protocol.attempt import outcomes as attempt_outcomes
from relay.protocol.audit import TREE_HEAD_HEADER, TREE_PROOF_HEADER, tree_head_header
from relay.protocol.batch import (
    DELIVERY_HEADER,
    DELIVERY_V1,
    Batch,
    BatchItem,
    BatchResult,
    encode_batch,
    open_result,
    signed_parts,
)
from relay.protocol.outbound import (
    DEFERRED,
    RETRY_AFTER_STATUSES,
    Answer,
    GiveUp,
    HttpRefusal,
    NoResult,
    Planner,
    Retry,
    Send,
    Settle,
    SignedResult,
    Split,
)
from relay.protocol.outbound import Decision as Outcome
from relay.storage.audit import AuditEvent, delivered_event, forwarded_event, result_event
from relay.storage.interface import WriteTx
from relay.storage.records import Attempt, DecisionRecord, PeerState, Queued, StatusUpdate

log = logging.getLogger("relay.federation.out")

# Batches in flight per destination. With one, A's cores sat idle while B
# committed and answered each batch; see docs/performance.md for the figures.
BATCHES_IN_FLIGHT = 3

MAX_RESPONSE = 16 * 1024 * 1024
STORE_RETRY_S = 1.0  # pause after the store refused a sender's write


@dataclass
class _Pipeline:
    """What the lanes of one destination share (see the module invariants)."""

    claimed: set[int] = field(default_factory=set)  # rids in a batch in flight
    fetch_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    answer_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    drain: bool = False  # an answer left rows queued: restart at the head once all are back
    solo: bool = False  # only lane 0 sends, until it has a batch settled in full
    idle: asyncio.Event = field(default_factory=asyncio.Event)  # set while nothing is claimed
    resigned: int = 0  # bumped when queued envelopes were re-signed: every lane starts over

    def release(self, rids: Sequence[int]) -> None:
        self.claimed.difference_update(rids)
        if not self.claimed:
            self.idle.set()


class Sender:
    """Delivers the queue of one next hop (lane 0; it starts and stops the other lanes)."""

    def __init__(
        self,
        state: NodeState,
        hop: str,
        session: aiohttp.ClientSession,
        may_send: Callable[[], bool] = lambda: True,
        *,
        lanes: int = BATCHES_IN_FLIGHT,
        lane: int = 0,
        pipe: _Pipeline | None = None,
        wake: asyncio.Event | None = None,
    ) -> None:
        self.state = state
        self.hop = hop
        self.session = session
        # False while this worker's lease on `hop` is not fresh (relay.node.leases):
        # no batch starts then, so no other worker can be sending the same queue
        self.may_send = may_send
        self.wake = wake if wake is not None else asyncio.Event()
        self.wake.set()
        self.lane = lane
        self._pipe = pipe if pipe is not None else _Pipeline()
        self._pipe.idle.set()
        self._resigned_seen = self._pipe.resigned
        self._lanes = [
            Sender(state, hop, session, may_send, lanes=1, lane=i, pipe=self._pipe, wake=self.wake)
            for i in range(1, lanes)
        ]
        # what to fetch, trim, reuse and wait: relay.protocol.outbound decides
        self.planner: Planner[Queued] = self._new_planner()
        self.body_bytes = 0  # size of the last batch body sent, for the delivery log
        self.task: asyncio.Task[None] | None = None
        # would-be denials let through in audit mode, by rid, for the batch in flight
        self._audits: dict[int, Decision] = {}
        self._rules: dict[int, str] = {}  # rid -> the forward rule that let it go
        # the last failure was the peer asking for time (429/503 with Retry-After):
        # its own requests to us then do not cut the wait short
        self._asked_to_wait = False

    def _new_planner(self) -> Planner[Queued]:
        fed = self.state.config.federation
        return Planner(
            batch_envelopes=fed.batch_envelopes,
            batch_bytes=fed.batch_bytes,
            retry_min_ms=fed.retry_min_ms,
            retry_max_ms=fed.retry_max_ms,
        )

    def start(self) -> None:
        name = f"sender-{self.hop}" + (f"-{self.lane}" if self.lane else "")
        self.task = asyncio.create_task(self._run_through_trouble(), name=name)
        for other in self._lanes:
            other.start()

    async def _run_through_trouble(self) -> None:
        """`run`, started again a second after the store refused (disk full, read-only).

        What the refused write would have recorded is simply redone: the
        envelopes are still queued, and a resent batch is a `duplicate`.
        """
        while not self.state.stopping:
            try:
                await self.run()
            except RelayError as e:
                event(
                    log, "sender_paused", logging.ERROR, peer=self.hop, code=e.code, detail=e.detail
                )
                await asyncio.sleep(STORE_RETRY_S)

    async def stop(self) -> None:
        for other in self._lanes:
            await other.stop()
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    async def learn_limits(self) -> None:
        """Read the peer's advertised max_body_bytes from its node document.

        Informational only (DESIGN §3): it caps our batch size, nothing else.
        A peer that does not answer keeps the configured batch size; a 413
        still splits the batch.
        """
        peer = self.state.trust.node(self.hop)
        if peer is None or peer.url is None:
            return
        timeout = aiohttp.ClientTimeout(total=10)
        try:
            async with self.session.get(
                f"{peer.url}/.well-known/relay", timeout=timeout, allow_redirects=False
            ) as r:
                doc = await r.json(content_type=None) if r.status == 200 else None
                status, location = r.status, r.headers.get("Location", "")
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError):
            return
        if 300 <= status < 400:
            error = f"HTTP {status} redirect to {location!r} not followed"
            event(log, "node_document_failed", logging.WARNING, peer=self.hop, error=error)
            return
        limit = doc.get("max_body_bytes") if isinstance(doc, dict) else None
        if isinstance(limit, int) and not isinstance(limit, bool) and limit > 1024:
            self.planner.peer_max_body = limit

    @property
    def _limit(self) -> int:
        """How many queued envelopes to fetch for the next batch."""
        return self.planner.fetch_limit

    async def run(self) -> None:
        st = self.state
        await self.learn_limits()
        while not st.stopping:
            peer_state = await st.store.peer_state(self.hop)
            wait_ms = peer_state.next_try - st.now_ms()
            if wait_ms > 0:
                if st.backoff_over(self.hop):
                    await self._waive_backoff(peer_state)
                    continue
                # a wake-up (`relay queue retry` clears the backoff, or the peer
                # contacted us: NodeState.peer_contacted) ends the wait early
                if not self._asked_to_wait:
                    st.waiting_out_backoff(self.hop)
                self.wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), timeout=min(wait_ms, 60_000) / 1000)
                continue
            st.backoff_over(self.hop)
            if self.lane and (peer_state.failures or self._pipe.solo):
                # extra lanes wait while the peer is failing or refusing: lane 0 goes alone
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), timeout=1.0)
                self.wake.clear()
                continue
            self.wake.clear()
            if not self.may_send():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), timeout=1.0)
                continue
            send = await self._next_batch()
            if send is None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), timeout=5.0)
                continue
            if not send.items:
                continue
            try:
                await self._attempt(send, peer_state)
            except BaseException:
                # what the answer did is unknown: restart at the head, lane 0 alone
                self._pipe.drain = self._pipe.solo = True
                raise
            finally:
                self._pipe.release([it.rid for it in send.items])

    async def _next_batch(self) -> Send[Queued] | None:
        """The next batch for this lane, claimed; None with nothing to send.

        A batch with no items: the rows fetched were all ended (expired,
        no longer allowed), or lane 0 sends alone for now; look again.
        """
        pipe = self._pipe
        async with pipe.fetch_lock:
            if pipe.drain:
                await pipe.idle.wait()  # the other lanes' batches come back first
                pipe.drain = False
            if self.lane and pipe.solo:
                return Send(b"", (), False)  # lane 0 goes alone for now
            after = max(pipe.claimed, default=0)
            items = await self.state.store.queue_head(
                self.hop, self._limit, after, now=self.state.now_ms()
            )
            if not items:
                return None
            items = await self._drop_dead(items)
            if not items:
                return Send(b"", (), False)
            send = self._plan(items)
            pipe.claimed.update(it.rid for it in send.items)
            pipe.idle.clear()
            return send

    async def _waive_backoff(self, before: PeerState) -> None:
        """Try the peer now: it has just made an authenticated request, so it is up.

        Its failure count stays, as with `relay queue retry`: if it fails
        again, the next wait is longer still.
        """
        st = self.state
        await st.store.write(lambda tx: tx.clear_backoff([self.hop]))
        # Whichever lane heard the contact, lane 0 must send next: it may still be
        # waiting out the backoff on the shared wake-up, which this lane cleared.
        self.wake.set()
        event(
            log,
            "backoff_waived",
            peer=self.hop,
            failures=before.failures,
            skipped_ms=max(before.next_try - st.now_ms(), 0),
            detail="the peer contacted this node; its queue is retried now",
        )

    # --- expiry and residency before sending ------------------------------------

    async def _drop_dead(self, items: list[Queued]) -> list[Queued]:
        """End envelopes past their expiry or the queue lifetime, or no longer allowed here."""
        st = self.state
        now = st.now_ms()
        lifetime = st.config.node.queue_lifetime_ms
        peer = st.trust.node(self.hop)
        keep: list[Queued] = []
        ended: list[Ending] = []
        self._audits = {}
        self._rules = {}
        # one forward check per residency set in the batch: the policy and the
        # peer are the same for all of it
        verdicts: dict[str, Decision] = {}
        for it in items:
            if it.expires <= now:
                ended.append(Ending(it, "expired", "expires", "expires passed before delivery"))
            elif it.enqueued + lifetime <= now:
                ended.append(
                    Ending(it, "expired", "queue_lifetime", "queue lifetime passed before delivery")
                )
            else:
                decision = verdicts.get(it.residency)
                if decision is None:
                    decision = check_forward(
                        st.policy,
                        it.residency.split(","),
                        peer=self.hop,
                        peer_jurisdiction=peer.jurisdiction if peer else None,
                    )
                    verdicts[it.residency] = decision
                if decision.allowed:
                    keep.append(it)
                    self._rules[it.rid] = decision.rule
                    if decision.outcome == "audit":
                        self._audits[it.rid] = decision
                else:
                    record = self._decision(it, decision, now)
                    ended.append(Ending(it, "rejected", "residency", decision.reason, record))
        if ended:
            await st.store.write(lambda tx: end_queued(tx, st.name, ended, now, by="sender"))
            st.metrics.ended_envelopes(
                self.hop, [(e.item, e.status, e.reason, e.detail, e.rule) for e in ended]
            )
        return keep

    def _decision(self, it: Queued, decision: Decision, now: int) -> DecisionRecord:
        """The decision row of the forward point for `it` going to this hop."""
        return decision_record(
            "forward",
            decision,
            at=now,
            envelope=it.id,
            peer=self.hop,
            policy_hash=self.state.policy_hash,
        )

    # --- one attempt ---------------------------------------------------------------

    def _plan(self, items: list[Queued]) -> Send[Queued]:
        """What this lane sends next from `items` (the planner trims and picks the id)."""
        st = self.state
        if st.take_resigned(self.hop):
            self._pipe.resigned += 1
        if self._resigned_seen != self._pipe.resigned:
            # Re-signed envelopes are other bytes: the id of a failed batch, which
            # names its content at the peer, must not be reused for them.
            self._resigned_seen = self._pipe.resigned
            limit, self.planner = self.planner.peer_max_body, self._new_planner()
            self.planner.peer_max_body = limit
        fed = st.config.federation  # read each time: a reload may have changed it
        self.planner.tune(
            batch_envelopes=fed.batch_envelopes,
            batch_bytes=fed.batch_bytes,
            retry_min_ms=fed.retry_min_ms,
            retry_max_ms=fed.retry_max_ms,
        )
        return self.planner.plan(
            items,
            lambda origin: relaying.carried_size(st, origin, self.hop),
            lambda: st.random(16),
        )

    async def _attempt(self, send: Send[Queued], planned: PeerState) -> None:
        """Post `send` and record the answer (one lane's answer at a time).

        `planned` is the peer state this lane saw before it sent: failures are
        counted from it, so lanes that fail in the same outage count it once.
        """
        st = self.state
        items, batch_id = list(send.items), send.batch_id
        self.body_bytes = 0
        started = st.now_ms()
        peer = st.trust.node(self.hop)
        answer: Answer
        if peer is None or peer.url is None:
            why = "not a trusted peer" if peer is None else "no url is configured for it"
            answer = NoResult(f"cannot deliver to {self.hop}: {why}")
        else:
            answer = await self._post(peer, batch_id, items)
        delay = max((started - min(it.enqueued for it in items)) if items else 0, 0)
        if log.isEnabledFor(logging.DEBUG):
            event(
                log,
                "delivery_ids",
                logging.DEBUG,
                peer=self.hop,
                batch=batch_id,
                ids=",".join(it.id.hex() for it in items),
            )
        async with self._pipe.answer_lock:
            # the peer state as last committed: another lane may have recorded an answer
            before = await st.store.peer_state(self.hop)
            outcome = await self._answered(send, answer, planned, before, started, delay)
        if not isinstance(outcome, Settle) or outcome.missing:
            # rows stay queued: every lane restarts at the head, and lane 0 goes on
            # alone (halving a refused batch, probing a failing peer) until it settles
            self._pipe.drain = self._pipe.solo = True
        elif self.lane == 0:
            self._pipe.solo = False

    async def _answered(
        self,
        send: Send[Queued],
        answer: Answer,
        planned: PeerState,
        before: PeerState,
        started: int,
        delay: int,
    ) -> Outcome[Queued]:
        """Act on the peer's answer to `send`; the planner's decision.

        `before` is the peer state as last committed, `planned` as it was when
        this batch was sent (the failure count to go on from).
        """
        st = self.state
        items, batch_id = list(send.items), send.batch_id
        outcome = self.planner.answer(
            answer, failures=planned.failures, now_ms=st.now_ms(), draw=_random.uniform
        )
        self._asked_to_wait = (
            isinstance(answer, HttpRefusal)
            and answer.status in RETRY_AFTER_STATUSES
            and answer.retry_after is not None
        )
        tried = self._attempts(items, answer, outcome, started)
        if isinstance(outcome, Settle) and isinstance(answer, SignedResult):
            stated = await st.store.write(
                lambda tx: self._settle(tx, items, outcome, before, answer, batch_id, tried)
            )
            st.metrics.delivered(self.hop, items, answer.results, st.now_ms(), self._audits)
            counts: dict[str, int] = {}
            for r in answer.results.values():
                counts[r] = counts.get(r, 0) + 1
            if outcome.defer_until:  # left out for a full mailbox: they wait, the rest goes on
                counts["deferred"] = len(outcome.missing)
            event(
                log,
                "delivery",
                peer=self.hop,
                batch=batch_id,
                envelopes=len(items),
                **id_fields([it.id for it in items]),
                outcome="ok",
                results=",".join(f"{k}:{v}" for k, v in sorted(counts.items())),
                delivered=stated,
                attempt=planned.failures + 1,
                queue_delay_ms=delay,
                bytes=self.body_bytes,
                ms=st.now_ms() - started,
            )
            return outcome
        if isinstance(outcome, Split | GiveUp | Retry) and outcome.reread_limits:
            await self.learn_limits()
        if isinstance(outcome, Split):
            await st.store.write(lambda tx: tx.record_attempts(tried))
            st.metrics.attempt(self.hop, "split")
            self._warn(
                "split",
                batch_id,
                len(items),
                delay,
                error=outcome.error,
                attempt=planned.failures + 1,
                **id_fields([it.id for it in items]),
            )
            return outcome
        if isinstance(outcome, GiveUp):
            it = outcome.item
            await st.store.write(lambda tx: self._reject_one(tx, it, outcome.code, tried))
            st.metrics.attempt(self.hop, "rejected")
            self._warn(
                "rejected",
                batch_id,
                1,
                delay,
                error=outcome.error,
                envelope=it.id,
                attempt=planned.failures + 1,
            )
            return outcome
        if isinstance(outcome, Retry):
            await self._fail(items, outcome, before, batch_id, delay, tried)
        return outcome

    def _attempts(
        self, items: Sequence[Queued], answer: Answer, decision: Outcome[Queued], started: int
    ) -> list[Attempt]:
        """The `attempts` rows of this answer, one per envelope of the batch."""
        ended, size = self.state.now_ms(), len(items)
        return [
            Attempt(o.item.rid, self.hop, started, ended, o.outcome, o.code, o.error, size)
            for o in attempt_outcomes(items, answer, decision)
        ]

    def _warn(
        self, outcome: str, batch_id: bytes, envelopes: int, delay: int, **fields: Any
    ) -> None:
        """Log an attempt that did not deliver (`outcome` split, rejected or retry)."""
        event(
            log,
            "delivery",
            logging.WARNING,
            peer=self.hop,
            batch=batch_id,
            envelopes=envelopes,
            outcome=outcome,
            **fields,
            queue_delay_ms=delay,
            bytes=self.body_bytes,
        )

    async def _reject_one(
        self, tx: WriteTx, it: Queued, code: str, tried: Sequence[Attempt]
    ) -> None:
        await tx.record_attempts(tried)
        ending = Ending(it, "rejected", code, "refused by the next hop")
        await end_queued(tx, self.state.name, [ending], self.state.now_ms(), by="sender")

    async def _fail(
        self,
        items: Sequence[Queued],
        retry: Retry,
        before: PeerState,
        batch_id: bytes,
        delay: int,
        tried: Sequence[Attempt],
    ) -> None:
        st = self.state
        error = retry.error
        after = failed(before, retry, before.last_ok)
        failures, wait = after.failures, retry.wait_ms

        async def job(tx: WriteTx) -> None:
            await tx.save_peer_state(self.hop, after)
            await tx.note_attempt([it.rid for it in items], error)
            await tx.record_attempts(tried)

        await st.store.write(job)
        st.metrics.attempt(self.hop, "retry")
        self._warn(
            "retry",
            batch_id,
            len(items),
            delay,
            error=error,
            attempt=failures,
            next_try_ms=wait,
            **id_fields([it.id for it in items]),
        )

    async def _settle(
        self,
        tx: WriteTx,
        items: Sequence[Queued],
        outcome: Settle[Queued],
        before: PeerState,
        answer: SignedResult,
        batch_id: bytes,
        tried: Sequence[Attempt],
    ) -> int:
        """Record a settled batch; return how many of this node's messages the
        peer's signed result stated as delivered (delivery-v1)."""
        st = self.state
        now = st.now_ms()
        direct = self._stated(items, answer)
        answered = {it.rid for it in outcome.delivered} | {it.rid for it, _ in outcome.rejected}
        codes = {it.rid: code for it, code in outcome.rejected}
        done: list[int] = []
        missing = [it.rid for it in outcome.missing]
        sent: list[StatusUpdate] = []
        refused: list[Ending] = []
        audits: list[DecisionRecord] = []
        for it in items:
            if it.rid not in answered:
                continue
            if (audit := self._audits.get(it.rid)) is not None:
                # it reached the peer: the forward point let it through in audit mode
                audits.append(self._decision(it, audit, now))
            if it.rid not in codes:
                done.append(it.rid)
                if it.rid in direct:  # the destination's signed word: delivered to all
                    sent.append(StatusUpdate(it.rid, "delivered", ""))
                elif it.origin == st.name and it.kind == "message":
                    sent.append(StatusUpdate(it.rid, "sent", ""))
            else:
                code = codes[it.rid]
                refused.append(
                    Ending(it, "rejected", code, f"the next hop answered rejected:{code}")
                )
        await tx.record_decisions(audits)
        await tx.set_status(sent, now)
        await end_queued(tx, st.name, refused, now, by="peer")
        await tx.dequeue(done)
        await tx.record_attempts(tried)
        taken = set(done)
        await tx.append_audit(self._forwarded([it for it in items if it.rid in taken], now))
        if direct and answer.delivered is not None:
            jurisdiction = answer.delivered.jurisdiction
            await tx.append_audit(
                [result_event(now, self.hop, batch_id, answer.result_bytes, answer.signature)]
                + [
                    delivered_event(now, it.id, batch_id, self.hop, jurisdiction)
                    for it in items
                    if it.rid in direct and it.rid in taken
                ]
            )
        after = PeerState(0, 0, "", now, before.delivered + len(done))
        if missing and outcome.defer_until:
            # The peer asked for time for these items only (a full mailbox): they
            # wait, and the rest of the queue to this peer goes on at once.
            await tx.defer(missing, outcome.defer_until, DEFERRED)
        elif missing and outcome.retry is not None:
            # A signed answer that leaves envelopes out is a failed attempt for
            # them: back off, or the sender would ask the peer again at once.
            error = outcome.retry.error
            await tx.note_attempt(missing, error)
            after = failed(before, outcome.retry, now, after.delivered)
        await tx.save_peer_state(self.hop, after)
        return len(direct)

    def _stated(self, items: Sequence[Queued], answer: SignedResult) -> frozenset[int]:
        """The rids of this node's own messages the peer's signed result states as
        delivered (delivery-v1), where the peer is their destination: as a
        `delivered` receipt from the destination would (protocol.md §22).

        The queue rows carry what that takes (origin, kind and dest, read with
        them from the envelope row), so nothing is looked up again.
        """
        if answer.delivered is None or not answer.delivered.ids:
            return frozenset()
        stated = set(answer.delivered.ids)
        me, hop = self.state.name, self.hop
        return frozenset(
            it.rid
            for it in items
            if it.id in stated and it.origin == me and it.kind == "message" and it.dest == hop
        )

    def _forwarded(self, items: Sequence[Queued], now: int) -> list[AuditEvent]:
        """The audit entries of envelopes the next hop took."""
        peer = self.state.trust.node(self.hop)
        jurisdiction = peer.jurisdiction if peer else ""
        return [
            forwarded_event(
                now,
                it.id,
                it.origin,
                it.residency,
                self.hop,
                jurisdiction,
                self._rules.get(it.rid, ""),
            )
            for it in items
        ]

    async def _post(self, peer: TrustedNode, batch_id: bytes, items: Sequence[Queued]) -> Answer:
        st = self.state
        batch_items: list[BatchItem] = []
        seen: set[str] = set()  # origins whose certificates this batch already carries
        for it in items:
            certs = None if it.origin in seen else relaying.carried(st, it.origin, self.hop)
            seen.add(it.origin)
            trace = (*it.trace, st.name)
            batch_items.append(BatchItem(it.header, it.signature, it.payload, trace, certs))
        body = encode_batch(Batch(batch_id, tuple(batch_items)))
        self.body_bytes = len(body)
        nonce = st.random(32)
        headers = httpsig.sign_request(
            method="POST",
            path="/federation/v1/batch",
            content_digest=httpsig.content_digest(body),
            origin=st.name,
            destination=self.hop,
            key=st.key,
            key_id=st.key_id,
            created=st.now_ms() // 1000,
            nonce=nonce,
        )
        headers["Content-Type"] = "application/msgpack"
        delivery = st.config.federation.delivery_results
        if delivery:  # its result may stand for the receipts (protocol.md §22)
            headers[DELIVERY_HEADER] = DELIVERY_V1
        if own := st.trust.own_certificates[: httpsig.MAX_HEADER_CERTIFICATES]:
            # Introduces this node to a receiver that has not pinned it (protocol.md §9).
            headers[httpsig.CERTIFICATE_HEADER] = httpsig.certificate_header(own)
        head = st.tree_head
        if head is not None:  # for the receiver to keep (protocol.md §19)
            headers[TREE_HEAD_HEADER] = tree_head_header(head)
            # ... with the proof that it extends the last head this peer took, if any
            if (proof := await st.prove_head(head, st.heads_sent.get(self.hop))) is not None:
                headers[TREE_PROOF_HEADER] = proof
        url = f"{peer.url}/federation/v1/batch"
        fed = st.config.federation
        timeout = aiohttp.ClientTimeout(
            total=fed.request_timeout_ms / 1000, connect=fed.connect_timeout_ms / 1000
        )
        try:
            async with self.session.post(
                url, data=body, headers=headers, timeout=timeout, allow_redirects=False
            ) as resp:
                data = await read_capped(resp.content, MAX_RESPONSE)
                status = resp.status
                location = resp.headers.get("Location", "")
                retry_after = resp.headers.get("Retry-After")
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            return NoResult(f"{type(e).__name__}: {e}".strip(": "))
        if 300 <= status < 400:  # a signed batch goes to the pinned URL or nowhere
            return NoResult(f"HTTP {status} redirect to {location!r} not followed", status)
        if data is None:
            return NoResult(f"the answer is over {MAX_RESPONSE} bytes", status)
        if status != 200:
            code, detail = _error_of(data)
            return HttpRefusal(status, code, detail, retry_after)
        sent_nonce = base64.b64encode(nonce).decode()
        result = _open_any(data, peer, delivery)
        if isinstance(result, str):
            return NoResult(result, status)
        if result.batch_id != batch_id or result.nonce != sent_nonce:
            return NoResult("signed result is for another batch or nonce", status)
        if head is not None:  # it answered, so it saw the head: the next proof starts there
            st.heads_sent[self.hop] = head.head.size
        if result.delivered is None:
            return SignedResult(result.results, retry_after)
        result_bytes, signature = signed_parts(data)
        return SignedResult(result.results, retry_after, result.delivered, result_bytes, signature)


def failed(
    before: PeerState, retry: Retry, last_ok: int, delivered: int | None = None
) -> PeerState:
    """The peer state after the failure `retry` describes (the planner chose its wait)."""
    return PeerState(
        failures=retry.failures,
        next_try=retry.next_try,
        last_error=retry.error,
        last_ok=last_ok,
        delivered=before.delivered if delivered is None else delivered,
    )


def _open_any(data: bytes, peer: TrustedNode, delivery: bool) -> BatchResult | str:
    last = "no key pinned for the peer"
    for pub in peer.keys.values():
        try:
            return open_result(data, pub, delivery=delivery)
        except BadSignature as e:
            last = f"result signature: {e.detail}"
        except MalformedError as e:
            return f"malformed result: {e.detail}"
        except RelayError as e:
            return f"result refused: {e.detail}"
    return last


def _error_of(data: bytes) -> tuple[str, str]:
    try:
        doc = json.loads(data[:4096])
    except (ValueError, UnicodeDecodeError):
        return "", data[:200].decode("utf-8", "replace")
    if isinstance(doc, dict):
        return str(doc.get("error", "")), str(doc.get("detail", ""))
    return "", ""
