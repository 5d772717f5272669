"""Inbox pages bounded in bytes and the per-mailbox unread quota (issue 10 item 4).

A live in-process node on 127.0.0.1: a page stops at `[limits] inbox_page_bytes`
and says `more`, so a reader pages on with `after` and loses nothing. A delivery
past `[limits] mailbox_unread_bytes` is 503 `busy` with Retry-After, stores
nothing, and the sender keeps it queued until the mailbox is read.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

import pytest

from relay.cli.client import read_inbox
from relay.config.model import LimitsConfig
from relay.config.tls import client_context
from relay.federation.inbound import BATCH_PATH
from relay.node.quota import RETRY_AFTER_S, RULE
from relay.policy.ratelimit import Limits
from relay.protocol.batch import open_result
from relay.protocol.outbound import HttpRefusal, Planner, Retry, Settle, SignedResult
from tests.federation.conftest import TIMEOUT, TOKEN, Harness

BOB_TOKEN = "bob-token"


def set_limits(h: Harness, **values: int) -> None:
    config = h.state.config
    limits = dataclasses.replace(config.limits, **values)
    h.state.config = dataclasses.replace(config, limits=limits)


async def read(h: Harness, query: str) -> dict[str, Any]:
    async with h.session.get(
        h.url + "/v1/inbox" + query,
        headers={"Authorization": f"Bearer {BOB_TOKEN}"},
        timeout=TIMEOUT,
    ) as resp:
        assert resp.status == 200, await resp.text()
        assert resp.headers["Content-Type"] == "application/json; charset=utf-8"
        doc: dict[str, Any] = await resp.json()
        return doc


async def test_inbox_pages_stop_at_the_byte_budget_and_page_on(harness: Harness) -> None:
    h = harness
    set_limits(h, inbox_page_bytes=2048)
    texts = [str(i) * 1000 for i in range(5)] + ["x" * 5000, "tail"]
    sent = [await h.submit(["bob@n.test"], t) for t in texts]

    first = await read(h, "?limit=100")
    assert [m["text"] for m in first["messages"]] == texts[:2]  # a third would pass 2048
    assert first["more"] is True
    got = list(first["messages"])
    cursor = first["next"]
    pages = 1
    while True:
        page = await read(h, f"?limit=100&after={cursor}")
        got += page["messages"]
        pages += 1
        if not page["more"]:
            break
        cursor = page["next"]
    assert [m["id"] for m in got] == sent  # nothing lost, nothing twice, in order
    assert pages == 5  # 2 + 2 + 1 + the 5000-byte one alone + "tail"

    # with a large budget the old shape still answers: one page, nothing more
    set_limits(h, inbox_page_bytes=LimitsConfig().inbox_page_bytes)
    whole = await read(h, "")
    assert [m["id"] for m in whole["messages"]] == sent and whole["more"] is False
    empty = await read(h, f"?after={whole['next']}")
    assert empty == {"messages": [], "more": False, "next": whole["next"]}


async def test_relay_inbox_reads_every_page_up_to_its_limit(harness: Harness) -> None:
    h = harness
    set_limits(h, inbox_page_bytes=1024)
    sent = [await h.submit(["bob@n.test"], str(i) * 700) for i in range(4)]  # a page each
    tls = client_context(None)
    got = await read_inbox(h.url, BOB_TOKEN, 0, 100, tls)
    assert [m["id"] for m in got] == sent
    assert [m["id"] for m in await read_inbox(h.url, BOB_TOKEN, 0, 3, tls)] == sent[:3]


async def ack_all(h: Harness) -> None:
    ids = [m["id"] for m in (await read(h, "?limit=1000"))["messages"]]
    async with h.session.post(
        h.url + "/v1/inbox/ack",
        json={"ids": ids},
        headers={"Authorization": f"Bearer {BOB_TOKEN}"},
        timeout=TIMEOUT,
    ) as resp:
        assert resp.status == 200 and (await resp.json())["acked"] == len(ids)


async def test_a_full_mailbox_defers_only_its_own_items_of_a_batch(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    h = harness
    set_limits(h, mailbox_unread_bytes=3000)
    first = h.envelope(payload=b"a" * 2000)
    assert (await h.send([h.item(first)])).results == {first.header.id: "accepted"}
    first_size = 2000 + len(first.header_bytes)  # an unread message counts its header too
    assert (await h.state.store.unread_bytes(["bob"])) == {"bob": first_size}

    # 2000 + 1200 > 3000: bob's item waits, alice's is taken
    over = h.envelope(payload=b"b" * 1200)
    other = h.envelope(payload=b"c" * 10, to=("alice@n.test",))
    body = h.body([h.item(other), h.item(over)])
    caplog.set_level(logging.WARNING, logger="relay.quota")
    async with h.session.post(h.url + BATCH_PATH, data=body, headers=h.sign(body)) as resp:
        assert resp.status == 200
        assert resp.headers["Retry-After"] == str(RETRY_AFTER_S)
        result = open_result(await resp.read(), h.node_key.public_key())
    assert result.results == {other.header.id: "accepted"}  # `over` left out: send it again
    assert not await h.stored(over.header.origin, over.header.id)
    assert await h.stored(other.header.origin, other.header.id)
    lines = [
        dict(getattr(r, "relay_fields", {}))
        for r in caplog.records
        if r.getMessage() == "quota_refused"
    ]
    assert len(lines) == 1, lines
    assert (lines[0]["mailbox"], lines[0]["peer"], lines[0]["rule"]) == ("bob", "a.test", RULE)
    assert (lines[0]["deferred"], lines[0]["incoming"]) == (1, 1200 + len(over.header_bytes))

    # the sender sends the left-out item again once bob has read his mail: nothing lost
    await ack_all(h)
    retried = await h.send([h.item(other), h.item(over)])
    assert retried.results == {other.header.id: "duplicate", over.header.id: "accepted"}
    assert (await h.state.store.unread_bytes(["bob", "alice"])) == {
        "bob": 1200 + len(over.header_bytes),
        "alice": 10 + len(other.header_bytes),
    }


def test_a_result_that_leaves_items_out_with_retry_after_defers_only_those() -> None:
    planner: Planner[Row] = Planner(
        batch_envelopes=10, batch_bytes=10**6, retry_min_ms=100, retry_max_ms=60_000
    )
    planner.plan([Row(1, b"1" * 16), Row(2, b"2" * 16)], lambda _origin: 0, lambda: b"B" * 16)
    taken = SignedResult({b"1" * 16: "accepted"}, retry_after="30")
    settle = planner.answer(taken, failures=0, now_ms=0, draw=lambda low, high: low)
    assert isinstance(settle, Settle)
    assert [it.id for it in settle.delivered] == [b"1" * 16]
    assert [it.id for it in settle.missing] == [b"2" * 16]
    assert settle.retry is None and settle.defer_until == 30_000


async def test_a_submit_over_a_mailbox_quota_is_refused_busy(harness: Harness) -> None:
    h = harness
    set_limits(h, mailbox_unread_bytes=1)
    await h.submit(["bob@n.test"], "x" * 1000)  # an empty mailbox takes anything
    have = (await h.state.store.unread_bytes(["bob"]))["bob"]
    header = have - 1000  # a message counts its header too; the next ones' are as long
    set_limits(h, mailbox_unread_bytes=have + header + 500)
    async with h.session.post(
        h.url + "/v1/messages",
        json={"to": ["bob@n.test"], "text": "y" * 600},
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=TIMEOUT,
    ) as resp:
        doc = await resp.json()
        assert (resp.status, doc["error"]) == (503, "busy"), doc
        assert resp.headers["Retry-After"] == str(RETRY_AFTER_S)
    assert len((await read(h, ""))["messages"]) == 1
    await h.submit(["bob@n.test"], "y" * 500)  # exactly the quota: still within it
    set_limits(h, mailbox_unread_bytes=0)  # 0: no quota
    await h.submit(["bob@n.test"], "z" * 5000)
    assert len((await read(h, ""))["messages"]) == 3


@dataclass(frozen=True)
class Row:
    rid: int
    id: bytes
    origin: str = "n.test"
    kind: str = "message"
    wire_size: int = 100


def test_the_sender_keeps_a_busy_refused_batch_queued() -> None:
    planner: Planner[Row] = Planner(
        batch_envelopes=10, batch_bytes=10**6, retry_min_ms=100, retry_max_ms=60_000
    )
    planner.plan([Row(1, b"\x01" * 16)], lambda _origin: 0, lambda: b"\x02" * 16)
    refusal = HttpRefusal(503, "busy", "mailbox bob is over its quota", str(RETRY_AFTER_S))
    decision = planner.answer(refusal, failures=0, now_ms=0, draw=lambda low, high: low)
    assert isinstance(decision, Retry), decision  # not GiveUp: the row stays queued
    assert decision.wait_ms >= RETRY_AFTER_S * 1000


async def test_a_peer_over_its_byte_rate_gets_429_and_nothing_is_stored(
    harness: Harness,
) -> None:
    h = harness
    now = [50.0]
    h.state.limits = Limits(LimitsConfig(peer_bytes_per_s=4000), clock=lambda: now[0])
    first = h.envelope(payload=b"a" * 3000)
    await h.send([h.item(first)])  # about 3,300 of the 4,000 bytes
    over = h.envelope(payload=b"b" * 3000)
    body = h.body([h.item(over)])
    detail = await h.refused(body, h.sign(body), 429, "rate_limited")
    assert "batch bytes a second" in detail
    assert not await h.stored(over.header.origin, over.header.id)
    now[0] += 1  # a second later the bucket is full again
    assert (await h.send([h.item(over)])).results == {over.header.id: "accepted"}
