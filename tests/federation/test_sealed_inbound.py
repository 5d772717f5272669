"""Sealed envelopes at a real node's batch endpoint (protocol §21): one opens and
lands in the inbox; a tampered ciphertext, a wrong seal key id, a wrap for
another key and a revoked seal key are each refused with their item code."""

from __future__ import annotations

import dataclasses
import datetime
import os
from pathlib import Path

import aiohttp
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from relay.config.model import RetentionConfig
from relay.config.sealkeys import generate_seal_key_file
from relay.federation.inbound import BATCH_PATH
from relay.node.retention import purge
from relay.protocol import httpsig
from relay.protocol.batch import Batch, BatchItem, encode_batch, open_result
from relay.protocol.envelope import Envelope, make_header, peek_id, seal
from relay.protocol.keystr import key_id, parse_public_key, public_key_string
from relay.protocol.sealing import CLASSIC, SealPublicKey, seal_body, seal_secret, wrap_dek
from relay.storage.sqlite.store import sqlite_store
from tests.inprocess import TIMEOUT, PeerLine, start_node, token, url_of, write_node

A_KEY = Ed25519PrivateKey.generate()
A_PUB = public_key_string(A_KEY.public_key())


def now_ms() -> int:
    return int(datetime.datetime.now(datetime.UTC).timestamp() * 1000)


def sealed(to: SealPublicKey, text: bytes, *, key_id_as: str | None = None) -> Envelope:
    """An envelope a.test -> bob@b.test whose body is sealed to `to`."""
    now, ident, dek = now_ms(), os.urandom(16), os.urandom(32)
    wrap = wrap_dek(to, dek, "a.test", "b.test")
    info, ct = seal_body(
        body=text, salt=os.urandom(32), dek=dek, wrap=wrap, pub=to, env_id=ident,
        origin="a.test", dest="b.test",
    )  # fmt: skip
    if key_id_as is not None:
        info = dataclasses.replace(info, key=key_id_as)
    header = make_header(
        id=ident, kind="message", origin="a.test", key_id=key_id(A_PUB), sender="alice@a.test",
        to=["bob@b.test"], dest="b.test", created=now, expires=now + 3_600_000,
        residency=["DE"], ctype="text/plain; charset=utf-8", payload=ct, sealed=info,
    )  # fmt: skip
    return seal(header, ct, A_KEY)


def request(items: list[BatchItem]) -> tuple[bytes, dict[str, str]]:
    body = encode_batch(Batch(os.urandom(16), tuple(items)))
    headers = httpsig.sign_request(
        method="POST", path=BATCH_PATH, content_digest=httpsig.content_digest(body),
        origin="a.test", destination="b.test", key=A_KEY, key_id=key_id(A_PUB),
        created=now_ms() // 1000, nonce=os.urandom(32),
    )  # fmt: skip
    headers["Content-Type"] = "application/msgpack"
    return body, headers


# the payloads of stored messages (the delivered receipt b writes has one too)
MESSAGE_PAYLOADS = (
    "SELECT p.body FROM payloads p JOIN envelopes e ON e.payload_sha = p.sha"
    " WHERE e.kind = 'message'"
)


def item(env: Envelope, payload: bytes | None = None) -> BatchItem:
    p = env.payload if payload is None else payload
    return BatchItem(env.header_bytes, env.signature, p, ("a.test",))


async def test_sealed_items_at_the_destination(tmp_path: Path) -> None:
    b_dir = tmp_path / "b"
    b_pub = parse_public_key(write_node(b_dir, "b.test", peers=[PeerLine("a.test", A_PUB)]))
    own = generate_seal_key_file(b_dir / "node.seal", CLASSIC)
    revoked = generate_seal_key_file(b_dir / "old.seal", CLASSIC)
    toml = b_dir / "node.toml"
    seal_lines = f'seal_key_file = "node.seal"\nrevoked_seal_keys = ["{revoked.public.string}"]\n'
    toml.write_text(
        toml.read_text().replace('key_file = "node.key"\n', seal_lines + 'key_file = "node.key"\n')
    )
    stranger = seal_secret(CLASSIC, os.urandom(32)).public
    tampered = sealed(own.public, b"changed on the way")
    flipped = bytes([tampered.payload[0] ^ 1]) + tampered.payload[1:]
    cases = [
        ("accepted", item(sealed(own.public, b"MARKER opened at b"))),
        ("rejected:digest", item(tampered, flipped)),
        ("rejected:seal_key", item(sealed(stranger, b"to a key b does not hold"))),
        ("rejected:unseal", item(sealed(stranger, b"other key", key_id_as=own.public.key_id))),
        ("rejected:seal_key", item(sealed(revoked.public, b"to b's revoked key"))),
    ]
    node = await start_node(b_dir)
    try:
        async with aiohttp.ClientSession() as s:
            body, headers = request([it for _, it in cases])
            url = url_of(node)
            async with s.post(url + BATCH_PATH, data=body, headers=headers, timeout=TIMEOUT) as r:
                assert r.status == 200, await r.text()
                result = open_result(await r.read(), b_pub)
            assert [result.results[peek_id(it.header_bytes)] for _, it in cases] == [
                want for want, _ in cases
            ]
            bob = {"Authorization": f"Bearer {token('bob')}"}
            async with s.get(url + "/v1/inbox", headers=bob, timeout=TIMEOUT) as r:
                inbox = (await r.json())["messages"]
            assert [m["text"] for m in inbox] == ["MARKER opened at b"]
            assert node.state is not None
            # the accepted message came sealed: not counted among those received in the clear
            unsealed = node.state.metrics.registry.get_sample_value(
                "relay_messages_received_unsealed_total", {"origin": "a.test"}
            )
            assert unsealed is None
            db = sqlite_store(node.state.store)
            rows = await db.fetchall(MESSAGE_PAYLOADS)
            assert [bytes(b)[32:] for (b,) in rows] == [b"MARKER opened at b"]  # salt || body
            # retention works on the opened payload like on any other
            day = 86_400_000
            counts = await purge(
                node.state.store, RetentionConfig(0, 1, 0, 10), "b.test", now_ms() + 2 * day
            )
            assert counts.contents >= 1 and counts.payloads >= 1
            assert await db.fetchall(MESSAGE_PAYLOADS) == []
    finally:
        await node.stop()
