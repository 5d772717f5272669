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
    FieldValue,
    TreeHead,
    decode_entry,
    decode_head,
    decode_signed_head,
    encode_entry,
    entry_leaf,
    parse_tree_head_header,
    sign_head,
    tree_head_header,
    verify_head,
)
from relay.protocol.keystr import parse_public_key, private_key_from_seed

VECTORS: dict[str, Any] = json.loads(
    (Path(__file__).parent.parent / "vectors" / "relay-v1.json").read_text("utf-8")
)
KEYS = VECTORS["keys"]
HEAD = VECTORS["tree_head"]
ENTRY = VECTORS["audit_entry"]


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
    for decode in (decode_entry, decode_head, decode_signed_head):
        with contextlib.suppress(MalformedError):
            decode(data)
