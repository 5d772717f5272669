"""In-process nodes for the federation tests (DESIGN §10, second layer).

A node "n.test" (jurisdiction DE) runs inside the test's event loop on
127.0.0.1 port 0 with a frozen clock. The test plays its pinned peer "a.test"
and builds every batch by hand with the same functions the node uses
(relay.protocol.envelope, relay.protocol.httpsig), so that any part can be tampered with.
"x.test" is a second pinned origin (no url) whose envelopes a.test relays.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from relay.config.files import load_config
from relay.config.keys import generate_key_file
from relay.config.values import mailbox_token_sha256
from relay.federation.inbound import BATCH_PATH
from relay.node.app import Node
from relay.node.state import NodeState
from relay.protocol import httpsig
from relay.protocol.batch import (
    DELIVERY_HEADER,
    DELIVERY_V1,
    Batch,
    BatchItem,
    BatchResult,
    encode_batch,
    open_result,
)
from relay.protocol.envelope import RECEIPT_CTYPE, Envelope, make_header, seal
from relay.protocol.keystr import key_id, public_key_string
from relay.protocol.receipt import Receipt, encode_receipt
from relay.storage.backends import open_storage
from relay.storage.sqlite.store import sqlite_store

NODE = "n.test"
JURISDICTION = "DE"
NOW_MS = 1_700_000_000_000
MAX_BODY = 8192
TOKEN = "alice-token-for-tests"
TIMEOUT = aiohttp.ClientTimeout(total=15)


class Clock:
    """A clock in unix ms that only moves when a test moves it."""

    def __init__(self, now_ms: int = NOW_MS) -> None:
        self.now_ms = now_ms

    def __call__(self) -> int:
        return self.now_ms


@dataclass(frozen=True)
class Identity:
    """A node the test speaks for: its name and private key."""

    name: str
    key: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)

    @property
    def public(self) -> Ed25519PublicKey:
        return self.key.public_key()

    @property
    def key_string(self) -> str:
        return public_key_string(self.public)

    @property
    def key_id(self) -> str:
        return key_id(self.key_string)


@dataclass(frozen=True)
class Pinned:
    """A `[[peers]]` entry to write into the node's config."""

    name: str
    keys: tuple[str, ...]
    url: str | None = None
    jurisdiction: str = JURISDICTION


def _toml_str(s: str) -> str:
    return json.dumps(s)


def write_node_toml(
    directory: Path,
    *,
    peers: Sequence[Pinned],
    max_body_bytes: int = MAX_BODY,
    federation: dict[str, str] | None = None,
) -> Ed25519PrivateKey:
    """Write node.toml and a fresh node.key into `directory`; return the node key."""
    directory.mkdir(parents=True, exist_ok=True)
    key = generate_key_file(directory / "node.key")
    fed = {"receipt_window": "1h", **(federation or {})}
    lines = [
        "[node]",
        f'name = "{NODE}"',
        f'jurisdiction = "{JURISDICTION}"',
        'listen = "127.0.0.1:0"',
        'key_file = "node.key"',
        'database = "relay.db"',
        f"max_body_bytes = {max_body_bytes}",
        "",
        "[policy]",
        f'default_residency = ["{JURISDICTION}"]',
        'allowed_residency = ["EU"]',
        "[policy.groups]",
        'EU = ["DE", "FR", "NL"]',
        "",
        "[federation]",
        *(f"{k} = {_toml_str(v)}" for k, v in fed.items()),
        "",
    ]
    for p in peers:
        lines += ["[[peers]]", f"name = {_toml_str(p.name)}"]
        if p.url is not None:
            lines.append(f"url = {_toml_str(p.url)}")
        lines += [
            f"jurisdiction = {_toml_str(p.jurisdiction)}",
            "keys = [" + ", ".join(_toml_str(k) for k in p.keys) + "]",
            "",
        ]
    for name in ("alice", "bob"):
        digest = mailbox_token_sha256(TOKEN if name == "alice" else f"{name}-token")
        lines += ["[[mailboxes]]", f'name = "{name}"', f'token_sha256 = "{digest}"', ""]
    (directory / "node.toml").write_text("\n".join(lines))
    return key


@asynccontextmanager
async def lone_node(directory: Path) -> AsyncIterator[NodeState]:
    """The state of a node with no peers written into `directory`, its storage open."""
    key = write_node_toml(directory, peers=[])
    config = load_config(directory)
    storage = await open_storage(config.node.database)
    try:
        yield NodeState(config, key, storage)
    finally:
        await storage.close()


async def start_node(directory: Path, clock: Callable[[], int]) -> Node:
    """Load `directory`'s config and start a node on it."""
    node = Node(load_config(directory), clock=clock)
    with warnings.catch_warnings():
        # relay.node.app passes shutdown_timeout to its sites, which aiohttp 3.14
        # deprecates; a warning there is not what these tests are about.
        warnings.filterwarnings(
            "ignore", "shutdown_timeout should be set on BaseRunner", DeprecationWarning
        )
        await node.start()
    assert node.port > 0
    return node


async def wait_until(
    probe: Callable[[], Awaitable[Any]], *, timeout: float = 10.0, what: str = ""
) -> Any:
    """Poll `probe` until it returns something truthy; fail after `timeout` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last: Any = None
    while loop.time() < deadline:
        last = await probe()
        if last:
            return last
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or probe}: {last!r}")


@dataclass(frozen=True)
class Reply:
    """What the node answered to one request."""

    status: int
    body: bytes
    content_type: str

    def error(self) -> tuple[str, str]:
        doc = json.loads(self.body)
        assert isinstance(doc, dict), doc
        assert set(doc) == {"error", "detail"}, doc
        return str(doc["error"]), str(doc["detail"])


class Harness:
    """A running node plus the peers the test speaks for."""

    def __init__(
        self,
        node: Node,
        clock: Callable[[], int],
        node_key: Ed25519PrivateKey,
        session: aiohttp.ClientSession,
        a: Identity,
        a2: Identity,
        x: Identity,
    ) -> None:
        self.node = node
        self.clock = clock
        self.node_key = node_key
        self.session = session
        self.a = a  # the pinned peer the test speaks as
        self.a2 = a2  # a second key pinned for a.test
        self.x = x  # a pinned origin without url, relayed by a.test

    @property
    def state(self) -> NodeState:
        assert self.node.state is not None
        return self.node.state

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.node.port}"

    async def restart(self) -> None:
        """Stop the node and start a new one on the same directory and clock."""
        await self.node.stop()
        self.node = await start_node(self.node.config.path.parent, self.clock)

        # Stopping flushed receipts toward a.test, which has no url: wait until
        # its sender has failed once and backs off (the frozen clock keeps it
        # there), so that it writes nothing while the test compares row counts.
        async def backing_off() -> bool:
            hops = await sqlite_store(self.state.store).fetchall("SELECT DISTINCT hop FROM queue")
            for (hop,) in hops:
                row = await sqlite_store(self.state.store).fetchone(
                    "SELECT next_try FROM peer_state WHERE peer = ?", (hop,)
                )
                if row is None or row[0] <= self.clock():
                    return False
            return True

        await wait_until(backing_off, what="senders backing off")

    # --- building envelopes and batches ----------------------------------------

    def envelope(
        self,
        *,
        origin: Identity | None = None,
        signer: Ed25519PrivateKey | None = None,
        key_id: str | None = None,
        ident: bytes | None = None,
        kind: str = "message",
        to: Sequence[str] = ("bob@n.test",),
        dest: str = NODE,
        created: int | None = None,
        expires: int | None = None,
        residency: Sequence[str] = (JURISDICTION,),
        ctype: str = "text/plain; charset=utf-8",
        payload: bytes | None = None,
        max_hops: int = 8,
        sender: str | None = None,
    ) -> Envelope:
        """A sealed envelope; by default a.test -> bob@n.test, signed by a.test.

        The default payload is unique, so each envelope adds its own payload row.
        """
        who = origin or self.a
        if payload is None:
            payload = b"hello " + os.urandom(8).hex().encode()
        now = self.clock()
        created = now - 1000 if created is None else created
        header = make_header(
            id=ident or os.urandom(16),
            kind=kind,
            origin=who.name,
            key_id=key_id or who.key_id,
            sender=sender or f"alice@{who.name}",
            to=to,
            dest=dest,
            created=created,
            expires=created + 3_600_000 if expires is None else expires,
            residency=residency,
            ctype=ctype,
            payload=payload,
            max_hops=max_hops,
        )
        return seal(header, payload, signer or who.key)

    def item(self, env: Envelope, trace: Sequence[str] | None = None) -> BatchItem:
        """A batch item; the trace defaults to origin (and a.test if it relays)."""
        if trace is None:
            origin = env.header.origin
            trace = (origin,) if origin == self.a.name else (origin, self.a.name)
        return BatchItem(env.header_bytes, env.signature, env.payload, tuple(trace))

    def receipt(
        self,
        writer: Identity,
        entries: Sequence[tuple[bytes, tuple[str, ...]]],
        status: str = "delivered",
    ) -> BatchItem:
        """A receipt item from `writer`'s postmaster to n.test's about `entries`."""
        payload = encode_receipt(
            Receipt(
                status=status,
                reason="" if status == "delivered" else "unknown_mailbox",
                at=self.clock(),
                jurisdiction=JURISDICTION,
                mode="enforce",
                entries=tuple(entries),
            )
        )
        env = self.envelope(
            origin=writer,
            kind="receipt",
            sender=f"postmaster@{writer.name}",
            to=[f"postmaster@{NODE}"],
            ctype=RECEIPT_CTYPE,
            payload=payload,
        )
        return self.item(env)

    def body(self, items: Sequence[BatchItem], batch_id: bytes | None = None) -> bytes:
        return encode_batch(Batch(batch_id or os.urandom(16), tuple(items)))

    def sign(
        self,
        body: bytes,
        *,
        signer: Identity | None = None,
        key: Ed25519PrivateKey | None = None,
        key_id: str | None = None,
        origin: str | None = None,
        destination: str = NODE,
        created: int | None = None,
        nonce: bytes | None = None,
        digest_of: bytes | None = None,
    ) -> dict[str, str]:
        """Request headers as a.test (or `signer`) would send them; every part overridable."""
        who = signer or self.a
        headers = httpsig.sign_request(
            method="POST",
            path=BATCH_PATH,
            content_digest=httpsig.content_digest(body if digest_of is None else digest_of),
            origin=origin or who.name,
            destination=destination,
            key=key or who.key,
            key_id=key_id or who.key_id,
            created=self.clock() // 1000 if created is None else created,
            nonce=nonce or os.urandom(32),
        )
        headers["Content-Type"] = "application/msgpack"
        return headers

    # --- talking to the node -----------------------------------------------------

    async def post(self, body: bytes, headers: dict[str, str], *, path: str = BATCH_PATH) -> Reply:
        async with self.session.post(
            self.url + path, data=body, headers=headers, timeout=TIMEOUT
        ) as resp:
            data = await resp.read()
            return Reply(resp.status, data, resp.content_type)

    async def send(
        self,
        items: Sequence[BatchItem],
        *,
        batch_id: bytes | None = None,
        nonce: bytes | None = None,
        delivery: bool = False,
    ) -> BatchResult:
        """Post a correctly signed batch; expect 200 and return the verified result.

        `delivery`: ask for delivery-v1 (protocol.md §22), as this version's senders do.
        """
        batch_id = batch_id or os.urandom(16)
        nonce = nonce or os.urandom(32)
        body = self.body(items, batch_id)
        headers = self.sign(body, nonce=nonce)
        if delivery:
            headers[DELIVERY_HEADER] = DELIVERY_V1
        reply = await self.post(body, headers)
        assert reply.status == 200, reply.body[:500]
        assert reply.content_type == "application/msgpack"
        result = open_result(reply.body, self.node_key.public_key(), delivery=delivery)
        assert result.batch_id == batch_id
        assert result.nonce == base64.b64encode(nonce).decode()
        return result

    async def counts(self) -> dict[str, int]:
        """Rows per table, without the audit log's: its entries mirror the rows
        counted here (tests/storage/test_contract_audit.py checks them)."""
        counts = await self.state.store.row_counts()
        return {t: n for t, n in counts.items() if not t.startswith("audit_")}

    async def refused(
        self,
        body: bytes,
        headers: dict[str, str],
        status: int,
        code: str,
        *,
        path: str = BATCH_PATH,
    ) -> str:
        """Post, expect the JSON refusal `code` with `status` and nothing stored; return detail."""
        before = await self.counts()
        reply = await self.post(body, headers, path=path)
        assert reply.status == status, (reply.status, reply.body[:500])
        assert reply.content_type == "application/json"
        got, detail = reply.error()
        assert got == code, detail
        assert detail
        assert await self.counts() == before
        return detail

    async def still_serves(self) -> None:
        """A good batch after a refusal is accepted and stored."""
        env = self.envelope()
        result = await self.send([self.item(env)])
        assert result.results == {env.header.id: "accepted"}
        assert await self.stored(env.header.origin, env.header.id)

    async def stored(self, origin: str, ident: bytes) -> bool:
        row = await sqlite_store(self.state.store).fetchone(
            "SELECT 1 FROM envelopes WHERE origin = ? AND id = ?", (origin, ident)
        )
        return row is not None

    # --- the client API ------------------------------------------------------------

    async def submit(self, to: Sequence[str], text: str = "hi") -> str:
        async with self.session.post(
            self.url + "/v1/messages",
            json={"to": list(to), "text": text},
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=TIMEOUT,
        ) as resp:
            doc = await resp.json()
            assert resp.status == 202, doc
            return str(doc["id"])

    async def submit_batch(self, messages: Sequence[dict[str, Any]]) -> list[str]:
        async with self.session.post(
            self.url + "/v1/messages/batch",
            json={"messages": list(messages)},
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=TIMEOUT,
        ) as resp:
            doc = await resp.json()
            assert resp.status == 202, doc
            return [str(i) for i in doc["ids"]]

    async def status(self, msg_id: str) -> dict[str, dict[str, Any]]:
        """Per-recipient status of a message alice sent."""
        async with self.session.get(
            self.url + f"/v1/messages/{msg_id}",
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=TIMEOUT,
        ) as resp:
            doc = await resp.json()
            assert resp.status == 200, doc
            recipients: dict[str, dict[str, Any]] = doc["recipients"]
            return recipients


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def max_body_bytes() -> int:
    """The harness node's `max_body_bytes`; a test module may override this fixture."""
    return MAX_BODY


@pytest.fixture
async def harness(tmp_path: Path, clock: Clock, max_body_bytes: int) -> AsyncIterator[Harness]:
    """n.test running with a frozen clock; a.test (two keys) and x.test pinned, no urls."""
    a, a2, x = Identity("a.test"), Identity("a.test"), Identity("x.test")
    node_dir = tmp_path / "n"
    node_key = write_node_toml(
        node_dir,
        peers=[
            Pinned(a.name, (a.key_string, a2.key_string)),
            Pinned(x.name, (x.key_string,)),
        ],
        max_body_bytes=max_body_bytes,
    )
    node = await start_node(node_dir, clock)
    h = Harness(node, clock, node_key, aiohttp.ClientSession(), a, a2, x)
    try:
        yield h
    finally:
        await h.session.close()
        await h.node.stop()
