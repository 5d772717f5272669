"""Extension delivery-v1 (docs/protocol.md §22): the destination's signed batch
result stands for the `delivered` receipt of mail its origin sent it directly.

At a receiver (n.test, the harness): what it states and which receipts it still
owes. Between two running nodes: the origin's status, its proof in the audit
log, and a receipt that still arrives later changes nothing."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from relay.cli.audit import export_bundle
from relay.federation import receipts
from relay.node.app import Node
from relay.node.opening import open_node_readonly
from relay.protocol.audit import RECEIPT, RESULT, decode_entry
from relay.protocol.auditcheck import verify, where
from relay.protocol.batch import RESULT_DOMAIN, decode_result
from relay.protocol.keystr import parse_public_key
from relay.storage.records import PendingReceipt
from relay.storage.sqlite.store import sqlite_store
from tests.federation.conftest import JURISDICTION, Harness
from tests.inprocess import PeerLine, down_at_port, listen_on, send, start_node, status, url_of
from tests.inprocess import write_node as write_inprocess_node

# --- at the receiver ----------------------------------------------------------------


@pytest.fixture
def h(harness: Harness) -> Harness:
    return harness


async def test_a_direct_send_that_asks_is_stated_delivered_and_owes_no_receipt(
    h: Harness,
) -> None:
    env = h.envelope()
    result = await h.send([h.item(env)], delivery=True)
    assert result.results == {env.header.id: "accepted"}
    assert result.delivered is not None
    assert result.delivered.ids == (env.header.id,)
    assert (result.delivered.jurisdiction, result.delivered.mode) == (JURISDICTION, "enforce")
    assert result.delivered.at == h.clock()
    assert (await h.counts())["pending_receipts"] == 0
    assert await h.stored("a.test", env.header.id)


async def test_a_sender_that_does_not_ask_gets_its_receipt_as_before(h: Harness) -> None:
    env = h.envelope()
    result = await h.send([h.item(env)])
    assert result.delivered is None
    assert result.results == {env.header.id: "accepted"}
    assert (await h.counts())["pending_receipts"] == 1


async def test_relayed_mail_still_gets_its_receipt(h: Harness) -> None:
    # x.test's envelope relayed by a.test: a.test's result is no proof for x.test
    env = h.envelope(origin=h.x, to=("bob@n.test",))
    result = await h.send([h.item(env)], delivery=True)
    assert result.results == {env.header.id: "accepted"}
    assert result.delivered is not None and result.delivered.ids == ()
    assert (await h.counts())["pending_receipts"] == 1


async def test_refused_items_are_not_stated(h: Harness) -> None:
    good, nobody = h.envelope(), h.envelope(to=("nobody@n.test",))
    result = await h.send([h.item(good), h.item(nobody)], delivery=True)
    assert result.results[nobody.header.id] == "rejected:unknown_mailbox"
    assert result.delivered is not None and result.delivered.ids == (good.header.id,)


async def test_a_repeated_batch_and_a_duplicate_are_stated_again(h: Harness) -> None:
    env = h.envelope()
    batch = os.urandom(16)
    first = await h.send([h.item(env)], batch_id=batch, delivery=True)
    assert first.delivered is not None and first.delivered.ids == (env.header.id,)
    # the answer was lost: the same batch again, with a fresh nonce
    again = await h.send([h.item(env)], batch_id=batch, delivery=True)
    assert again.results == {env.header.id: "accepted"}
    assert again.delivered is not None and again.delivered.ids == (env.header.id,)
    # the sender restarted: a new batch id, so the envelope is a duplicate
    dup = await h.send([h.item(env)], delivery=True)
    assert dup.results == {env.header.id: "duplicate"}
    assert dup.delivered is not None and dup.delivered.ids == (env.header.id,)
    # asked without the header, the stored batch answers as before
    plain = await h.send([h.item(env)], batch_id=batch)
    assert plain.delivered is None
    assert (await h.counts())["pending_receipts"] == 0


# --- between two running nodes --------------------------------------------------------


async def wait_for(probe: Callable[[], Awaitable[Any]], what: str, timeout: float = 20) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while not (got := await probe()):
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)
    return got


async def kinds(node: Node) -> dict[str, int]:
    assert node.state is not None
    rows = await sqlite_store(node.state.store).fetchall(
        "SELECT kind, count(*) FROM envelopes GROUP BY kind"
    )
    return {str(kind): int(n) for kind, n in rows}


async def test_the_origin_takes_the_signed_result_as_delivery(tmp_path: Path) -> None:
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    b_key = write_inprocess_node(b_dir, "b.test")
    b_port = await down_at_port(b_dir)
    a_key = write_inprocess_node(
        a_dir, "a.test", peers=[PeerLine("b.test", b_key, f"http://127.0.0.1:{b_port}")]
    )
    a = await start_node(a_dir)
    write_inprocess_node(b_dir, "b.test", peers=[PeerLine("a.test", a_key, url_of(a))])
    listen_on(b_dir, b_port)
    b = await start_node(b_dir)
    try:
        assert a.state is not None and b.state is not None and a.audit is not None
        async with aiohttp.ClientSession() as s:
            code, doc = await send(s, a, ["bob@b.test", "alice@b.test"], "stated, not receipted")
            assert code == 202, doc
            msg = bytes.fromhex(doc["id"])

            async def delivered() -> dict[str, dict[str, Any]] | None:
                got = await status(s, a, doc["id"])
                done = all(r["status"] == "delivered" for r in got.values())
                return got if done else None

            first = await wait_for(delivered, "delivered at a.test")

            # no receipt was owed, written or received
            assert await receipts.flush(b.state) == 0
            assert "receipt" not in await kinds(b) and "receipt" not in await kinds(a)

            # a's proof: b's signed result in a `result` entry, and a `receipt` entry on it
            log = [decode_entry(r.entry) for r in await a.state.store.audit_entries(0, 10_000)]
            (result,) = [e for e in log if e.kind == RESULT]
            (receipt,) = [e for e in log if e.kind == RECEIPT]
            assert result.text("peer") == "b.test"
            signature, result_bytes = result.blob("signature"), result.blob("result")
            parse_public_key(b_key).verify(signature, RESULT_DOMAIN + result_bytes)
            stated = decode_result(result_bytes)
            assert stated.batch_id == result.blob("batch")
            assert stated.delivered is not None and stated.delivered.ids == (msg,)
            assert receipt.blob("envelope") == msg and receipt.text("via") == "result"
            assert (receipt.text("by"), receipt.text("status")) == ("b.test", "delivered")
            assert receipt.blob("receipt") == result.blob("batch")
            assert receipt.text("jurisdiction") == "DE"

            # an auditor reads it from a bundle, on b's signed word
            await a.audit.sign()
            reads = await open_node_readonly(a.config)
            try:
                bundle = await export_bundle(reads, "a.test", 0, 2**62)
            finally:
                await reads.close()
            report = verify(bundle, [a_key])
            assert report.ok, report.problems
            lines = where(report, msg)
            assert any(
                "b.test reported delivered in DE; on b.test's signed word" in ln
                and "batch result" in ln
                for ln in lines
            ), lines

            # a receipt that still comes (a peer of an earlier version would send
            # one) is applied without moving anything: the status is final
            now = b.state.now_ms()
            late = PendingReceipt("a.test", "delivered", "", "DE", msg, ("bob@b.test",))
            await b.state.store.write(lambda tx: tx.add_pending_receipts([late], now))
            # b's own flusher (every 100 ms) may have written it already: either way, once
            await receipts.flush(b.state)
            assert (await kinds(b)).get("receipt") == 1

            async def received() -> bool:
                return "receipt" in await kinds(a)

            await wait_for(received, "b's late receipt at a.test")
            assert await status(s, a, doc["id"]) == first
    finally:
        await b.stop()
        await a.stop()
