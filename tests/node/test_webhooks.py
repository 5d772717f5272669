"""Webhooks: a live in-process node POSTs delivered messages to a test receiver.

The receiver is a small aiohttp server on 127.0.0.1 port 0 that answers from
a script (500 first, then 200). alice's webhook is declared in the node's own
jurisdiction; bob's in US, outside every residency set the node stamps, so
his messages must never reach it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from relay.config.files import load_config
from relay.config.keys import load_private_key
from relay.config.values import mailbox_token_sha256
from relay.errors import BadSignature, DigestMismatch
from relay.node.app import Node
from relay.node.webhooks import sign
from relay.protocol import httpsig
from relay.storage.sqlite.store import sqlite_store
from tests.inprocess import TIMEOUT, send, start_node, token, url_of, write_node


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    answered: int


@dataclass
class Receiver:
    """Records every request; answers with `script` in order, then 200."""

    script: list[int] = field(default_factory=list)
    requests: list[Received] = field(default_factory=list)
    port: int = 0

    async def handle(self, request: web.Request) -> web.Response:
        status = self.script.pop(0) if self.script else 200
        self.requests.append(
            Received(request.raw_path, dict(request.headers), await request.read(), status)
        )
        return web.Response(status=status, text="ok" if status < 300 else "try again")

    def to(self, path: str) -> list[Received]:
        return [r for r in self.requests if r.path == path]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver(script=[500])
    app = web.Application()
    app.router.add_post("/hooks/{name}", rec.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    rec.port = int(runner.addresses[0][1])
    try:
        yield rec
    finally:
        await runner.cleanup()


def write_hooked_node(directory: Path, rec: Receiver) -> None:
    base = f"http://127.0.0.1:{rec.port}/hooks"
    write_node(
        directory,
        "n.test",
        mailboxes={
            "alice": {"webhook": f"{base}/alice"},
            "bob": {"webhook": f"{base}/bob", "webhook_jurisdiction": "US"},
            "carol": {},
        },
        tables={"metrics": {"token_sha256": mailbox_token_sha256("m"), "mailbox_labels": True}},
    )


async def wait_until(probe: Callable[[], Awaitable[Any]], what: str, timeout: float = 15) -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if got := await probe():
            return got
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


async def inbox(session: aiohttp.ClientSession, node: Node, mailbox: str) -> list[dict[str, Any]]:
    async with session.get(
        url_of(node) + "/v1/inbox",
        headers={"Authorization": f"Bearer {token(mailbox)}"},
        timeout=TIMEOUT,
    ) as resp:
        assert resp.status == 200
        messages: list[dict[str, Any]] = (await resp.json())["messages"]
        return messages


def verify(req: Received, key: Ed25519PrivateKey, path: str, destination: str) -> None:
    """Check a webhook request as a receiver would, with the node's public key."""
    signed = httpsig.parse_request(method="POST", path=path, headers=req.headers)
    assert signed.origin == "n.test"
    assert signed.destination == destination
    assert signed.key_node == "n.test"
    httpsig.verify_request(signed, key.public_key())
    httpsig.check_content_digest(req.headers.get("Content-Digest"), req.body)
    assert req.headers["Content-Type"] == "application/json"


async def decisions(node: Node) -> list[tuple[str, str, str, str, bytes]]:
    assert node.state is not None
    rows = await sqlite_store(node.state.store).fetchall(
        "SELECT point, peer, outcome, rule, envelope FROM decisions WHERE point = 'webhook'"
        " ORDER BY seq"
    )
    return [(r[0], r[1], r[2], r[3], bytes(r[4])) for r in rows]


async def test_webhook_delivery_retry_ack_and_residency(tmp_path: Path, receiver: Receiver) -> None:
    node_dir = tmp_path / "n"
    write_hooked_node(node_dir, receiver)
    key = load_private_key(node_dir / "node.key")
    node = await start_node(node_dir)
    try:
        async with aiohttp.ClientSession() as session:
            code, doc = await send(session, node, ["alice@n.test"], "hello hook")
            assert code == 202, doc
            msg_id = doc["id"]

            # the first POST gets a 500, the retry a 200; only then is it acked
            await wait_until(lambda: _count(receiver, "/hooks/alice", 2), "a retried webhook")
            first, second = receiver.to("/hooks/alice")
            assert (first.answered, second.answered) == (500, 200)
            await wait_until(lambda: _empty(inbox(session, node, "alice")), "the ack after the 2xx")
            for req in (first, second):
                verify(req, key, "/hooks/alice", "alice@n.test")
            assert first.body == second.body
            assert first.headers["Signature"] != second.headers["Signature"]  # fresh nonce
            item = json.loads(second.body)
            assert item["id"] == msg_id
            assert item["text"] == "hello hook"
            assert item["from"] == "alice@n.test" and item["to"] == ["alice@n.test"]
            assert item["residency"] == ["DE"]
            assert set(item) == {
                "id", "from", "to", "origin", "created", "ctype", "residency", "body_b64", "text"
            }  # fmt: skip

            # a tampered body or another key does not verify
            with pytest.raises(DigestMismatch):
                httpsig.check_content_digest(second.headers["Content-Digest"], second.body + b" ")
            with pytest.raises(BadSignature):
                verify(second, Ed25519PrivateKey.generate(), "/hooks/alice", "alice@n.test")
            with pytest.raises(BadSignature):
                verify(second, key, "/hooks/other", "alice@n.test")

            # bob's webhook is declared in US: never sent, refused and recorded
            code, doc = await send(session, node, ["bob@n.test"], "not for the US")
            assert code == 202, doc
            bob_id = bytes.fromhex(doc["id"])
            got = await wait_until(lambda: _refusals(node), "the webhook refusal")
            assert got == [("webhook", "webhook:bob", "deny", "builtin:peer_jurisdiction", bob_id)]
            assert receiver.to("/hooks/bob") == []
            assert [m["id"] for m in await inbox(session, node, "bob")] == [doc["id"]]

            # carol has no webhook: her inbox is untouched
            assert (await send(session, node, ["carol@n.test"], "pull me"))[0] == 202
            assert len(await inbox(session, node, "carol")) == 1

            allowed = [d for d in await decisions(node) if d[2] == "allow"]
            assert allowed == [("webhook", "webhook:alice", "allow", "", bytes.fromhex(msg_id))]
            assert node.state is not None
            row = await sqlite_store(node.state.store).fetchone(
                "SELECT failures, delivered, last_error FROM webhook_state WHERE mailbox = 'alice'"
            )
            assert row is not None and (row[0], row[1], row[2]) == (0, 1, "")
            bearer = {"Authorization": "Bearer m"}
            async with session.get(
                url_of(node) + "/metrics", headers=bearer, timeout=TIMEOUT
            ) as resp:
                metrics = await resp.text()
            for line in (
                'relay_webhook_deliveries_total{mailbox="alice",outcome="retry"} 1.0',
                'relay_webhook_deliveries_total{mailbox="alice",outcome="ok"} 1.0',
                'relay_webhook_deliveries_total{mailbox="bob",outcome="refused"} 1.0',
            ):
                assert line in metrics.splitlines(), line
    finally:
        await node.stop()

    # after a restart the cursor holds: only the new message is posted
    node = await start_node(node_dir)
    try:
        async with aiohttp.ClientSession() as session:
            code, doc = await send(session, node, ["alice@n.test"], "after restart")
            assert code == 202, doc
            await wait_until(lambda: _count(receiver, "/hooks/alice", 3), "the next webhook")
            assert json.loads(receiver.to("/hooks/alice")[2].body)["id"] == doc["id"]
            assert len(receiver.to("/hooks/alice")) == 3
            # the allow decision commits after the receiver has answered
            taken = await wait_until(lambda: _decisions_at_least(node, 3), "the third decision")
            assert len(taken) == 3 and len({d[4] for d in taken}) == 3  # none taken twice
    finally:
        await node.stop()


async def _count(rec: Receiver, path: str, n: int) -> bool:
    return len(rec.to(path)) >= n


async def _empty(messages: Awaitable[list[dict[str, Any]]]) -> bool:
    return not await messages


async def _decisions_at_least(node: Node, n: int) -> list[tuple[str, str, str, str, bytes]]:
    taken = await decisions(node)
    return taken if len(taken) >= n else []


async def _refusals(node: Node) -> list[tuple[str, str, str, str, bytes]]:
    return [d for d in await decisions(node) if d[2] == "deny"]


def test_signing_profile_is_the_federation_one_bound_to_the_mailbox(tmp_path: Path) -> None:
    """The exact headers a receiver sees, over a known body (see docs/webhooks.md)."""
    write_node(tmp_path, "n.test", mailboxes={"alice": {"webhook": "https://h.example/in/a%20b"}})
    config = load_config(tmp_path)
    key = load_private_key(config.node.key_file)

    class State:  # the parts of NodeState that signing reads
        name = "n.test"
        key_id = "k1"

        def __init__(self) -> None:
            self.key = key

        def now_ms(self) -> int:
            return 1_700_000_000_000

        def random(self, n: int) -> bytes:
            return b"\x01" * n

    from yarl import URL

    body = b'{"id":"00"}'
    headers = sign(State(), "alice", URL("https://h.example/in/a%20b"), body)  # type: ignore[arg-type]
    assert headers["Relay-Origin"] == "n.test"
    assert headers["Relay-Destination"] == "alice@n.test"
    assert headers["Content-Digest"] == httpsig.content_digest(body)
    assert headers["Signature-Input"] == (
        'relay=("@method" "@path" "content-digest" "relay-origin" "relay-destination")'
        ';created=1700000000;nonce="AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";'
        'keyid="n.test#k1";alg="ed25519"'
    )
    signed = httpsig.parse_request(method="POST", path="/in/a%20b", headers=headers)
    httpsig.verify_request(signed, key.public_key())
