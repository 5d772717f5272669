"""relay.node.audit in two running nodes: what a delivery logs at each end, the
tree heads signed over it, and the config entry of a reload."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from relay.node.app import Node
from relay.protocol.audit import CONFIG, decode_entry, decode_signed_head, verify_head
from relay.protocol.keystr import parse_public_key
from relay.protocol.merkle import root
from tests.inprocess import (
    PeerLine,
    down_at_port,
    listen_on,
    send,
    start_node,
    status,
    url_of,
    write_node,
)


async def wait_for(probe: Callable[[], Awaitable[Any]], what: str, timeout: float = 20) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while not (got := await probe()):
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)
    return got


async def entries(node: Node) -> list[Any]:
    assert node.state is not None
    return [decode_entry(r.entry) for r in await node.state.store.audit_entries(0, 10_000)]


@pytest.mark.slow
async def test_a_delivery_is_logged_at_both_ends_and_heads_cover_it(tmp_path: Path) -> None:
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    b_key = write_node(b_dir, "b.test")
    b_port = await down_at_port(b_dir)
    a_key = write_node(
        a_dir, "a.test", peers=[PeerLine("b.test", b_key, f"http://127.0.0.1:{b_port}")]
    )
    a = await start_node(a_dir)
    write_node(b_dir, "b.test", peers=[PeerLine("a.test", a_key, url_of(a))])
    listen_on(b_dir, b_port)
    b = await start_node(b_dir)
    try:
        assert a.state is not None and b.state is not None and a.audit is not None
        async with aiohttp.ClientSession() as s:
            code, doc = await send(s, a, ["bob@b.test"], "logged, never its text")
            assert code == 202, doc
            msg = bytes.fromhex(doc["id"])

            async def delivered() -> bool:
                got = await status(s, a, doc["id"])
                return bool(got["bob@b.test"]["status"] == "delivered")

            await wait_for(delivered, "the receipt at a.test")

        at_a, at_b = await entries(a), await entries(b)
        assert at_a[0].kind == CONFIG and at_a[0].text("reason") == "start"
        assert at_a[0].names("peers") == (f"b.test DE {b_key}",)
        assert at_a[0].text("key") == a_key
        about = [e for e in at_a if e.blob("envelope") == msg]
        assert [e.kind for e in about] == ["stored", "forwarded", "receipt"]
        stored, forwarded, receipt = about
        # the submit check's allow is kept with the stored envelope: its rule and policy
        assert (stored.text("from"), stored.text("hop")) == ("", "b.test")
        assert stored.text("policy") == a.state.policy_hash
        assert (forwarded.text("to"), forwarded.text("jurisdiction")) == ("b.test", "DE")
        assert (receipt.text("by"), receipt.text("status")) == ("b.test", "delivered")
        assert receipt.text("jurisdiction") == "DE"
        at_b_about = [e for e in at_b if e.blob("envelope") == msg]
        assert ("stored", "a.test") in [(e.kind, e.text("from")) for e in at_b_about]
        for log in (at_a, at_b):
            assert [e.seq for e in log] == list(range(len(log)))
            assert all(b"logged, never" not in repr(e.fields).encode() for e in log)

        signed = await a.audit.sign()
        verify_head(signed, parse_public_key(a_key))
        leaves = await a.state.store.audit_leaves(0, signed.head.size)
        assert signed.head.size == len(at_a) and signed.head.root == root(leaves)
        assert a.state.tree_head == signed

        # the next batch carries the head to b.test, which keeps it
        async with aiohttp.ClientSession() as s:
            code, doc = await send(s, a, ["bob@b.test"], "after the head")
            assert code == 202, doc

        async def witnessed() -> bool:
            assert b.state is not None
            kept = await b.state.store.witnessed_heads("a.test")
            return [w.wire for w in kept] == [signed.wire()]

        await wait_for(witnessed, "a.test's head kept at b.test")

        assert (await a.reload()).applied
        last = (await entries(a))[-1]
        assert (last.kind, last.text("reason")) == (CONFIG, "reload")
    finally:
        await b.stop()
        await a.stop()
    # the head signed at stop covers everything, the reload's entry included
    a2 = await start_node(a_dir)
    try:
        assert a2.state is not None
        heads = await a2.state.store.tree_heads()
        final = decode_signed_head(heads[-1].wire)
        assert final.head.size > len(at_a) + 1  # the reload's entry and the later mail
        verify_head(final, parse_public_key(a_key))
    finally:
        await a2.stop()
