"""Outbound HTTP never follows a redirect (issue 10).

A batch, the peer's node document and a webhook are signed for (or fetched
from) one pinned URL. A "redirector" on 127.0.0.1 answers every request with
307 to a second server that counts what reaches it: nothing may, and each
3xx is a failed attempt whose log line says why.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from relay.federation.inbound import BATCH_PATH
from relay.protocol.keystr import public_key_string
from tests.federation.conftest import wait_until
from tests.inprocess import PeerLine, send, start_node, write_node


@dataclass
class Server:
    """Answers every request with `status` (and `location`); records method and path."""

    status: int
    location: str = ""
    hits: list[tuple[str, str]] = field(default_factory=list)
    port: int = 0

    async def handle(self, request: web.Request) -> web.Response:
        await request.read()
        self.hits.append((request.method, request.path))
        headers = {"Location": self.location + request.path} if self.location else {}
        return web.Response(status=self.status, headers=headers, text="moved")


async def _serve(server: Server) -> web.AppRunner:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", server.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    server.port = int(runner.addresses[0][1])
    return runner


@pytest.fixture
async def servers() -> AsyncIterator[tuple[Server, Server]]:
    target = Server(200)
    target_runner = await _serve(target)
    redirector = Server(307, location=f"http://127.0.0.1:{target.port}")
    redirector_runner = await _serve(redirector)
    try:
        yield redirector, target
    finally:
        await redirector_runner.cleanup()
        await target_runner.cleanup()


def _lines(caplog: pytest.LogCaptureFixture, name: str) -> list[dict[str, object]]:
    return [dict(getattr(r, "relay_fields", {})) for r in caplog.records if r.getMessage() == name]


async def test_batch_node_document_and_webhook_are_not_redirected(
    tmp_path: Path, servers: tuple[Server, Server], caplog: pytest.LogCaptureFixture
) -> None:
    redirector, target = servers
    base = f"http://127.0.0.1:{redirector.port}"
    write_node(
        tmp_path,
        "n.test",
        peers=[
            PeerLine("b.test", public_key_string(Ed25519PrivateKey.generate().public_key()), base)
        ],
        mailboxes={"alice": {"webhook": f"{base}/hooks/alice"}, "bob": {}},
    )
    caplog.set_level(logging.INFO, logger="relay")
    node = await start_node(tmp_path)
    try:
        async with aiohttp.ClientSession() as session:
            for to in ("bob@b.test", "alice@n.test"):
                code, doc = await send(session, node, [to], "where does this go?")
                assert code == 202, doc

        wanted = {("GET", "/.well-known/relay"), ("POST", BATCH_PATH), ("POST", "/hooks/alice")}

        async def all_tried() -> bool:
            logged = ("webhook_failed", "node_document_failed", "delivery")
            return wanted <= set(redirector.hits) and all(_lines(caplog, n) for n in logged)

        await wait_until(all_tried, what="a request of each kind")
    finally:
        await node.stop()
    assert target.hits == []
    moved = "HTTP 307 redirect to 'http://127.0.0.1:{}{}' not followed"
    assert {"peer": "b.test", "error": moved.format(target.port, "/.well-known/relay")} in [
        {k: f[k] for k in ("peer", "error")} for f in _lines(caplog, "node_document_failed")
    ]
    retries = [f for f in _lines(caplog, "delivery") if f.get("outcome") == "retry"]
    assert retries and retries[0]["error"] == moved.format(target.port, BATCH_PATH)
    hooks = _lines(caplog, "webhook_failed")
    assert hooks[0]["error"] == moved.format(target.port, "/hooks/alice")
