"""Webhooks: push each message delivered to a mailbox to its `webhook` URL.

A mailbox with `webhook = "URL"` gets one task that POSTs every message of
its inbox there, in inbox order, as the JSON object `GET /v1/inbox` shows
for it (docs/webhooks.md has the exact request).

Invariants:
- A webhook is a forward. Before each POST the webhook's declared
  jurisdiction (`webhook_jurisdiction`, default the node's) is judged by
  `check_forward` against the envelope's residency set. A deny is recorded
  (point "webhook") and nothing is sent; the message stays in the inbox for
  the mailbox's own client. An allow or audit pass is recorded in the same
  transaction that acks the message.
- A message is acked in the inbox only after the receiver answered 2xx, and
  in the same transaction the mailbox's cursor (`webhook_state.cursor`, the
  last inbox seq handled) moves past it. Delivery is at least once: a 2xx
  lost on the way is followed by the same message again, which the receiver
  recognises by its `id`.
- A failed POST is retried, the same message first (order is kept), with
  full-jitter exponential backoff between `[federation] retry_min` and
  `retry_max`; the failure count and last error are stored for the admin.
- Requests are signed with the node key by the federation profile of
  RFC 9421 (`relay.protocol.httpsig.sign_request`); `Relay-Destination` carries the
  mailbox address, which is never a node name, so a webhook request cannot
  pass as a federation request.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random as _random
from dataclasses import dataclass

import aiohttp
from yarl import URL

from relay.api.client import inbox_item
from relay.errors import RelayError
from relay.logs import event
from relay.node.decisions import decision_record
from relay.node.state import NodeState
from relay.policy.residency import Decision, check_forward
from relay.protocol import httpsig
from relay.protocol.outbound import jitter_wait_ms
from relay.storage.interface import WriteTx
from relay.storage.records import DecisionRecord, WebhookFailure

log = logging.getLogger("relay.webhooks")

POINT = "webhook"
FETCH = 100
IDLE_WAIT_S = 5.0
MAX_ERROR_BODY = 200


@dataclass(frozen=True, slots=True)
class Pending:
    """One inbox row waiting for its webhook."""

    seq: int
    ident: bytes
    residency: tuple[str, ...]
    item: dict[str, object]


def peer_label(mailbox: str) -> str:
    """How a mailbox's webhook is named in decisions and logs."""
    return f"webhook:{mailbox}"


def judge(state: NodeState, mailbox: str, residency: tuple[str, ...]) -> Decision:
    """The forward decision for sending one envelope to `mailbox`'s webhook."""
    mb = state.config.mailbox(mailbox)
    declared = mb.webhook_jurisdiction if mb is not None else None
    return check_forward(
        state.policy,
        residency,
        peer=peer_label(mailbox),
        peer_jurisdiction=declared or state.config.node.jurisdiction,
    )


def sign(state: NodeState, mailbox: str, url: URL, body: bytes) -> dict[str, str]:
    """The request headers of one webhook POST: RFC 9421 over the node key."""
    headers = httpsig.sign_request(
        method="POST",
        path=url.raw_path or "/",
        content_digest=httpsig.content_digest(body),
        origin=state.name,
        destination=f"{mailbox}@{state.name}",
        key=state.key,
        key_id=state.key_id,
        created=state.now_ms() // 1000,
        nonce=state.random(32),
    )
    headers["Content-Type"] = "application/json"
    return headers


async def cursor(state: NodeState, mailbox: str) -> int:
    """The last inbox seq `mailbox`'s webhook handled."""
    return await state.store.webhook_cursor(mailbox)


async def pending(state: NodeState, mailbox: str, after: int, limit: int = FETCH) -> list[Pending]:
    """Unacked inbox rows of `mailbox` past the cursor, oldest first."""
    return [
        Pending(
            seq=r.seq,
            ident=r.id,
            residency=tuple(r.residency.split(",")),
            item=inbox_item(r.header, r.payload, r.erased),
        )
        for r in await state.store.inbox(mailbox, after, limit)
    ]


def _decision(
    state: NodeState, mailbox: str, row: Pending, d: Decision, now: int
) -> DecisionRecord:
    return decision_record(
        POINT,
        d,
        at=now,
        envelope=row.ident,
        peer=peer_label(mailbox),
        policy_hash=state.policy_hash,
    )


class MailboxHook:
    """Delivers one mailbox's inbox to its webhook."""

    def __init__(self, state: NodeState, mailbox: str, session: aiohttp.ClientSession) -> None:
        self.state = state
        self.mailbox = mailbox
        self.session = session
        self.failures = 0
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self.run(), name=f"webhook-{self.mailbox}")

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    def url(self) -> URL | None:
        mb = self.state.config.mailbox(self.mailbox)
        return URL(mb.webhook) if mb is not None and mb.webhook else None

    async def run(self) -> None:
        st = self.state
        while not st.stopping and self.url() is not None:
            wake = st.inbox_event(self.mailbox)  # taken before reading: no wake-up is lost
            rows = await pending(st, self.mailbox, await cursor(st, self.mailbox))
            if not rows:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), timeout=IDLE_WAIT_S)
                continue
            try:
                for row in rows:
                    if st.stopping or not await self.handle(row):
                        break
            except RelayError as e:  # the store refused a write: try again shortly
                event(log, "webhook_error", logging.ERROR, mailbox=self.mailbox, detail=e.detail)
                await asyncio.sleep(1)

    async def handle(self, row: Pending) -> bool:
        """Judge, send and record one message; False if it must be retried later."""
        st = self.state
        decision = judge(st, self.mailbox, row.residency)
        if not decision.allowed:
            await self._refuse(row, decision)
            return True
        url = self.url()
        if url is None:
            return False
        body = json.dumps(row.item, separators=(",", ":")).encode()
        error = await self._post(url, body)
        if error is None:
            await self._done(row, decision)
            return True
        await self._retry_later(row, error)
        return False

    async def _post(self, url: URL, body: bytes) -> str | None:
        """POST once; None on a 2xx answer, else what went wrong."""
        st = self.state
        fed = st.config.federation
        timeout = aiohttp.ClientTimeout(
            total=fed.request_timeout_ms / 1000, connect=fed.connect_timeout_ms / 1000
        )
        headers = sign(st, self.mailbox, url, body)
        try:
            async with self.session.post(
                url, data=body, headers=headers, timeout=timeout, allow_redirects=False
            ) as resp:
                answer = await resp.content.read(MAX_ERROR_BODY)
                status = resp.status
                location = resp.headers.get("Location", "")
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            return f"{type(e).__name__}: {e}".strip(": ")
        if 300 <= status < 400:  # signed for this URL: never re-posted to another
            return f"HTTP {status} redirect to {location!r} not followed"
        if 200 <= status < 300:
            return None
        return f"HTTP {status}: {answer.decode('utf-8', 'replace')}".strip(": ")

    async def _done(self, row: Pending, decision: Decision) -> None:
        st = self.state
        now = st.now_ms()

        async def job(tx: WriteTx) -> None:
            await tx.ack_inbox_seqs([row.seq], now)
            await tx.record_decisions([_decision(st, self.mailbox, row, decision, now)])
            await tx.webhook_advance(self.mailbox, row.seq, delivered=1)

        await st.store.write(job)
        self.failures = 0
        st.metrics.webhook(self.mailbox, "ok")
        st.metrics.decision(POINT, decision.outcome, decision.rule)
        event(
            log,
            "webhook_delivered",
            mailbox=self.mailbox,
            envelope=row.ident,
            outcome=decision.outcome,
            rule=decision.rule,
        )

    async def _refuse(self, row: Pending, decision: Decision) -> None:
        st = self.state
        now = st.now_ms()

        async def job(tx: WriteTx) -> None:
            await tx.record_decisions([_decision(st, self.mailbox, row, decision, now)])
            await tx.webhook_advance(self.mailbox, row.seq, delivered=0)

        await st.store.write(job)
        st.metrics.webhook(self.mailbox, "refused")
        st.metrics.decision(POINT, "deny", decision.rule)
        event(
            log,
            "webhook_refused",
            logging.WARNING,
            mailbox=self.mailbox,
            envelope=row.ident,
            rule=decision.rule,
            reason=decision.reason,
        )

    async def _retry_later(self, row: Pending, error: str) -> None:
        st = self.state
        fed = st.config.federation
        self.failures += 1
        wait_ms = jitter_wait_ms(self.failures, fed.retry_min_ms, fed.retry_max_ms, _random.uniform)
        failures, next_try = self.failures, st.now_ms() + wait_ms
        failure = WebhookFailure(failures, next_try, error)
        await st.store.write(lambda tx: tx.webhook_failure(self.mailbox, failure))
        st.metrics.webhook(self.mailbox, "retry")
        event(
            log,
            "webhook_failed",
            logging.WARNING,
            mailbox=self.mailbox,
            envelope=row.ident,
            error=error,
            attempt=self.failures,
            next_try_ms=wait_ms,
        )
        await asyncio.sleep(wait_ms / 1000)


class Webhooks:
    """One `MailboxHook` task per mailbox that has a webhook."""

    def __init__(self, state: NodeState, session: aiohttp.ClientSession) -> None:
        self.state = state
        self.session = session
        self.hooks: dict[str, MailboxHook] = {}

    async def sync(self) -> None:
        """Start a task for each mailbox with a webhook, stop those whose webhook is gone.

        Call at start and after a config reload.
        """
        wanted = {m.name for m in self.state.config.mailboxes if m.webhook}
        for name in sorted(set(self.hooks) - wanted):
            await self.hooks.pop(name).stop()
        for name in sorted(wanted - set(self.hooks)):
            hook = self.hooks[name] = MailboxHook(self.state, name, self.session)
            hook.start()

    async def stop(self) -> None:
        for hook in self.hooks.values():
            await hook.stop()
        self.hooks.clear()
