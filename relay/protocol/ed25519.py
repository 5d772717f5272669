"""Ed25519 sign and verify for the per-envelope paths, on libsodium (PyNaCl).

Pure: bytes in, bytes or bool out.

Invariants:
- Keys stay `cryptography` objects everywhere else (key files, key strings,
  certificates); only the two per-envelope operations come here, because
  libsodium does them in about half the CPU time of `cryptography`'s
  OpenSSL calls (one core: sign 46 -> 26 µs, verify 128 -> 70 µs).
- Signatures are the same bytes: Ed25519 is deterministic (RFC 8032), so
  `sign` equals `Ed25519PrivateKey.sign` for every key and message
  (tests/protocol/test_ed25519.py holds both to the RFC 8032 vectors).
- `verify` is True only for a 64-byte signature that libsodium accepts; it
  never raises on malformed input. libsodium is the stricter verifier
  (it also refuses small-order keys and non-canonical encodings), so
  nothing it accepts is refused by RFC 8032's checks.
"""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from nacl.bindings import crypto_sign, crypto_sign_open
from nacl.exceptions import BadSignatureError

SIGNATURE_SIZE = 64

# seed -> libsodium's 64-byte secret key (seed + public key); a node has a few keys
_SECRETS: dict[bytes, bytes] = {}


def sign(key: Ed25519PrivateKey, data: bytes) -> bytes:
    """The Ed25519 signature of `data` by `key` (what `key.sign(data)` returns)."""
    seed = key.private_bytes_raw()
    secret = _SECRETS.get(seed)
    if secret is None:
        secret = seed + key.public_key().public_bytes_raw()
        _SECRETS[seed] = secret
    signature: bytes = crypto_sign(data, secret)[:SIGNATURE_SIZE]
    return signature


def verify(pub: Ed25519PublicKey, signature: bytes, data: bytes) -> bool:
    """True when `signature` is `pub`'s valid Ed25519 signature over `data`."""
    if len(signature) != SIGNATURE_SIZE:
        return False
    try:
        crypto_sign_open(signature + data, pub.public_bytes_raw())
    except BadSignatureError:
        return False
    return True
