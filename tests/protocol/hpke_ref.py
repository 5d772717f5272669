"""A test-only RFC 9180 HPKE sender for DHKEM(X25519, HKDF-SHA256) with HKDF-SHA256
and AES-128-GCM or AES-256-GCM, base mode, single-shot, with a FIXED ephemeral key.

`cryptography`'s HPKE draws the sender's ephemeral key itself, so its output
cannot be a golden vector. This module computes the same thing from the
RFC's definitions (section 4 KEM, 5.1 key schedule, 5.2 Seal, 7.1.3
DeriveKeyPair) with the ephemeral secret as an argument, so the x25519
suite's wrap in tests/vectors/relay-seal-v1.json is reproducible byte for
byte. It is checked against RFC 9180 Appendix A.1 (the same KEM and KDF
with AES-128-GCM; the RFC publishes no X25519 vector with AES-256-GCM) and
against `cryptography`, which must open what it seals. Never used by relay/.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

KEM_X25519_SHA256 = 0x0020
KDF_HKDF_SHA256 = 0x0001
AEAD_AES_128_GCM = 0x0001
AEAD_AES_256_GCM = 0x0002
_NK = {AEAD_AES_128_GCM: 16, AEAD_AES_256_GCM: 32}
_NN = 12
_NH = 32  # HKDF-SHA256
_MODE_BASE = 0x00
_VERSION = b"HPKE-v1"


def _i2osp(n: int, length: int) -> bytes:
    return n.to_bytes(length, "big")


def _extract(salt: bytes, ikm: bytes) -> bytes:
    return hmac.new(salt or bytes(_NH), ikm, hashlib.sha256).digest()


def _expand(prk: bytes, info: bytes, length: int) -> bytes:
    out, block, i = b"", b"", 1
    while len(out) < length:
        block = hmac.new(prk, block + info + bytes([i]), hashlib.sha256).digest()
        out += block
        i += 1
    return out[:length]


def labeled_extract(suite_id: bytes, salt: bytes, label: bytes, ikm: bytes) -> bytes:
    return _extract(salt, _VERSION + suite_id + label + ikm)


def labeled_expand(suite_id: bytes, prk: bytes, label: bytes, info: bytes, length: int) -> bytes:
    return _expand(prk, _i2osp(length, 2) + _VERSION + suite_id + label + info, length)


KEM_SUITE_ID = b"KEM" + _i2osp(KEM_X25519_SHA256, 2)


def hpke_suite_id(aead: int) -> bytes:
    return b"HPKE" + _i2osp(KEM_X25519_SHA256, 2) + _i2osp(KDF_HKDF_SHA256, 2) + _i2osp(aead, 2)


def public_of(secret: bytes) -> bytes:
    """The X25519 public key (u-coordinate) of a 32-byte secret."""
    key = x25519.X25519PrivateKey.from_private_bytes(secret).public_key()
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def derive_key_pair(ikm: bytes) -> tuple[bytes, bytes]:
    """RFC 9180 7.1.3 DeriveKeyPair for X25519: (sk, pk)."""
    prk = labeled_extract(KEM_SUITE_ID, b"", b"dkp_prk", ikm)
    sk = labeled_expand(KEM_SUITE_ID, prk, b"sk", b"", 32)
    return sk, public_of(sk)


@dataclass(frozen=True, slots=True)
class Sealed:
    """Every value RFC 9180 Appendix A lists for one base-mode encryption."""

    enc: bytes
    shared_secret: bytes
    key_schedule_context: bytes
    secret: bytes
    key: bytes
    base_nonce: bytes
    exporter_secret: bytes
    ciphertext: bytes

    @property
    def single_shot(self) -> bytes:
        """`enc || ciphertext`: what `cryptography`'s single-shot encrypt returns."""
        return self.enc + self.ciphertext


def seal(
    *, pk_r: bytes, sk_e: bytes, info: bytes, aad: bytes, plaintext: bytes, aead: int
) -> Sealed:
    """Base-mode SealBase(pkR, info, aad, pt) with the ephemeral secret `sk_e` fixed."""
    pk_e = public_of(sk_e)
    dh = x25519.X25519PrivateKey.from_private_bytes(sk_e).exchange(
        x25519.X25519PublicKey.from_public_bytes(pk_r)
    )
    kem_context = pk_e + pk_r
    eae_prk = labeled_extract(KEM_SUITE_ID, b"", b"eae_prk", dh)
    shared = labeled_expand(KEM_SUITE_ID, eae_prk, b"shared_secret", kem_context, 32)
    sid = hpke_suite_id(aead)
    psk_id_hash = labeled_extract(sid, b"", b"psk_id_hash", b"")
    info_hash = labeled_extract(sid, b"", b"info_hash", info)
    context = bytes([_MODE_BASE]) + psk_id_hash + info_hash
    secret = labeled_extract(sid, shared, b"secret", b"")
    key = labeled_expand(sid, secret, b"key", context, _NK[aead])
    base_nonce = labeled_expand(sid, secret, b"base_nonce", context, _NN)
    exporter = labeled_expand(sid, secret, b"exp", context, _NH)
    ct = AESGCM(key).encrypt(base_nonce, plaintext, aad)  # sequence 0: the nonce is base_nonce
    return Sealed(pk_e, shared, context, secret, key, base_nonce, exporter, ct)
