"""relay.protocol.ed25519 (libsodium) against `cryptography` and the RFC 8032 vectors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from relay.protocol import ed25519
from relay.protocol.keystr import private_key_from_seed

RFC = json.loads(
    (Path(__file__).parent.parent / "vectors" / "rfc8032-ed25519.json").read_text(encoding="utf-8")
)["vectors"]


@pytest.mark.parametrize("vec", RFC, ids=[v["name"] for v in RFC])
def test_rfc8032_vector(vec: dict[str, str]) -> None:
    key = private_key_from_seed(bytes.fromhex(vec["secret_key"]))
    message = bytes.fromhex(vec["message"])
    expected = bytes.fromhex(vec["signature"])
    assert ed25519.sign(key, message) == expected
    assert ed25519.verify(key.public_key(), expected, message)
    for i in (0, 31, 32, 63):
        bad = bytearray(expected)
        bad[i] ^= 0x01
        assert not ed25519.verify(key.public_key(), bytes(bad), message)
    assert not ed25519.verify(key.public_key(), expected, message + b"\x00")


def test_same_signatures_as_cryptography() -> None:
    for n in range(50):
        key = Ed25519PrivateKey.generate()
        message = os.urandom(n * 7)
        signature = ed25519.sign(key, message)
        assert signature == key.sign(message)
        key.public_key().verify(signature, message)  # raises if cryptography disagrees
        assert ed25519.verify(key.public_key(), signature, message)


def test_two_keys_do_not_share_a_cached_secret() -> None:
    a, b = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    assert ed25519.sign(a, b"m") == a.sign(b"m")
    assert ed25519.sign(b, b"m") == b.sign(b"m")
    assert ed25519.sign(a, b"m") != ed25519.sign(b, b"m")


@pytest.mark.parametrize("size", [0, 63, 65, 128])
def test_a_signature_of_the_wrong_length_is_false_not_an_error(size: int) -> None:
    key = Ed25519PrivateKey.generate()
    assert not ed25519.verify(key.public_key(), b"\x00" * size, b"m")


def test_another_keys_signature_does_not_verify() -> None:
    a, b = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    assert not ed25519.verify(b.public_key(), ed25519.sign(a, b"m"), b"m")
