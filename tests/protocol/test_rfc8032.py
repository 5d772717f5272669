"""RFC 8032 §7.1 Ed25519 vectors through `cryptography`, and relay's key strings
(DESIGN §3) checked against the golden `keys` section of relay-v1.json."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from relay.errors import MalformedError
from relay.protocol.keystr import key_id, parse_public_key, private_key_from_seed, public_key_string

VECTORS = Path(__file__).parent.parent / "vectors"


def load(name: str) -> Any:
    return json.loads((VECTORS / name).read_text(encoding="utf-8"))


RFC = load("rfc8032-ed25519.json")["vectors"]
KEYS = load("relay-v1.json")["keys"]


def raw_public(pub: Ed25519PublicKey) -> bytes:
    return pub.public_bytes(Encoding.Raw, PublicFormat.Raw)


@pytest.mark.parametrize("vec", RFC, ids=[v["name"] for v in RFC])
def test_rfc8032_vector(vec: dict[str, str]) -> None:
    key = private_key_from_seed(bytes.fromhex(vec["secret_key"]))
    message = bytes.fromhex(vec["message"])
    expected = bytes.fromhex(vec["signature"])
    pub = key.public_key()
    assert raw_public(pub).hex() == vec["public_key"]
    assert key.sign(message) == expected
    pub.verify(expected, message)
    for i in (0, 31, 32, 63):
        bad = bytearray(expected)
        bad[i] ^= 0x01
        with pytest.raises(InvalidSignature):
            pub.verify(bytes(bad), message)
    with pytest.raises(InvalidSignature):
        pub.verify(expected, message + b"\x00")


def test_rfc8032_vectors_present() -> None:
    assert [v["name"] for v in RFC] == ["TEST 1", "TEST 2", "TEST 3"]


@pytest.mark.parametrize("node", sorted(KEYS))
def test_golden_key_strings(node: str) -> None:
    entry = KEYS[node]
    pub = private_key_from_seed(bytes.fromhex(entry["seed_hex"])).public_key()
    assert public_key_string(pub) == entry["public"]
    assert key_id(entry["public"]) == entry["key_id"]
    parsed = parse_public_key(entry["public"])
    assert raw_public(parsed) == raw_public(pub)
    assert public_key_string(parsed) == entry["public"]


def test_key_ids_may_hold_plus_and_slash() -> None:
    ids = {KEYS[n]["key_id"] for n in KEYS}
    assert "PUAXw+hD" in ids and "/FHNjmIY" in ids


def test_seed_must_be_32_bytes() -> None:
    with pytest.raises(MalformedError, match="32 bytes"):
        private_key_from_seed(b"\x00" * 31)


GOOD = KEYS["a.test"]["public"]
B64 = GOOD.removeprefix("ed25519:")


def key_string(raw: bytes) -> str:
    return "ed25519:" + base64.b64encode(raw).decode("ascii").rstrip("=")


# Encodings of the eight points of small order on edwards25519 (order 1, 2, 4,
# 4, 8, 8, 8, 8): a signature check against any of them can be passed without
# a private key, so parse_public_key must refuse them.
SMALL_ORDER = [
    "0100000000000000000000000000000000000000000000000000000000000000",
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "0000000000000000000000000000000000000000000000000000000000000000",
    "0000000000000000000000000000000000000000000000000000000000000080",
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85",
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",
]


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        (B64, "must start with 'ed25519:'"),
        ("ED25519:" + B64, "must start with 'ed25519:'"),
        ("ed25519: " + B64[1:], "outside A-Z"),
        (GOOD + "=", "padding"),
        ("ed25519:" + B64[:-1] + "=", "padding"),
        (GOOD[:-1], "43 characters"),
        (GOOD + "A", "43 characters"),
        ("ed25519:", "43 characters"),
        ("ed25519:" + B64[:-1] + "-", "outside A-Z"),
        ("ed25519:" + B64[:-1] + "_", "outside A-Z"),
        ("ed25519:" + B64[:20] + "é" + B64[21:], "outside A-Z"),
        ("ed25519:" + B64[:42] + "p", "non-canonical base64"),
        (GOOD + "\n", "43 characters"),
        (key_string(b"\xff" * 32), "non-canonical point"),
        (key_string(b"\xed" + b"\xff" * 30 + b"\x7f"), "non-canonical point"),
        (key_string(b"\x02" + b"\x00" * 31), "not a point"),
    ],
)
def test_parse_public_key_refuses(text: str, fragment: str) -> None:
    with pytest.raises(MalformedError, match=fragment):
        parse_public_key(text)


@pytest.mark.parametrize("raw_hex", SMALL_ORDER)
def test_parse_public_key_refuses_small_order_points(raw_hex: str) -> None:
    raw = bytes.fromhex(raw_hex)
    pub = Ed25519PublicKey.from_public_bytes(raw)
    # Show the danger with the library itself: with R = the identity and
    # S = 0, some message among a handful verifies without any private key.
    forged = bytes.fromhex("01" + "00" * 31) + b"\x00" * 32
    accepted = 0
    for n in range(64):
        try:
            pub.verify(forged, n.to_bytes(2, "big"))
        except InvalidSignature:
            continue
        accepted += 1
    assert accepted > 0
    with pytest.raises(MalformedError, match=r"small order|non-canonical"):
        parse_public_key(key_string(raw))


def test_key_id_checks_the_string() -> None:
    with pytest.raises(MalformedError):
        key_id("ed25519:short")
    with pytest.raises(MalformedError):
        key_id(B64)
