"""relay.protocol.audit: entries and signed tree heads, rebuilt byte for byte from the
golden vectors of relay-v1.json (`tree_head`, `audit_entry`), and their decoders held
to "decode or raise MalformedError"."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.errors import MalformedError, ProofFailed
from relay.protocol.audit import (
    MAX_PROOF_HASHES,
    FieldValue,
    TreeHead,
    TreeProof,
    decode_entry,
    decode_head,
    decode_signed_head,
    decode_tree_proof,
    encode_entry,
    encode_tree_proof,
    entry_leaf,
    parse_tree_head_header,
    parse_tree_proof_header,
    sign_head,
    tree_head_header,
    tree_proof_header,
    verify_head,
)
from relay.protocol.keystr import parse_public_key, private_key_from_seed
from relay.protocol.merkle import consistency_proof, leaf_hash, verify_consistency
from relay.protocol.strict import pack

VECTORS: dict[str, Any] = json.loads(
    (Path(__file__).parent.parent / "vectors" / "relay-v1.json").read_text("utf-8")
)
KEYS = VECTORS["keys"]
HEAD = VECTORS["tree_head"]
ENTRY = VECTORS["audit_entry"]
PROOF = VECTORS["tree_proof"]
CT = json.loads((Path(__file__).parent.parent / "vectors" / "rfc6962-merkle.json").read_text())


def test_the_golden_tree_head_rebuilds_byte_for_byte() -> None:
    key = private_key_from_seed(bytes.fromhex(KEYS[HEAD["signed_by"]]["seed_hex"]))
    h = HEAD["head"]
    head = TreeHead(h["node"], h["size"], bytes.fromhex(h["root_hex"]), h["at"], h["key"])
    signed = sign_head(head, key)
    assert signed.head_bytes.hex() == HEAD["head_bytes_hex"]
    assert signed.signature.hex() == HEAD["signature_hex"]
    assert signed.wire().hex() == HEAD["wire_hex"]
    assert tree_head_header(signed) == HEAD["header"]
    back = parse_tree_head_header(HEAD["header"])
    assert back == signed
    verify_head(back, parse_public_key(KEYS["a.test"]["public"]))
    with pytest.raises(ProofFailed, match="does not verify under key 11qYAYKx"):
        verify_head(back, parse_public_key(KEYS["b.test"]["public"]))


def test_the_golden_tree_proof_rebuilds_byte_for_byte() -> None:
    """From size 3 to 8 of CT's eight-leaf tree, the head of size 8 being the golden head."""
    leaves = [leaf_hash(bytes.fromhex(x)) for x in CT["leaves"]]
    hashes = consistency_proof(PROOF["from_size"], leaves[: PROOF["size"]])
    assert [h.hex() for h in hashes] == PROOF["hashes_hex"]
    proof = TreeProof(PROOF["from_size"], tuple(hashes))
    assert encode_tree_proof(proof).hex() == PROOF["proof_hex"]
    assert tree_proof_header(proof) == PROOF["header"]
    back = parse_tree_proof_header(PROOF["header"])
    assert back == proof
    assert PROOF["size"] == HEAD["head"]["size"] and PROOF["root_hex"] == HEAD["head"]["root_hex"]
    assert PROOF["old_root_hex"] == CT["roots"][2]
    old, new = bytes.fromhex(PROOF["old_root_hex"]), bytes.fromhex(PROOF["root_hex"])
    verify_consistency(back.from_size, PROOF["size"], old, new, back.hashes)
    with pytest.raises(ProofFailed, match="earlier root"):
        verify_consistency(back.from_size, PROOF["size"], new, new, back.hashes)


H = b"\x11" * 32


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (pack([3]), "expected the array"),
        (pack([3, [H], 1]), "expected the array"),
        (pack({"from_size": 3}), "expected the array"),
        (pack([0, [H]]), "from_size: expected an int of at least 1"),
        (pack([-1, [H]]), "int -1 is outside"),
        (pack(["3", [H]]), "from_size"),
        (pack([3, H]), "expected an array of hashes, got bin"),
        (pack([3, []]), "0 hashes; a proof holds 1 to 64"),
        (pack([3, [H] * (MAX_PROOF_HASHES + 1)]), "65 hashes"),
        (pack([3, [H, b"\x11" * 31]]), "hash 1: expected bin of 32 bytes"),
        (pack([3, [H, "x" * 32]]), "hash 1: expected bin"),
        (pack([3, [H]]) + b"\x00", "trailing bytes"),
        (b"\xc1", "tree proof"),
    ],
)
def test_bad_tree_proofs_are_named(data: bytes, match: str) -> None:
    with pytest.raises(MalformedError, match=match):
        decode_tree_proof(data)


def test_bad_tree_proof_headers_are_named() -> None:
    with pytest.raises(MalformedError, match="Relay-Tree-Proof: not a byte sequence"):
        parse_tree_proof_header("kgOUxCAC")
    with pytest.raises(MalformedError, match="Relay-Tree-Proof: not a byte sequence"):
        parse_tree_proof_header(PROOF["header"].rstrip(":=") + ":")
    assert parse_tree_proof_header(f" {PROOF['header']} ").from_size == 3
    with pytest.raises(MalformedError, match="65 hashes; a proof holds 1 to 64"):
        encode_tree_proof(TreeProof(3, (H,) * 65))


def test_the_golden_entry_rebuilds_and_decodes() -> None:
    values: dict[str, FieldValue] = {
        "envelope": bytes(range(16)),
        "origin": "a.test",
        "residency": ("KZ",),
        "to": "b.test",
        "jurisdiction": "KZ",
        "rule": "builtin:allowed_residency",
    }
    data = encode_entry(0, 1795600000000, "forwarded", values)
    assert data.hex() == ENTRY["entry_hex"]
    assert entry_leaf(data).hex() == ENTRY["leaf_hex"]
    e = decode_entry(data)
    assert (e.seq, e.at, e.kind, dict(e.fields)) == (0, 1795600000000, "forwarded", values)


@pytest.mark.parametrize(
    ("kind", "values", "match"),
    [
        ("Forwarded", {}, "lowercase word"),
        ("stored", {"seq": 1}, "reserved"),
        ("stored", {"n": 2**64}, "cannot be packed"),
    ],
)
def test_bad_entries_are_refused(kind: str, values: dict[str, Any], match: str) -> None:
    with pytest.raises(MalformedError, match=match):
        encode_entry(0, 0, kind, values)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"\x90", "expected a map"),
        (b"\x81\xa3seq\x00", "missing key at"),
        (bytes.fromhex("83a3736571 00 a2 6174 00 a4 6b696e64 a1 58".replace(" ", "")), "lowercase"),
    ],
)
def test_bad_entry_bytes_are_named(data: bytes, match: str) -> None:
    with pytest.raises(MalformedError, match=match):
        decode_entry(data)


def test_bad_heads_are_named() -> None:
    good = bytes.fromhex(HEAD["head_bytes_hex"])
    with pytest.raises(MalformedError, match="not a byte sequence"):
        parse_tree_head_header("abc")
    with pytest.raises(MalformedError, match="unknown key"):
        decode_head(b"\x81\xa1x\x00")
    with pytest.raises(MalformedError, match="trailing bytes"):
        decode_head(good + b"\x00")
    with pytest.raises(MalformedError, match="signature"):
        decode_signed_head(bytes.fromhex("92c40100c40100"))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_decoders_decode_or_raise_malformed(data: bytes) -> None:
    for decode in (decode_entry, decode_head, decode_signed_head, decode_tree_proof):
        with contextlib.suppress(MalformedError):
            decode(data)
