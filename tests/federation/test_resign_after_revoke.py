"""Mail queued under a signing key this node then revokes still arrives.

Node a queues mail for b while b is down, then revokes its signing key
(`relay key revoke`) and reloads; b's admin pins a's new key and revokes the
old one. Queued envelopes are signed again under the new key with the same
id, so b accepts them instead of refusing them as `rejected:signature`.
"""

from __future__ import annotations

from pathlib import Path

import aiohttp

from relay.config.keyops import revoke, revoke_peer_key
from relay.node.app import Node
from relay.protocol.keystr import key_id
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


async def test_queued_mail_is_re_signed_after_the_signing_key_is_revoked(tmp_path: Path) -> None:
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    b_key = write_node(b_dir, "b.test")
    b_port = await down_at_port(b_dir)
    old_key = write_node(
        a_dir, "a.test", peers=[PeerLine("b.test", b_key, f"http://127.0.0.1:{b_port}")]
    )
    a = await start_node(a_dir)
    b_node: Node | None = None
    async with aiohttp.ClientSession() as http:
        try:
            code, doc = await send(http, a, ["bob@b.test"], "signed with the old key")
            assert code == 202, doc
            msg = doc["id"]

            revocation = revoke(a_dir, key_id(old_key), now_ms=0)
            assert revocation.rotation is not None
            result = await a.reload()
            assert result.applied and "revoked_keys" in result.recheck_for
            assert a.state is not None
            new_key = a.state.key_string
            assert new_key != old_key

            write_node(b_dir, "b.test", peers=[PeerLine("a.test", old_key, url_of(a))])
            revoke_peer_key(b_dir, "a.test", old_key, new_keys=(new_key,))
            listen_on(b_dir, b_port)
            b_node = await start_node(b_dir)

            async def settled() -> str | None:
                st = str((await status(http, a, msg))["bob@b.test"]["status"])
                return None if st in ("queued", "sent") else st

            assert await wait_until(settled, timeout=30, what="a's mail settled") == "delivered"
        finally:
            if b_node is not None:
                await b_node.stop()
            await a.stop()
