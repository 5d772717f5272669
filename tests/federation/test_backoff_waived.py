"""A peer this node backs off from is retried at once when it contacts us.

Two whole nodes in the test's loop. Node a queues mail for b while b is down
and backs off with a 10-minute cap; b comes back and sends a a message. The
signed request proves b is up, so a's queue for b goes now: the mail arrives
within the test's bounded wait, far inside the backoff.
"""

from __future__ import annotations

from pathlib import Path

import aiohttp

from relay.node.app import Node
from relay.node.state import wall_clock_ms
from relay.storage.records import PeerState
from tests.federation.conftest import wait_until
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

SLOW_RETRY = {"retry_min": "10m", "retry_max": "10m"}


async def test_a_backing_off_peer_that_contacts_us_is_retried_at_once(tmp_path: Path) -> None:
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    b_key = write_node(b_dir, "b.test")
    b_port = await down_at_port(b_dir)  # b is down; a will look for it there

    a_key = write_node(
        a_dir,
        "a.test",
        peers=[PeerLine("b.test", b_key, f"http://127.0.0.1:{b_port}")],
        federation=SLOW_RETRY,
    )
    a = await start_node(a_dir)
    b_node: Node | None = None
    async with aiohttp.ClientSession() as http:
        try:
            code, doc = await send(http, a, ["bob@b.test"], "while you were down")
            assert code == 202, doc
            msg = doc["id"]
            assert a.state is not None
            store = a.state.store

            async def failed_once() -> PeerState | None:
                ps = await store.peer_state("b.test")
                return ps if ps.failures else None

            await wait_until(failed_once, what="a's first failed attempt to b")
            # The jitter could draw a short wait; make the backoff certainly long.
            long_wait = PeerState(3, wall_clock_ms() + 600_000, "b is down")
            await store.write(lambda tx: tx.save_peer_state("b.test", long_wait))
            a.state.wake_hop("b.test")  # the sender reads the new state and waits it out

            write_node(b_dir, "b.test", peers=[PeerLine("a.test", a_key, url_of(a))])
            listen_on(b_dir, b_port)
            b_node = await start_node(b_dir)
            code, doc = await send(http, b_node, ["alice@a.test"], "i am back")
            assert code == 202, doc

            async def delivered() -> bool:
                recipients = await status(http, a, msg)
                return bool(recipients["bob@b.test"]["status"] == "delivered")

            await wait_until(delivered, timeout=30, what="a's queued mail delivered to b")
            after = await store.peer_state("b.test")
            assert after.failures == 0 and after.next_try == 0
        finally:
            if b_node is not None:
                await b_node.stop()
            await a.stop()
