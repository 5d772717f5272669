"""relay.protocol.auditcheck over bundles built in memory: a clean bundle verifies
and answers; each kind of tampering is detected and named by its problem code."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from relay.errors import MalformedError
from relay.protocol.audit import (
    CONFIG,
    FORWARDED,
    RECEIPT,
    RESULT,
    STORED,
    FieldValue,
    TreeHead,
    encode_entry,
    sign_head,
)
from relay.protocol.auditcheck import outside_residency, under_rule, verify, where
from relay.protocol.batch import RESULT_DOMAIN, BatchResult, Delivered, encode_result
from relay.protocol.bundle import Bundle, ExportedEnvelope, decode_bundle, encode_bundle
from relay.protocol.envelope import Envelope, header_digest, make_header, seal
from relay.protocol.keystr import key_id, private_key_from_seed, public_key_string
from relay.protocol.merkle import leaf_hash, root
from relay.protocol.receipt import Receipt, encode_receipt

NODE, PEER = "a.test", "b.test"
KEY = private_key_from_seed(b"\x01" * 32)
PEER_KEY = private_key_from_seed(b"\x02" * 32)
OTHER = Ed25519PrivateKey.generate()
K = public_key_string(KEY.public_key())
PK = public_key_string(PEER_KEY.public_key())
T0 = 1_700_000_000_000


def message(residency: tuple[str, ...] = ("DE",)) -> Envelope:
    h = make_header(
        id=bytes(range(16)),
        kind="message",
        origin=NODE,
        key_id=key_id(K),
        sender=f"alice@{NODE}",
        to=[f"bob@{PEER}"],
        dest=PEER,
        created=T0,
        expires=T0 + 86_400_000,
        residency=list(residency),
        ctype="text/plain",
        payload=b"secret",
    )
    return seal(h, b"secret", KEY)


def receipt_env(msg_id: bytes, jurisdiction: str = "DE") -> Envelope:
    payload = encode_receipt(
        Receipt("delivered", "", T0 + 5, jurisdiction, "enforce", ((msg_id, (f"bob@{PEER}",)),))
    )
    h = make_header(
        id=b"\xee" * 16,
        kind="receipt",
        origin=PEER,
        key_id=key_id(PK),
        sender=f"postmaster@{PEER}",
        to=[f"postmaster@{NODE}"],
        dest=NODE,
        created=T0 + 5,
        expires=T0 + 86_400_000,
        residency=["DE"],
        ctype="application/vnd.relay.receipt+msgpack",
        payload=payload,
    )
    return seal(h, payload, PEER_KEY)


def build(
    *, head_at: int | None = None, residency: tuple[str, ...] = ("DE",), peer_j: str = "DE"
) -> tuple[Bundle, list[bytes]]:
    """A bundle of one delivery: config, stored, forwarded, receipt; heads at 2 and 4."""
    env = message(residency)
    rcpt = receipt_env(env.header.id)
    mid = env.header.id
    specs: list[tuple[str, dict[str, FieldValue]]] = [
        (CONFIG, {"jurisdiction": "DE", "key": K, "peers": (f"{PEER} {peer_j} {PK}",)}),
        (
            STORED,
            {
                "envelope": mid,
                "origin": NODE,
                "residency": residency,
                "from": "",
                "header": header_digest(env.header_bytes),
                "rule": "r1",
            },
        ),
        (
            FORWARDED,
            {
                "envelope": mid,
                "to": PEER,
                "jurisdiction": peer_j,
                "residency": residency,
                "rule": "r1",
            },
        ),
        (
            RECEIPT,
            {
                "envelope": mid,
                "receipt": b"\xee" * 16,
                "by": PEER,
                "status": "delivered",
                "reason": "",
                "jurisdiction": "DE",
            },
        ),
        (
            STORED,
            {
                "envelope": b"\xee" * 16,
                "origin": PEER,
                "residency": ("DE",),
                "from": PEER,
                "header": header_digest(rcpt.header_bytes),
            },
        ),
    ]
    entries = [encode_entry(i, T0 + i, kind, f) for i, (kind, f) in enumerate(specs)]
    leaves = [leaf_hash(e) for e in entries]
    heads = [
        sign_head(
            TreeHead(NODE, n, root(leaves[:n]), head_at or T0 + 10 + n, key_id(K)), KEY
        ).wire()
        for n in (2, 5)
    ]
    b = Bundle(
        node=NODE,
        since=0,
        until=T0 * 2,
        first=0,
        entries=tuple(entries),
        before=(),
        after=(),
        context=(),
        heads=tuple(heads),
        envelopes=(
            ExportedEnvelope(env.header_bytes, env.signature, b""),
            ExportedEnvelope(rcpt.header_bytes, rcpt.signature, rcpt.payload),
        ),
    )
    return b, heads


def codes(b: Bundle, witnessed: list[tuple[str, bytes]] | None = None) -> set[str]:
    return {p.code for p in verify(b, [K], witnessed or []).problems}


def test_a_clean_bundle_verifies_and_round_trips() -> None:
    b, _ = build()
    assert decode_bundle(encode_bundle(b)) == b
    r = verify(decode_bundle(encode_bundle(b)), [K])
    assert r.ok, r.problems
    assert [h.head.size for h in r.heads] == [2, 5]
    assert len(r.headers) == 2 and len(r.receipts) == 1


def test_where_names_the_signed_receipt() -> None:
    b, _ = build()
    r = verify(b, [K])
    lines = where(r, bytes(range(16)))
    assert any("stored at a.test (DE)" in line for line in lines)
    assert any("forwarded to b.test, trusted as DE" in line for line in lines)
    assert any(f"on b.test's signed word (receipt {'ee' * 16}" in line for line in lines)


def test_rule_and_residency_answers() -> None:
    b, _ = build()
    r = verify(b, [K])
    assert [e.seq for e in under_rule(r, "r1")] == [1, 2]
    answer = outside_residency(r)
    assert (answer.stored, answer.forwarded, answer.receipts, answer.outside) == (2, 1, 1, ())
    bad = verify(build(residency=("FR",), peer_j="DE")[0], [K])
    assert bad.ok
    outside = outside_residency(bad).outside
    assert any("stored at a.test (DE) outside FR" in line for line in outside)
    assert any("forwarded to b.test (DE) outside FR" in line for line in outside)


@pytest.mark.parametrize("position", range(5))
def test_a_flipped_byte_in_any_entry_is_detected(position: int) -> None:
    b, _ = build()
    entries = list(b.entries)
    e = bytearray(entries[position])
    e[-1] ^= 0x01
    entries[position] = bytes(e)
    found = codes(dataclasses.replace(b, entries=tuple(entries)))
    assert found & {"root_mismatch", "entry_malformed", "entry_missing", "entry_out_of_order"}


def test_a_dropped_entry_is_named() -> None:
    b, _ = build()
    r = verify(dataclasses.replace(b, entries=b.entries[:2] + b.entries[3:]), [K])
    assert {p.code for p in r.problems} == {"entry_missing"}
    assert any("seq 2 is missing" in p.detail for p in r.problems)


def test_two_reordered_entries_are_named() -> None:
    b, _ = build()
    e = list(b.entries)
    e[1], e[2] = e[2], e[1]
    found = codes(dataclasses.replace(b, entries=tuple(e)))
    assert {"entry_out_of_order", "root_mismatch"} <= found


def test_history_rewritten_after_a_witnessed_head_is_named() -> None:
    """The node rewrites entry 1 and signs fresh heads over the new log: the bundle
    is self-consistent, but the head a peer kept from before does not fit it."""
    b, heads = build()
    witnessed = [("b.test", heads[1])]
    assert codes(b, witnessed) == set()
    rewritten = list(b.entries)
    rewritten[1] = encode_entry(1, T0 + 1, STORED, {"envelope": b"\x00" * 16, "residency": ("DE",)})
    leaves = [leaf_hash(e) for e in rewritten]
    fresh = tuple(
        sign_head(TreeHead(NODE, n, root(leaves[:n]), T0 + 99, key_id(K)), KEY).wire()
        for n in (2, 5)
    )
    forged = dataclasses.replace(b, entries=tuple(rewritten), heads=fresh, envelopes=())
    assert codes(forged) == set()  # alone, a rewritten log looks fine
    assert codes(forged, witnessed) == {"history_rewritten"}


def test_heads_signed_by_another_key_are_named() -> None:
    b, _ = build()
    leaves = [leaf_hash(e) for e in b.entries]
    forged = sign_head(TreeHead(NODE, 5, root(leaves), T0, key_id(K)), OTHER).wire()
    assert "head_signature" in codes(dataclasses.replace(b, heads=(forged,)))
    assert {p.code for p in verify(b, []).problems} == {"head_unknown_key"}


def test_a_changed_envelope_signature_is_named() -> None:
    b, _ = build()
    env = b.envelopes[0]
    bad = ExportedEnvelope(env.header, bytes(64), b"")
    assert "envelope_signature" in codes(dataclasses.replace(b, envelopes=(bad, *b.envelopes[1:])))


def test_a_bundle_of_another_shape_is_malformed() -> None:
    with pytest.raises(MalformedError, match="not a relay audit bundle"):
        decode_bundle(
            encode_bundle(build()[0]).replace(b"relay-audit-bundle", b"relay-audit-bundlX")
        )
    with pytest.raises(MalformedError, match="32-byte hashes"):
        decode_bundle(encode_bundle(dataclasses.replace(build()[0], before=(b"x" * 31,), first=1)))


# --- delivery stated in a signed batch result (protocol.md §22) --------------------------

BATCH = b"\xbb" * 16


def stated_result(ids: tuple[bytes, ...], *, batch: bytes = BATCH) -> bytes:
    results = dict.fromkeys(ids, "accepted") or {b"\x07" * 16: "accepted"}
    return encode_result(
        BatchResult(batch, "bm9uY2U=", results, Delivered(T0 + 3, "DE", "enforce", ids))
    )


def build_stated(
    result_bytes: bytes, signature: bytes | None = None, *, jurisdiction: str = "DE"
) -> Bundle:
    """config, stored, forwarded, the peer's signed result, the receipt entry on it."""
    env = message()
    mid = env.header.id
    if signature is None:
        signature = PEER_KEY.sign(RESULT_DOMAIN + result_bytes)
    specs: list[tuple[str, dict[str, FieldValue]]] = [
        (CONFIG, {"jurisdiction": "DE", "key": K, "peers": (f"{PEER} DE {PK}",)}),
        (
            STORED,
            {"envelope": mid, "origin": NODE, "residency": ("DE",), "from": "",
             "header": header_digest(env.header_bytes), "rule": "r1"},
        ),
        (
            FORWARDED,
            {"envelope": mid, "to": PEER, "jurisdiction": "DE", "residency": ("DE",), "rule": "r1"},
        ),
        (
            RESULT,
            {"peer": PEER, "batch": BATCH, "result": result_bytes, "signature": signature},
        ),
        (
            RECEIPT,
            {"envelope": mid, "receipt": BATCH, "by": PEER, "status": "delivered", "reason": "",
             "jurisdiction": jurisdiction, "via": "result"},
        ),
    ]  # fmt: skip
    entries = [encode_entry(i, T0 + i, kind, f) for i, (kind, f) in enumerate(specs)]
    leaves = [leaf_hash(e) for e in entries]
    head = sign_head(TreeHead(NODE, 5, root(leaves), T0 + 20, key_id(K)), KEY).wire()
    return Bundle(
        node=NODE,
        since=0,
        until=T0 * 2,
        first=0,
        entries=tuple(entries),
        before=(),
        after=(),
        context=(),
        heads=(head,),
        envelopes=(ExportedEnvelope(env.header_bytes, env.signature, b""),),
    )


def test_a_stated_delivery_is_answered_from_the_signed_result() -> None:
    mid = bytes(range(16))
    b = build_stated(stated_result((mid,)))
    r = verify(decode_bundle(encode_bundle(b)), [K])
    assert r.ok, r.problems
    assert list(r.results) == [(PEER, BATCH)]
    lines = where(r, mid)
    assert any(
        f"b.test reported delivered in DE; on b.test's signed word (batch result {'bb' * 16}"
        in line
        for line in lines
    ), lines
    assert outside_residency(r).receipts == 1


@pytest.mark.parametrize(
    ("bundle", "code"),
    [
        pytest.param(
            lambda: build_stated(stated_result((bytes(range(16)),)), b"\x00" * 64),
            "result_signature",
            id="signature",
        ),
        pytest.param(
            lambda: build_stated(
                stated_result((bytes(range(16)),)),
                OTHER.sign(RESULT_DOMAIN + stated_result((bytes(range(16)),))),
            ),
            "result_signature",
            id="another-key",
        ),
        pytest.param(
            lambda: build_stated(stated_result((bytes(range(16)),), batch=b"\xcc" * 16)),
            "result_malformed",
            id="another-batch",
        ),
        pytest.param(lambda: build_stated(b"\x81\xa1a\x01"), "result_malformed", id="not-a-result"),
    ],
)
def test_a_bad_kept_result_is_named(bundle: Any, code: str) -> None:
    assert code in codes(bundle())


@pytest.mark.parametrize(
    ("ids", "jurisdiction"),
    [pytest.param((), "DE", id="envelope-not-listed"), pytest.param(None, "FR", id="jurisdiction")],
)
def test_a_result_that_does_not_say_it_backs_nothing(
    ids: tuple[bytes, ...] | None, jurisdiction: str
) -> None:
    mid = bytes(range(16))
    b = build_stated(stated_result((mid,) if ids is None else ids), jurisdiction=jurisdiction)
    r = verify(b, [K])
    assert r.ok, r.problems
    assert any("the signed batch result is not in the bundle" in ln for ln in where(r, mid))
