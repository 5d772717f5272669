"""A node relaying envelopes for other nodes (relay.federation.relaying), in process.

n.test (DE) relays for origins a.test and o.test. a.test is pinned (the test
speaks as it); o.test is not pinned: it is trusted only through a
certificate by reg.test, an authority n.test trusts for DE and FR. The next
hop b.test is a small capturing server pinned with its URL; it accepts
everything and records what it was sent.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from relay.config.model import DAY_MS
from relay.federation.inbound import BATCH_PATH
from relay.protocol import httpsig
from relay.protocol.batch import BatchItem, BatchResult, decode_batch, sign_result
from relay.protocol.certificate import Certificate, sign_certificate
from relay.protocol.envelope import Envelope, peek_id
from relay.protocol.keystr import private_key_from_seed, public_key_string
from relay.storage.sqlite.store import sqlite_store
from tests.federation.conftest import (
    NODE,
    NOW_MS,
    Clock,
    Harness,
    Identity,
    Pinned,
    start_node,
    wait_until,
    write_node_toml,
)

AUTHORITY = private_key_from_seed(bytes([7]) * 32)


@dataclass
class Capture:
    """The next hop: accepts every batch, keeps every item it got."""

    identity: Identity
    items: list[BatchItem] = field(default_factory=list)
    runner: web.AppRunner | None = None
    port: int = 0

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post(BATCH_PATH, self.handle)
        self.runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        self.port = int(self.runner.addresses[0][1])

    async def handle(self, request: web.Request) -> web.Response:
        batch = decode_batch(await request.read())
        self.items.extend(batch.items)
        nonce = request.headers["Signature-Input"].split('nonce="')[1].split('"')[0]
        ids = [peek_id(it.header_bytes) for it in batch.items]
        result = BatchResult(batch.batch_id, nonce, dict.fromkeys(ids, "accepted"))
        body = sign_result(result, self.identity.key)
        return web.Response(body=body, content_type="application/msgpack")


def certificate(origin: Identity, jurisdiction: str = "DE") -> bytes:
    cert = Certificate(
        origin.name,
        (origin.key_string,),
        jurisdiction,
        "http://127.0.0.1:9",
        NOW_MS - DAY_MS,
        NOW_MS + DAY_MS,
        "reg.test",
    )
    return sign_certificate(cert, AUTHORITY)


@dataclass
class Relay:
    h: Harness
    o: Identity
    next_hop: Capture

    def forwarded(self, n: int) -> Callable[[], Awaitable[bool]]:
        """A probe for wait_until: the next hop has received `n` items."""

        async def probe() -> bool:
            return len(self.next_hop.items) >= n

        return probe


@pytest.fixture
async def relay(tmp_path: Path, clock: Clock) -> AsyncIterator[Relay]:
    a, a2, x, o = (Identity(n) for n in ("a.test", "a.test", "x.test", "o.test"))
    b = Identity("b.test")
    capture = Capture(b)
    await capture.start()
    node_dir = tmp_path / "n"
    node_key = write_node_toml(
        node_dir,
        peers=[
            Pinned(a.name, (a.key_string, a2.key_string)),
            Pinned(x.name, (x.key_string,)),
            Pinned(b.name, (b.key_string,), url=capture_url(capture)),
        ],
        federation={"retry_min": "10ms", "retry_max": "50ms"},
    )
    with (node_dir / "node.toml").open("a") as f:
        f.write(
            "\n[[routes]]\n"
            'to = "*.far.test"\n'
            'via = "b.test"\n'
            "[[routes]]\n"
            'to = "*.back.test"\n'
            'via = "a.test"\n'
            "[relay]\n"
            'for_origins = ["a.test", "o.test"]\n'
            "[[authorities]]\n"
            'name = "reg.test"\n'
            f'key = "{public_key_string(AUTHORITY.public_key())}"\n'
            'jurisdictions = ["DE", "FR"]\n'
        )
    node = await start_node(node_dir, clock)
    try:
        async with aiohttp.ClientSession() as session:
            yield Relay(Harness(node, clock, node_key, session, a, a2, x), o, capture)
    finally:
        await node.stop()
        assert capture.runner is not None
        await capture.runner.cleanup()


def capture_url(capture: Capture) -> str:
    return f"http://127.0.0.1:{capture.port}"


def for_b(r: Relay, *, max_hops: int = 8, signer: Ed25519PrivateKey | None = None) -> Envelope:
    return r.h.envelope(to=("bob@b.test",), dest="b.test", max_hops=max_hops, signer=signer)


async def test_a_relayed_envelope_is_queued_for_its_next_hop(relay: Relay) -> None:
    env = for_b(relay)
    far = relay.h.envelope(to=("carol@z.far.test",), dest="z.far.test")
    result = await relay.h.send([relay.h.item(env), relay.h.item(far)])
    assert result.results == {env.header.id: "accepted", far.header.id: "accepted"}
    counts = await relay.h.counts()
    assert counts["inbox"] == 0 and counts["pending_receipts"] == 0
    await wait_until(relay.forwarded(2), what="both forwarded")
    got = {peek_id(it.header_bytes): it for it in relay.next_hop.items}
    assert got[env.header.id].trace == ("a.test", NODE)  # this node appended itself
    assert got[far.header.id].trace == ("a.test", NODE)
    assert got[env.header.id].header_bytes == env.header_bytes  # the exact bytes travel
    assert got[env.header.id].signature == env.signature
    row = await sqlite_store(relay.h.state.store).fetchone(
        "SELECT hop, from_peer FROM envelopes WHERE id = ?", (far.header.id,)
    )
    assert row is not None and tuple(row) == ("b.test", "a.test")


async def test_relaying_not_allowed_is_not_for_us(relay: Relay) -> None:
    env = relay.h.envelope(origin=relay.h.x, to=("bob@b.test",), dest="b.test")
    before = await relay.h.counts()
    result = await relay.h.send([relay.h.item(env)])
    assert result.results == {env.header.id: "rejected:not_for_us"}
    after = await relay.h.counts()
    assert {k: after[k] - before[k] for k in after if after[k] != before[k]} == {
        "batches": 1,
        "nonces": 1,
    }


async def test_a_trace_that_would_pass_max_hops_is_refused(relay: Relay) -> None:
    one_hop = for_b(relay, max_hops=1)
    two_hops = for_b(relay, max_hops=2)
    result = await relay.h.send([relay.h.item(one_hop), relay.h.item(two_hops)])
    assert result.results == {one_hop.header.id: "rejected:hops", two_hops.header.id: "accepted"}


async def test_a_route_back_into_the_trace_is_a_loop(relay: Relay) -> None:
    env = relay.h.envelope(to=("bob@y.back.test",), dest="y.back.test")
    result = await relay.h.send([relay.h.item(env)])
    assert result.results == {env.header.id: "rejected:loop"}


async def test_a_destination_it_cannot_reach_is_refused_before_storing(relay: Relay) -> None:
    env = relay.h.envelope(to=("bob@q.test",), dest="q.test")  # neither pinned nor routed
    result = await relay.h.send([relay.h.item(env)])
    assert result.results == {env.header.id: "rejected:residency"}
    assert not await relay.h.stored("a.test", env.header.id)


async def test_a_relay_verifies_the_origin_signature_even_from_the_origin(
    relay: Relay,
) -> None:
    """a.test sends its own envelope with a bad envelope signature: refused
    whether this node relays it or is its destination."""
    forged_for_b = for_b(relay, signer=relay.h.a2.key)  # a2's signature, a's key id
    forged_for_n = relay.h.envelope(signer=relay.h.a2.key)
    result = await relay.h.send([relay.h.item(forged_for_b), relay.h.item(forged_for_n)])
    assert result.results[forged_for_b.header.id] == "rejected:signature"
    assert result.results[forged_for_n.header.id] == "rejected:signature"


async def test_an_origins_certificate_carried_in_the_item_lets_it_through(
    relay: Relay,
) -> None:
    o = relay.o
    bare = relay.h.envelope(origin=o, to=("bob@b.test",), dest="b.test")
    result = await relay.h.send([relay.h.item(bare)])
    assert result.results == {bare.header.id: "rejected:unknown_origin"}

    wrong = certificate(o, "KZ")  # reg.test may not attest KZ here
    env = relay.h.envelope(origin=o, to=("bob@b.test",), dest="b.test")
    item = relay.h.item(env)
    with_wrong = BatchItem(item.header_bytes, item.signature, item.payload, item.trace, (wrong,))
    result = await relay.h.send([with_wrong])
    assert result.results == {env.header.id: "rejected:unknown_origin"}

    cert = certificate(o)
    carried = BatchItem(item.header_bytes, item.signature, item.payload, item.trace, (cert,))
    second = relay.h.envelope(origin=o, to=("bob@b.test",), dest="b.test")
    result = await relay.h.send([carried, relay.h.item(second)])  # one certificate serves both
    assert result.results == {env.header.id: "accepted", second.header.id: "accepted"}
    row = await sqlite_store(relay.h.state.store).fetchone("SELECT name, blob FROM certificates")
    assert row is not None and (row[0], bytes(row[1])) == ("o.test", cert)

    await wait_until(relay.forwarded(2), what="forwarded")
    first, other = relay.next_hop.items
    assert first.trace == ("o.test", "a.test", NODE)
    assert first.certificates == (cert,)  # carried on, once per origin per batch
    assert other.certificates is None


async def test_a_certified_sender_introduces_itself_in_relay_certificate(relay: Relay) -> None:
    o = relay.o
    env = relay.h.envelope(origin=o)
    plain = BatchItem(env.header_bytes, env.signature, env.payload, ("o.test",))
    body = relay.h.body([plain])
    detail = await relay.h.refused(body, relay.h.sign(body, signer=o), 401, "unknown_sender")
    assert "o.test" in detail
    wrong = relay.h.sign(body, signer=o)  # a certificate for another jurisdiction counts not
    wrong[httpsig.CERTIFICATE_HEADER] = httpsig.certificate_header([certificate(o, "KZ")])
    await relay.h.refused(body, wrong, 401, "unknown_sender")
    stolen = relay.h.sign(body, signer=relay.h.a2, origin="o.test")  # o's certificate, a2's key
    stolen[httpsig.CERTIFICATE_HEADER] = httpsig.certificate_header([certificate(o)])
    await relay.h.refused(body, stolen, 401, "unknown_key")
    headers = relay.h.sign(body, signer=o)
    headers[httpsig.CERTIFICATE_HEADER] = httpsig.certificate_header([certificate(o)])
    reply = await relay.h.post(body, headers)
    assert reply.status == 200, reply.body[:300]
    assert await relay.h.stored("o.test", env.header.id)


async def test_a_sender_without_relay_certificate_is_read_only_a_little(relay: Relay) -> None:
    """A sender of an earlier version carries its certificate in the body: a large
    body is refused before a byte of it is read; a small one is read to find it."""
    o = relay.o
    cfg = relay.h.state.config
    relay.h.state.config = replace(cfg, limits=replace(cfg.limits, unauthenticated_body_bytes=2048))
    big = relay.h.envelope(origin=o, payload=b"x" * 4096)
    item = BatchItem(big.header_bytes, big.signature, big.payload, ("o.test",), (certificate(o),))
    body = relay.h.body([item])
    detail = await relay.h.refused(body, relay.h.sign(body, signer=o), 413, "too_large")
    assert "Relay-Certificate" in detail
    env = relay.h.envelope(origin=o)
    item = BatchItem(env.header_bytes, env.signature, env.payload, ("o.test",), (certificate(o),))
    body = relay.h.body([item])
    reply = await relay.h.post(body, relay.h.sign(body, signer=o))
    assert reply.status == 200, reply.body[:300]
    assert await relay.h.stored("o.test", env.header.id)


async def test_the_node_document_serves_no_certificates_by_default(relay: Relay) -> None:
    async with relay.h.session.get(relay.h.url + "/.well-known/relay") as resp:
        doc = json.loads(await resp.read())
    assert doc["certificates"] == []


async def test_at_most_two_strangers_bodies_are_read_at_once(relay: Relay) -> None:
    o = relay.o
    env = relay.h.envelope(origin=o)
    item = BatchItem(env.header_bytes, env.signature, env.payload, ("o.test",), (certificate(o),))
    body = relay.h.body([item])
    headers = relay.h.sign(body, signer=o)
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    raw = (
        f"POST {BATCH_PATH} HTTP/1.1\r\nHost: n.test\r\nContent-Length: {len(body)}\r\n{head}\r\n"
    ).encode() + body[:10]  # the rest never comes
    port = urlsplit(relay.h.url).port
    held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
    try:
        for _, writer in held:
            writer.write(raw)
            await writer.drain()
        bp = relay.h.state.backpressure

        async def reading() -> bool:
            return bp.unauthenticated_reads == 2

        await wait_until(reading, what="two bodies being read")
        detail = await relay.h.refused(body, relay.h.sign(body, signer=o), 503, "busy")
        assert "Relay-Certificate" in detail
    finally:
        for _, writer in held:
            writer.close()

    async def released() -> bool:
        return bp.unauthenticated_reads == 0

    await wait_until(released, what="the places given back")
    reply = await relay.h.post(body, relay.h.sign(body, signer=o))
    assert reply.status == 200, reply.body[:300]
