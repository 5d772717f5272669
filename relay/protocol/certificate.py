"""Node certificates: an authority's signed statement about a node (DESIGN §7). Pure.

Invariants:
- The signature covers CERT_DOMAIN + the exact cert bytes; sign_certificate
  decodes its own output first.
- Decoding checks shape only: validity window, revocation and whether the
  authority is trusted for the jurisdiction are the caller's (policy/trust).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from relay.errors import BadSignature, MalformedError
from relay.protocol.keystr import parse_public_key
from relay.protocol.names import valid_jurisdiction, valid_node_name
from relay.protocol.sealing import parse_seal_key
from relay.protocol.strict import (
    fields,
    int_field,
    pack,
    show,
    signed_pair,
    str_array,
    str_field,
    strict_unpack,
)

CERT_DOMAIN = b"relay-cert-v1\x00"


@dataclass(frozen=True, slots=True)
class Certificate:
    """An authority's statement of a node's keys, jurisdiction and URL (DESIGN §7)."""

    name: str
    keys: tuple[str, ...]
    jurisdiction: str
    url: str
    not_before: int
    not_after: int
    authority: str
    v: int = 1
    seal_keys: tuple[str, ...] = ()  # optional, protocol §21: the node's seal keys


_CERT_KEYS = frozenset(
    {"v", "name", "keys", "jurisdiction", "url", "not_before", "not_after", "authority"}
)
_OPTIONAL_CERT_KEYS = frozenset({"seal_keys"})
MAX_CERT_SEAL_KEYS = 4
_URL_RE = re.compile(r"https?://[\x21-\x7e]+")


def encode_certificate(c: Certificate) -> bytes:
    """Pack cert_bytes, keys in the DESIGN's order."""
    return pack(
        {
            "v": c.v,
            "name": c.name,
            "keys": list(c.keys),
            "jurisdiction": c.jurisdiction,
            "url": c.url,
            "not_before": c.not_before,
            "not_after": c.not_after,
            "authority": c.authority,
        }
        | ({"seal_keys": list(c.seal_keys)} if c.seal_keys else {})
    )


def sign_certificate(c: Certificate, key: Ed25519PrivateKey) -> bytes:
    """The certificate blob: pack([cert_bytes, signature over CERT_DOMAIN + cert_bytes])."""
    cert_bytes = encode_certificate(c)
    _decode_certificate(cert_bytes)
    return pack([cert_bytes, key.sign(CERT_DOMAIN + cert_bytes)])


def open_certificate(blob: bytes) -> tuple[Certificate, bytes, bytes]:
    """Strictly decode a certificate blob to (cert, cert_bytes, signature); no verification."""
    cert_bytes, signature = signed_pair(blob, "certificate")
    return _decode_certificate(cert_bytes), cert_bytes, signature


def verify_certificate(blob: bytes, authority_pub: Ed25519PublicKey) -> Certificate:
    """Decode a certificate and verify the authority's signature; BadSignature on mismatch.

    Validity window, revocation and whether the authority is trusted for the
    jurisdiction are the caller's to judge.
    """
    cert, cert_bytes, signature = open_certificate(blob)
    try:
        authority_pub.verify(signature, CERT_DOMAIN + cert_bytes)
    except InvalidSignature:
        raise BadSignature(
            f"certificate for {cert.name!r}: signature does not verify with the authority key"
        ) from None
    return cert


def _decode_certificate(cert_bytes: bytes) -> Certificate:
    w = "certificate"
    raw = strict_unpack(cert_bytes, w)
    m = fields(raw, w, _CERT_KEYS, _OPTIONAL_CERT_KEYS)
    v = int_field(m, "v", w)
    if v != 1:
        raise MalformedError(f"certificate: v: version {v} is not supported (expected 1)")
    name = str_field(m, "name", w)
    if not valid_node_name(name):
        raise MalformedError(f"certificate: name: {show(name)} is not a valid node name")
    keys = str_array(m["keys"], "certificate: keys")
    if not keys or len(set(keys)) != len(keys):
        raise MalformedError("certificate: keys: expected one or more distinct key strings")
    for i, key in enumerate(keys):
        try:
            parse_public_key(key)
        except MalformedError as e:
            raise MalformedError(f"certificate: keys[{i}]: {e.detail}") from None
    jurisdiction = str_field(m, "jurisdiction", w)
    if not valid_jurisdiction(jurisdiction):
        raise MalformedError(
            f"certificate: jurisdiction: {show(jurisdiction)} is not a country code"
        )
    url = str_field(m, "url", w)
    if not _URL_RE.fullmatch(url):
        raise MalformedError(f"certificate: url: {show(url)} is not an http(s) URL")
    not_before = int_field(m, "not_before", w)
    not_after = int_field(m, "not_after", w)
    if not_before >= not_after:
        raise MalformedError("certificate: not_after must be later than not_before")
    authority = str_field(m, "authority", w)
    if not authority:
        raise MalformedError("certificate: authority: empty")
    seal_keys = _seal_keys(m["seal_keys"]) if "seal_keys" in m else ()
    return Certificate(
        name, keys, jurisdiction, url, not_before, not_after, authority, v, seal_keys
    )


def _seal_keys(value: object) -> tuple[str, ...]:
    keys = str_array(value, "certificate: seal_keys")
    if not 1 <= len(keys) <= MAX_CERT_SEAL_KEYS or len(set(keys)) != len(keys):
        raise MalformedError(
            f"certificate: seal_keys: expected 1..{MAX_CERT_SEAL_KEYS} distinct seal key strings"
        )
    for i, key in enumerate(keys):
        try:
            parse_seal_key(key)
        except MalformedError as e:
            raise MalformedError(f"certificate: seal_keys[{i}]: {e.detail}") from None
    return keys
