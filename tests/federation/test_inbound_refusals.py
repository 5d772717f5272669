"""Request-level refusals of `POST /federation/v1/batch` (DESIGN §5).

Each refusal is checked for its exact status and JSON `error` code, for
nothing stored (row counts of every table before and after), and for the
node still accepting a good batch afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Callable

import msgpack
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from relay.federation.inbound import BATCH_PATH
from relay.protocol import httpsig
from relay.protocol.strict import pack
from tests.federation.conftest import MAX_BODY, NODE, Harness, Identity

# --- 413 too_large -------------------------------------------------------------


async def _raw_exchange(h: Harness, head: bytes, parts: list[bytes]) -> tuple[int, dict[str, str]]:
    """Send raw request bytes over one connection; read one response (status, JSON body).

    A 413 must also close the connection: the rest of the body is never read.
    """
    reader, writer = await asyncio.open_connection("127.0.0.1", h.node.port)
    try:
        writer.write(head)
        for part in parts:
            writer.write(part)
        await writer.drain()
        raw_head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)
        lines = raw_head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        pairs = (ln.partition(":") for ln in lines[1:] if ln)
        fields = {k.strip().lower(): v.strip() for k, _, v in pairs}
        length = int(fields["content-length"])
        doc = json.loads(await asyncio.wait_for(reader.readexactly(length), timeout=10))
        assert isinstance(doc, dict)
        assert status != 413 or fields.get("connection") == "close"
        return status, doc
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await writer.wait_closed()  # the node may already have dropped the unread rest


def _head(h: Harness, declared_body: bytes, framing: str) -> bytes:
    headers = h.sign(declared_body)
    lines = [f"POST {BATCH_PATH} HTTP/1.1", f"Host: 127.0.0.1:{h.node.port}", framing]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def test_too_large_by_content_length_answered_before_the_body(harness: Harness) -> None:
    h = harness
    body = os.urandom(MAX_BODY * 4)
    before = await h.counts()
    # Only a sliver of the declared body is ever sent: the answer must come anyway.
    status, doc = await _raw_exchange(
        h, _head(h, body, f"Content-Length: {len(body)}"), [body[:100]]
    )
    assert (status, doc["error"]) == (413, "too_large")
    assert str(MAX_BODY) in doc["detail"]
    assert await h.counts() == before
    await h.still_serves()


async def test_too_large_with_expect_continue_gets_413_not_100(harness: Harness) -> None:
    """A sender asking `Expect: 100-continue` is told 413 before it sends anything."""
    h = harness
    body = os.urandom(MAX_BODY * 4)
    before = await h.counts()
    head = _head(h, body, f"Content-Length: {len(body)}\r\nExpect: 100-continue")
    status, doc = await _raw_exchange(h, head, [])
    assert (status, doc["error"]) == (413, "too_large")
    assert await h.counts() == before
    await h.still_serves()


async def test_expect_continue_within_the_limit_is_served(harness: Harness) -> None:
    h = harness
    env = h.envelope()
    body = h.body([h.item(env)])
    headers = {**h.sign(body), "Expect": "100-continue"}
    reply = await h.post(body, headers)
    assert reply.status == 200
    assert await h.stored(env.header.origin, env.header.id)


async def test_too_large_chunked_body_over_the_limit(harness: Harness) -> None:
    h = harness
    body = os.urandom(MAX_BODY + 4000)
    chunks = [body[i : i + 2000] for i in range(0, len(body), 2000)]
    framed = [f"{len(c):x}\r\n".encode() + c + b"\r\n" for c in chunks]  # no final chunk
    before = await h.counts()
    status, doc = await _raw_exchange(h, _head(h, body, "Transfer-Encoding: chunked"), framed)
    assert (status, doc["error"]) == (413, "too_large")
    assert await h.counts() == before
    await h.still_serves()


async def test_body_exactly_at_the_limit_is_read(harness: Harness) -> None:
    """The limit is inclusive: a body of max_body_bytes is judged, not refused as too large."""
    h = harness
    size = 0
    for _ in range(5):
        env = h.envelope(payload=b"p" * size)
        body = h.body([h.item(env)])
        if len(body) == MAX_BODY:
            break
        size += MAX_BODY - len(body)
    assert len(body) == MAX_BODY
    reply = await h.post(body, h.sign(body))
    assert reply.status == 200
    assert await h.stored(env.header.origin, env.header.id)


# --- 401 -------------------------------------------------------------------------


async def test_unknown_sender(harness: Harness) -> None:
    h = harness
    stranger = Identity("z.test")
    body = h.body([h.item(h.envelope())])
    detail = await h.refused(body, h.sign(body, signer=stranger), 401, "unknown_sender")
    assert "z.test" in detail
    await h.still_serves()


async def test_unknown_key(harness: Harness) -> None:
    h = harness
    body = h.body([h.item(h.envelope())])
    other = Ed25519PrivateKey.generate()
    headers = h.sign(body, key=other, key_id="AAAAAAAA")
    detail = await h.refused(body, headers, 401, "unknown_key")
    assert "AAAAAAAA" in detail
    await h.still_serves()


async def test_forged_signature(harness: Harness) -> None:
    """a.test's key id, but signed by some other key."""
    h = harness
    body = h.body([h.item(h.envelope())])
    headers = h.sign(body, key=Ed25519PrivateKey.generate())
    await h.refused(body, headers, 401, "bad_signature")
    await h.still_serves()


async def test_signature_over_other_headers(harness: Harness) -> None:
    """A header changed after signing (here Relay-Destination) breaks the signature."""
    h = harness
    body = h.body([h.item(h.envelope())])
    headers = h.sign(body, destination="other.test")
    headers["Relay-Destination"] = NODE
    await h.refused(body, headers, 401, "bad_signature")
    await h.still_serves()


@pytest.mark.parametrize("drop", ["Signature", "Signature-Input"])
async def test_missing_signature_header(harness: Harness, drop: str) -> None:
    h = harness
    body = h.body([h.item(h.envelope())])
    headers = h.sign(body)
    del headers[drop]
    detail = await h.refused(body, headers, 401, "bad_signature")
    assert drop in detail
    await h.still_serves()


async def test_keyid_names_another_node(harness: Harness) -> None:
    """keyid x.test#<x's key>, correctly signed by x.test, but Relay-Origin a.test."""
    h = harness
    body = h.body([h.item(h.envelope())])
    headers = h.sign(body, signer=h.x)
    headers["Relay-Origin"] = h.a.name
    detail = await h.refused(body, headers, 401, "bad_signature")
    assert "x.test" in detail
    await h.still_serves()


# --- 400 ----------------------------------------------------------------------------


async def test_digest_mismatch(harness: Harness) -> None:
    h = harness
    body = h.body([h.item(h.envelope())])
    other = h.body([h.item(h.envelope())])
    await h.refused(body, h.sign(body, digest_of=other), 400, "digest_mismatch")
    await h.still_serves()


async def test_wrong_destination(harness: Harness) -> None:
    h = harness
    body = h.body([h.item(h.envelope())])
    detail = await h.refused(body, h.sign(body, destination="b.test"), 400, "wrong_destination")
    assert "b.test" in detail
    await h.still_serves()


@pytest.mark.parametrize("offset", [-301, 301])
async def test_clock_skew(harness: Harness, offset: int) -> None:
    h = harness
    now_s = h.clock() // 1000
    body = h.body([h.item(h.envelope())])
    detail = await h.refused(body, h.sign(body, created=now_s + offset), 400, "clock_skew")
    assert str(now_s) in detail  # the receiver's time
    await h.still_serves()


@pytest.mark.parametrize("offset", [-300, 300])
async def test_clock_at_the_edge_of_the_window_is_accepted(harness: Harness, offset: int) -> None:
    h = harness
    body = h.body([h.item(h.envelope())])
    reply = await h.post(body, h.sign(body, created=h.clock() // 1000 + offset))
    assert reply.status == 200


async def test_replay_of_a_nonce(harness: Harness) -> None:
    h = harness
    nonce = os.urandom(32)
    await h.send([h.item(h.envelope())], nonce=nonce)
    body = h.body([h.item(h.envelope())])  # another batch, same nonce
    detail = await h.refused(body, h.sign(body, nonce=nonce), 400, "replay")
    assert "nonce" in detail
    await h.still_serves()


async def test_replay_of_a_whole_request(harness: Harness) -> None:
    h = harness
    body = h.body([h.item(h.envelope())])
    headers = h.sign(body)
    assert (await h.post(body, headers)).status == 200
    await h.refused(body, headers, 400, "replay")
    await h.still_serves()


async def test_concurrent_replay_is_refused_once(harness: Harness) -> None:
    """Two requests with one nonce in flight together: exactly one is answered 200."""
    h = harness
    nonce = os.urandom(32)
    bodies = [h.body([h.item(h.envelope())]) for _ in range(2)]
    replies = await asyncio.gather(*(h.post(b, h.sign(b, nonce=nonce)) for b in bodies))
    assert sorted(r.status for r in replies) == [200, 400]
    refused = next(r for r in replies if r.status == 400)
    assert refused.error()[0] == "replay"
    counts = await h.counts()
    assert counts["nonces"] == 1 and counts["batches"] == 1 and counts["envelopes"] == 1


async def test_nonce_is_recorded_only_after_the_signature_verifies(harness: Harness) -> None:
    h = harness
    nonce = os.urandom(32)
    body = h.body([h.item(h.envelope())])
    forged = h.sign(body, key=Ed25519PrivateKey.generate(), nonce=nonce)
    await h.refused(body, forged, 401, "bad_signature")
    # The real a.test may still use that nonce: the forger could not burn it.
    env = h.envelope()
    result = await h.send([h.item(env)], nonce=nonce)
    assert result.results == {env.header.id: "accepted"}


async def test_nonce_of_a_refused_request_is_not_recorded(harness: Harness) -> None:
    """A request refused after verification stores nothing, not even its nonce."""
    h = harness
    nonce = os.urandom(32)
    body = h.body([h.item(h.envelope())])
    await h.refused(body, h.sign(body, nonce=nonce, destination="b.test"), 400, "wrong_destination")
    env = h.envelope()
    result = await h.send([h.item(env)], nonce=nonce)
    assert result.results == {env.header.id: "accepted"}


async def test_query_string_is_malformed(harness: Harness) -> None:
    h = harness
    body = h.body([h.item(h.envelope())])
    await h.refused(body, h.sign(body), 400, "malformed", path=BATCH_PATH + "?x=1")
    await h.still_serves()


async def test_query_string_from_a_stranger_is_unknown_sender(harness: Harness) -> None:
    """401 checks come before 400 ones: a stranger learns nothing about the body rules."""
    h = harness
    body = h.body([h.item(h.envelope())])
    headers = h.sign(body, signer=Identity("z.test"))
    await h.refused(body, headers, 401, "unknown_sender", path=BATCH_PATH + "?x=1")
    await h.still_serves()


def _repeated_key_body(h: Harness) -> bytes:
    item = h.item(h.envelope())
    items = [[item.header_bytes, item.signature, item.payload, list(item.trace)]]
    out = b"\x83"  # a map of three pairs, "batch" twice
    out += pack("batch") + pack(os.urandom(16))
    out += pack("items") + pack(items)
    out += pack("batch") + pack(os.urandom(16))
    return out


def _wrong_arity_body(h: Harness) -> bytes:
    item = h.item(h.envelope())
    return pack({"batch": os.urandom(16), "items": [[item.header_bytes, item.signature]]})


def _duplicate_ids_body(h: Harness) -> bytes:
    env = h.envelope()
    return h.body([h.item(env), h.item(h.envelope()), h.item(env)])


def _same_id_other_header_body(h: Harness) -> bytes:
    env = h.envelope()
    twin = h.envelope(ident=env.header.id, payload=b"another payload")
    return h.body([h.item(env), h.item(twin)])


def _header_without_id_body(h: Harness) -> bytes:
    good = h.item(h.envelope())
    bad = pack({"v": 1, "id": b"short", "kind": "message"})
    return pack(
        {
            "batch": os.urandom(16),
            "items": [
                [good.header_bytes, good.signature, good.payload, list(good.trace)],
                [bad, good.signature, good.payload, list(good.trace)],
            ],
        }
    )


def _header_not_a_map_body(h: Harness) -> bytes:
    good = h.item(h.envelope())
    items = [[pack([1, 2]), good.signature, good.payload, list(good.trace)]]
    return pack({"batch": os.urandom(16), "items": items})


def _header_not_msgpack_body(h: Harness) -> bytes:
    good = h.item(h.envelope())
    items = [[good.header_bytes + b"\x00", good.signature, good.payload, list(good.trace)]]
    return pack({"batch": os.urandom(16), "items": items})


MALFORMED: dict[str, Callable[[Harness], bytes]] = {
    "not_msgpack": lambda h: b"\xc1",
    "not_a_map": lambda h: pack([1, 2, 3]),
    "empty": lambda h: b"",
    "trailing_bytes": lambda h: h.body([h.item(h.envelope())]) + b"\x00",
    "repeated_key": _repeated_key_body,
    "unknown_key": lambda h: pack({"batch": os.urandom(16), "items": [], "extra": 1}),
    "short_batch_id": lambda h: pack({"batch": b"x" * 15, "items": []}),
    "no_items": lambda h: pack({"batch": os.urandom(16), "items": []}),
    "wrong_arity": _wrong_arity_body,
    "item_not_array": lambda h: pack({"batch": os.urandom(16), "items": [b"x"]}),
    "duplicate_ids": _duplicate_ids_body,
    "duplicate_ids_other_header": _same_id_other_header_body,
    "header_without_16_byte_id": _header_without_id_body,
    "header_not_a_map": _header_not_a_map_body,
    "header_trailing_bytes": _header_not_msgpack_body,
    "float_in_body": lambda h: msgpack.packb({"batch": os.urandom(16), "items": [1.5]}),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
async def test_malformed_body(harness: Harness, case: str) -> None:
    h = harness
    body = MALFORMED[case](h)
    await h.refused(body, h.sign(body), 400, "malformed")
    await h.still_serves()


async def test_not_post_on_batch_path(harness: Harness) -> None:
    h = harness
    async with h.session.get(h.url + BATCH_PATH) as resp:
        assert resp.status == 405


async def test_unsigned_request(harness: Harness) -> None:
    """No signature headers at all (only a digest): refused before anything is read."""
    h = harness
    body = h.body([h.item(h.envelope())])
    headers = {
        "Content-Type": "application/msgpack",
        "Content-Digest": httpsig.content_digest(body),
        "Relay-Origin": h.a.name,
        "Relay-Destination": NODE,
    }
    await h.refused(body, headers, 401, "bad_signature")
    await h.still_serves()


async def test_nonce_is_remembered_across_a_restart(harness: Harness) -> None:
    h = harness
    body = h.body([h.item(h.envelope())])
    headers = h.sign(body)
    assert (await h.post(body, headers)).status == 200
    await h.restart()
    await h.refused(body, headers, 400, "replay")
    await h.still_serves()
