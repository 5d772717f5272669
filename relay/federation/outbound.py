"""Outbound delivery: one sender task per next hop (DESIGN §5 "Sending").

Invariants:
- A queue row leaves the queue only inside the transaction that records the
  peer's correctly signed answer for it (or its expiry/rejection).
- Every attempt carries a fresh nonce; a batch that failed is re-sent with the
  same batch id while its envelopes are still the head of the queue, so a
  lost response is answered from the peer's stored results.
- Failures back off per destination with full jitter between `retry_min` and
  `retry_max`; the state is persisted so a restart keeps it. A dead peer only
  ever delays its own sender.
- A whole-batch 4xx halves the batch to isolate the envelope that causes it;
  a single envelope refused for a permanent reason becomes `rejected`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import random as _random
from collections.abc import Sequence
from dataclasses import dataclass

import aiohttp

from relay import httpsig, ledger
from relay.envelope import Batch, BatchItem, BatchResult, decode_header, encode_batch, open_result
from relay.errors import BadSignature, MalformedError, RelayError
from relay.logs import event
from relay.node_state import NodeState
from relay.residency import check_forward
from relay.store import Tx
from relay.trust import TrustedNode

log = logging.getLogger("relay.federation.out")

MAX_RESPONSE = 16 * 1024 * 1024
PERMANENT_CODES = frozenset({"too_large", "malformed"})
BATCH_OVERHEAD = 64


@dataclass
class Attempt:
    ok: bool
    error: str = ""
    results: dict[bytes, str] | None = None
    status: int = 0
    code: str = ""


class Sender:
    """Delivers the queue of one next hop."""

    def __init__(self, state: NodeState, hop: str, session: aiohttp.ClientSession) -> None:
        self.state = state
        self.hop = hop
        self.session = session
        self.wake = asyncio.Event()
        self.wake.set()
        self._limit = state.config.federation.batch_envelopes
        self._last_batch: tuple[bytes, tuple[int, ...]] | None = None
        self.peer_max_body: int | None = None
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self.run(), name=f"sender-{self.hop}")

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    async def run(self) -> None:
        st = self.state
        while not st.stopping:
            peer_state = await ledger.peer_state(st.store, self.hop)
            wait_ms = peer_state.next_try - st.now_ms()
            if wait_ms > 0:
                await asyncio.sleep(min(wait_ms, 60_000) / 1000)
                continue
            self.wake.clear()
            items = await ledger.fetch_queue(st.store, self.hop, self._limit)
            if not items:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), timeout=5.0)
                continue
            items = await self._drop_dead(items)
            if not items:
                continue
            await self._attempt(items, peer_state)

    # --- expiry and residency before sending ------------------------------------

    async def _drop_dead(self, items: list[ledger.Queued]) -> list[ledger.Queued]:
        """End envelopes past their expiry or the queue lifetime, or no longer allowed here."""
        st = self.state
        now = st.now_ms()
        lifetime = st.config.node.queue_lifetime_ms
        peer = st.trust.node(self.hop)
        keep: list[ledger.Queued] = []
        ended: list[tuple[ledger.Queued, str, str, str, str]] = []
        for it in items:
            if it.expires <= now:
                ended.append((it, "expired", "expires", "expires passed before delivery", ""))
            elif it.enqueued + lifetime <= now:
                ended.append(
                    (it, "expired", "queue_lifetime", "queue lifetime passed before delivery", "")
                )
            else:
                decision = check_forward(
                    st.policy,
                    it.residency.split(","),
                    peer=self.hop,
                    peer_jurisdiction=peer.jurisdiction if peer else None,
                )
                if decision.allowed:
                    keep.append(it)
                else:
                    ended.append((it, "rejected", "residency", decision.reason, decision.rule))
        if ended:
            await st.store.write(lambda tx: self._end(tx, ended, now))
        return keep

    async def _end(
        self, tx: Tx, ended: Sequence[tuple[ledger.Queued, str, str, str, str]], now: int
    ) -> None:
        await ledger.dequeue(tx, [e[0].rid for e in ended])
        for it, status, code, reason, rule in ended:
            if status == "rejected":
                await ledger.record_decision(
                    tx,
                    at=now,
                    point="forward",
                    envelope=it.id,
                    peer=self.hop,
                    outcome="deny",
                    rule=rule,
                    reason=reason,
                    policy_hash=self.state.policy_hash,
                )
            await self._final(tx, it, status, code, now)
            event(
                log,
                "envelope_ended",
                logging.WARNING,
                peer=self.hop,
                envelope=it.id,
                status=status,
                reason=reason,
                attempts=it.attempts,
            )

    async def _final(self, tx: Tx, it: ledger.Queued, status: str, reason: str, now: int) -> None:
        """Record a final outcome: status at the origin, else a receipt to it."""
        st = self.state
        if it.kind != "message":
            return  # no receipt is ever sent about a receipt
        if it.origin == st.name:
            await ledger.set_status(tx, it.rid, status, reason, now)
        else:
            h = decode_header(it.header)
            await ledger.add_pending_receipt(
                tx,
                origin=it.origin,
                status=status,
                reason=reason,
                residency=it.residency,
                ident=it.id,
                recipients=h.to,
                now=now,
            )

    # --- one attempt ---------------------------------------------------------------

    def _trim(self, items: list[ledger.Queued]) -> list[ledger.Queued]:
        cfg = self.state.config.federation
        budget = cfg.batch_bytes
        if self.peer_max_body is not None:
            budget = min(budget, self.peer_max_body)
        out: list[ledger.Queued] = []
        used = BATCH_OVERHEAD
        for it in items:
            if out and used + it.wire_size > budget:
                break
            out.append(it)
            used += it.wire_size
        return out

    async def _attempt(self, items: list[ledger.Queued], before: ledger.PeerState) -> None:
        st = self.state
        items = self._trim(items)
        rids = tuple(it.rid for it in items)
        if self._last_batch is not None and self._last_batch[1] == rids:
            batch_id = self._last_batch[0]
        else:
            batch_id = st.random(16)
        self._last_batch = (batch_id, rids)
        started = st.now_ms()
        peer = st.trust.node(self.hop)
        if peer is None or peer.url is None:
            why = "not a trusted peer" if peer is None else "no url is configured for it"
            outcome = Attempt(False, f"cannot deliver to {self.hop}: {why}")
        else:
            outcome = await self._post(peer, batch_id, items)
        delay = max((started - min(it.enqueued for it in items)) if items else 0, 0)
        if outcome.ok and outcome.results is not None:
            await st.store.write(lambda tx: self._settle(tx, items, outcome, before))
            self._last_batch = None
            self._limit = st.config.federation.batch_envelopes
            counts: dict[str, int] = {}
            for r in outcome.results.values():
                counts[r] = counts.get(r, 0) + 1
            event(
                log,
                "delivery",
                peer=self.hop,
                batch=batch_id,
                envelopes=len(items),
                outcome="ok",
                results=",".join(f"{k}:{v}" for k, v in sorted(counts.items())),
                attempt=before.failures + 1,
                queue_delay_ms=delay,
                ms=st.now_ms() - started,
            )
            if log.isEnabledFor(logging.DEBUG):
                event(
                    log,
                    "delivery_ids",
                    logging.DEBUG,
                    peer=self.hop,
                    batch=batch_id,
                    ids=",".join(it.id.hex() for it in items),
                )
            return
        if outcome.status in (400, 413) and outcome.code in PERMANENT_CODES:
            if len(items) > 1:
                self._limit = max(1, len(items) // 2)
                self._last_batch = None
                event(
                    log,
                    "delivery",
                    logging.WARNING,
                    peer=self.hop,
                    batch=batch_id,
                    envelopes=len(items),
                    outcome="split",
                    error=outcome.error,
                    attempt=before.failures + 1,
                    queue_delay_ms=delay,
                )
                return
            it = items[0]
            await st.store.write(lambda tx: self._reject_one(tx, it, outcome.code))
            self._limit = st.config.federation.batch_envelopes
            self._last_batch = None
            event(
                log,
                "delivery",
                logging.WARNING,
                peer=self.hop,
                batch=batch_id,
                envelopes=1,
                outcome="rejected",
                error=outcome.error,
                envelope=it.id,
            )
            return
        await self._fail(items, outcome.error, before, batch_id, delay)

    async def _reject_one(self, tx: Tx, it: ledger.Queued, code: str) -> None:
        await ledger.dequeue(tx, [it.rid])
        await self._final(tx, it, "rejected", code, self.state.now_ms())

    async def _fail(
        self,
        items: Sequence[ledger.Queued],
        error: str,
        before: ledger.PeerState,
        batch_id: bytes,
        delay: int,
    ) -> None:
        st = self.state
        fed = st.config.federation
        failures = before.failures + 1
        cap = min(fed.retry_max_ms, fed.retry_min_ms * (2 ** min(failures - 1, 40)))
        wait = max(10, int(_random.uniform(0, cap)))  # full jitter
        now = st.now_ms()
        after = ledger.PeerState(
            failures=failures,
            next_try=now + wait,
            last_error=error,
            last_ok=before.last_ok,
            delivered=before.delivered,
        )

        async def job(tx: Tx) -> None:
            await ledger.save_peer_state(tx, self.hop, after)
            await ledger.note_attempt(tx, [it.rid for it in items], error)

        await st.store.write(job)
        event(
            log,
            "delivery",
            logging.WARNING,
            peer=self.hop,
            batch=batch_id,
            envelopes=len(items),
            outcome="retry",
            error=error,
            attempt=failures,
            next_try_ms=wait,
            queue_delay_ms=delay,
        )

    async def _settle(
        self, tx: Tx, items: Sequence[ledger.Queued], outcome: Attempt, before: ledger.PeerState
    ) -> None:
        st = self.state
        now = st.now_ms()
        assert outcome.results is not None
        done: list[int] = []
        missing: list[int] = []
        delivered = 0
        for it in items:
            r = outcome.results.get(it.id)
            if r is None:
                missing.append(it.rid)
            elif r in ("accepted", "duplicate"):
                done.append(it.rid)
                delivered += 1
                if it.origin == st.name and it.kind == "message":
                    await ledger.set_status(tx, it.rid, "sent", "", now)
            else:
                done.append(it.rid)
                code = r.partition(":")[2] or r
                await self._final(tx, it, "rejected", code, now)
        await ledger.dequeue(tx, done)
        if missing:
            await ledger.note_attempt(tx, missing, "missing from the peer's result")
        await ledger.save_peer_state(
            tx,
            self.hop,
            ledger.PeerState(0, 0, "", now, before.delivered + delivered),
        )

    async def _post(
        self, peer: TrustedNode, batch_id: bytes, items: Sequence[ledger.Queued]
    ) -> Attempt:
        st = self.state
        body = encode_batch(
            Batch(
                batch_id,
                tuple(
                    BatchItem(it.header, it.signature, it.payload, (*it.trace, st.name))
                    for it in items
                ),
            )
        )
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
        url = f"{peer.url}/federation/v1/batch"
        fed = st.config.federation
        timeout = aiohttp.ClientTimeout(
            total=fed.request_timeout_ms / 1000, connect=fed.connect_timeout_ms / 1000
        )
        try:
            async with self.session.post(url, data=body, headers=headers, timeout=timeout) as resp:
                data = await resp.content.read(MAX_RESPONSE + 1)
                status = resp.status
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            return Attempt(False, f"{type(e).__name__}: {e}".strip(": "))
        if status != 200:
            code, detail = _error_of(data)
            return Attempt(False, f"HTTP {status} {code}: {detail}", status=status, code=code)
        sent_nonce = base64.b64encode(nonce).decode()
        result = _open_any(data, peer)
        if isinstance(result, str):
            return Attempt(False, result, status=status)
        if result.batch_id != batch_id or result.nonce != sent_nonce:
            return Attempt(False, "signed result is for another batch or nonce", status=status)
        return Attempt(True, results=result.results, status=status)


def _open_any(data: bytes, peer: TrustedNode) -> BatchResult | str:
    last = "no key pinned for the peer"
    for pub in peer.keys.values():
        try:
            return open_result(data, pub)
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
