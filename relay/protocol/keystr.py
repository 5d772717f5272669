"""Public key strings (DESIGN §3). Pure: no files, no clock.

Invariants:
- A key string is `ed25519:` followed by the standard base64 (alphabet
  A-Z a-z 0-9 + /) of the raw 32-byte key, without `=` padding: always 43
  characters after the prefix, and the encoding is canonical (the unused low
  bits of the last character are zero), so one key has exactly one string and
  strings may be compared as strings.
- Parsing refuses, with a `MalformedError` naming the fault, anything else,
  and also keys that are not a canonical encoding of a curve point or that
  are points of small order: with such a key, signatures verify without the
  private key, so trusting it would let anyone write as that node.
- A key id is the first 8 characters of the base64 part; it is a lookup hint
  only, never an identity (it may contain `+` or `/`).
"""

from __future__ import annotations

import base64
import binascii
import re

from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from relay.errors import MalformedError

PREFIX = "ed25519:"
KEY_ID_LENGTH = 8
_B64_LENGTH = 43  # 32 bytes in unpadded base64
_B64_RE = re.compile(r"[A-Za-z0-9+/]{43}")

# Edwards25519 (RFC 8032 §5.1): -x^2 + y^2 = 1 + d x^2 y^2 over GF(p).
_P = 2**255 - 19
_D = -121665 * pow(121666, -1, _P) % _P
_SQRT_M1 = pow(2, (_P - 1) // 4, _P)


def public_key_string(pub: Ed25519PublicKey) -> str:
    """Return `ed25519:` + unpadded standard base64 of the raw public key."""
    raw = pub.public_bytes(Encoding.Raw, PublicFormat.Raw)
    return PREFIX + base64.b64encode(raw).decode("ascii").rstrip("=")


def parse_public_key(s: str) -> Ed25519PublicKey:
    """Parse a key string strictly; MalformedError says what is wrong."""
    raw = _raw_key(s)
    _check_point(raw, s)
    return Ed25519PublicKey.from_public_bytes(raw)


def key_id(key_string: str) -> str:
    """Return the key id (first 8 base64 characters) of a well-formed key string."""
    _raw_key(key_string)
    return key_string[len(PREFIX) : len(PREFIX) + KEY_ID_LENGTH]


def private_key_from_seed(seed: bytes) -> Ed25519PrivateKey:
    """Build a private key from its 32-byte RFC 8032 seed (tests, vectors)."""
    if len(seed) != 32:
        raise MalformedError(f"an Ed25519 seed is 32 bytes, got {len(seed)}")
    return Ed25519PrivateKey.from_private_bytes(seed)


def _raw_key(s: str) -> bytes:
    """Check the syntax of a key string and return the 32 raw bytes."""
    if not isinstance(s, str):
        raise MalformedError(f"public key: expected a string, got {type(s).__name__}")
    shown = s if len(s) <= 80 else s[:80] + "..."
    if not s.startswith(PREFIX):
        raise MalformedError(f"public key {shown!r}: must start with {PREFIX!r}")
    b64 = s[len(PREFIX) :]
    if "=" in b64:
        raise MalformedError(f"public key {shown!r}: base64 must not carry '=' padding")
    if len(b64) != _B64_LENGTH:
        raise MalformedError(
            f"public key {shown!r}: base64 part must be {_B64_LENGTH} characters "
            f"(32 bytes), got {len(b64)}"
        )
    if not _B64_RE.fullmatch(b64):
        raise MalformedError(
            f"public key {shown!r}: base64 part has a character outside A-Z a-z 0-9 + /"
        )
    try:
        raw = base64.b64decode(b64 + "=", validate=True)
    except binascii.Error as e:  # unreachable after the checks above; kept typed
        raise MalformedError(f"public key {shown!r}: bad base64: {e}") from None
    if base64.b64encode(raw).decode("ascii").rstrip("=") != b64:
        raise MalformedError(
            f"public key {shown!r}: non-canonical base64 (last character has stray bits)"
        )
    return raw


def _check_point(raw: bytes, shown: str) -> None:
    """Refuse non-canonical point encodings and points of small order."""
    y = int.from_bytes(raw, "little") & ((1 << 255) - 1)
    sign = raw[31] >> 7
    if y >= _P:
        raise MalformedError(f"public key {shown!r}: non-canonical point encoding")
    u = (y * y - 1) % _P
    v = (_D * y * y + 1) % _P
    x2 = u * pow(v, -1, _P) % _P
    x = pow(x2, (_P + 3) // 8, _P)
    if (x * x - x2) % _P != 0:
        x = x * _SQRT_M1 % _P
    if (x * x - x2) % _P != 0:
        raise MalformedError(f"public key {shown!r}: not a point on Ed25519")
    if x == 0 and sign == 1:
        raise MalformedError(f"public key {shown!r}: non-canonical point encoding")
    # [8]P is the identity (0 : 1 : 1) exactly when P has small order.
    px, py, pz = x, y, 1
    for _ in range(3):
        px, py, pz = _double(px, py, pz)
    if px == 0 and (py - pz) % _P == 0:
        raise MalformedError(f"public key {shown!r}: weak key (point of small order)")


def _double(x: int, y: int, z: int) -> tuple[int, int, int]:
    """Projective doubling on edwards25519 (a = -1), no inversions."""
    b = (x + y) * (x + y) % _P
    c = x * x % _P
    d = y * y % _P
    f = (d - c) % _P
    j = (f - 2 * z * z) % _P
    return (b - c - d) * j % _P, f * (-c - d) % _P, f * j % _P
