"""Payloads sealed to the destination node: the `seal` header extension (protocol §21).

Pure: keys, randomness and the data-encryption key come in as arguments; no
files, clock or I/O. docs/sealing.md says what each party can and cannot see.

Construction, for one envelope of kind `message` from `origin` to `dest`:

    inner   = salt (32 random bytes) || body
    commit  = SHA-256(inner)                       signed in the header
    k       = HKDF-Expand-SHA256(prk = dek, info = ENVELOPE_INFO || id || origin 0x00 dest, 32)
    payload = AES-256-GCM(k, nonce = 12 zero bytes, inner, aad = commit)
    wrap    = HPKE base mode (RFC 9180) single-shot seal of `dek` to the
              destination's seal key, info = WRAP_INFO || suite 0x00 origin 0x00 dest
              0x00 key id, empty aad; enc || ciphertext

Invariants:
- The header's `size` and `sha256` describe the ciphertext payload, so every
  hop checks integrity without a key; `commit` lets the destination (and an
  auditor it shows `inner` to) prove what the origin sent, while the secret
  salt keeps a relay from confirming a guessed body against it.
- Each envelope carries its own `wrap`, so relays may split, merge and
  reorder batches freely; an origin may reuse one `dek` (and its wrap) for
  many envelopes to one destination key, which turns the KEM into a cost per
  key epoch instead of per envelope. `k` is unique per (dek, id, origin,
  dest), so the fixed nonce is never reused under one key.
- Every decoder refuses with MalformedError; a seal that does not open is
  ItemRejected("unseal"), an unknown seal key ItemRejected("seal_key").
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from dataclasses import dataclass, field
from typing import Final, TypeAlias

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from relay.errors import ItemRejected, MalformedError
from relay.protocol.strict import fields, show, value_kind, wrong_type

SEAL_VERSION = 1
HYBRID = "mlkem768x25519"
CLASSIC = "x25519"
SUITES: Final = (HYBRID, CLASSIC)  # preference order: the first one both ends have wins
DEK_SIZE = 32
SALT_SIZE = 32
COMMIT_SIZE = 32
KEY_ID_LENGTH = 8
WRAP_INFO = b"relay-seal-v1 wrap\x00"
ENVELOPE_INFO = b"relay-seal-v1 envelope\x00"
_NONCE = bytes(12)
_TAG = 16

_MLKEM_PUB = 1184
_MLKEM_SEED = 64
_X25519 = 32
_PUB_SIZE = {HYBRID: _MLKEM_PUB + _X25519, CLASSIC: _X25519}
_SECRET_SIZE = {HYBRID: _MLKEM_SEED + _X25519, CLASSIC: _X25519}
_HPKE = {
    HYBRID: hpke.Suite(hpke.KEM.MLKEM768_X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM),
    CLASSIC: hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM),
}
_ENC_SIZE = {HYBRID: hpke.KEM.MLKEM768_X25519.enc_length(), CLASSIC: hpke.KEM.X25519.enc_length()}
WRAP_SIZE = {s: _ENC_SIZE[s] + DEK_SIZE + _TAG for s in SUITES}
_B64_RE = re.compile(r"[A-Za-z0-9+/]+")
# A fixed scalar to test an X25519 public key with: a low-order point gives the
# all-zero shared secret, which cryptography refuses (ValueError).
_PROBE = x25519.X25519PrivateKey.from_private_bytes(bytes(range(1, 33)))

_HpkePub: TypeAlias = x25519.X25519PublicKey | hpke.MLKEM768X25519PublicKey
_HpkePriv: TypeAlias = x25519.X25519PrivateKey | hpke.MLKEM768X25519PrivateKey


# --- keys -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SealPublicKey:
    """A node's public seal key: `suite:` + unpadded base64 of the raw key bytes.

    Raw bytes: X25519, the 32-byte u-coordinate; the hybrid, the ML-KEM-768
    encapsulation key (1184 bytes) followed by the X25519 key (32), as
    X-Wing orders them.
    """

    suite: str
    raw: bytes
    hpke_key: _HpkePub
    # derived from suite and raw once, not per envelope sealed (a hybrid key's
    # base64 is 1,622 characters)
    string: str = field(init=False, repr=False, compare=False)
    key_id: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        text = f"{self.suite}:{_b64(self.raw)}"
        object.__setattr__(self, "string", text)
        object.__setattr__(self, "key_id", text[len(self.suite) + 1 :][:KEY_ID_LENGTH])


@dataclass(frozen=True, slots=True)
class SealPrivateKey:
    """A node's private seal key: the ML-KEM-768 seed (64) and/or the X25519 key (32)."""

    suite: str
    secret: bytes
    hpke_key: _HpkePriv
    public: SealPublicKey

    @property
    def string(self) -> str:
        """`suite-secret:` + unpadded base64: what a seal key file holds."""
        return f"{self.suite}-secret:{_b64(self.secret)}"


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii").rstrip("=")


def _unb64(text: str, size: int, what: str) -> bytes:
    shown = "" if what == "seal secret" else show(text, 40)  # a secret is never echoed
    if "=" in text or not _B64_RE.fullmatch(text):
        raise MalformedError(f"{what} {shown}: base64 without '=' padding expected")
    try:
        raw = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except binascii.Error as e:
        raise MalformedError(f"{what} {shown}: bad base64: {e}") from None
    if len(raw) != size:
        raise MalformedError(f"{what} {shown}: expected {size} bytes, got {len(raw)}")
    if _b64(raw) != text:
        raise MalformedError(f"{what} {shown}: non-canonical base64")
    return raw


def _split_suite(text: object, suffix: str, what: str) -> tuple[str, str]:
    if not isinstance(text, str):
        raise MalformedError(f"{what}: expected a string, got {type(text).__name__}")
    suite, sep, rest = text.partition(":")
    if not sep or not suite.endswith(suffix) or suite[: len(suite) - len(suffix)] not in SUITES:
        names = ", ".join(f"{s}{suffix}:" for s in SUITES)
        shown = "" if suffix else f" {show(text, 40)}"  # a secret is never echoed
        raise MalformedError(f"{what}{shown}: must start with one of {names}")
    return suite[: len(suite) - len(suffix)], rest


def parse_seal_key(text: object) -> SealPublicKey:
    """Parse a public seal key string strictly; MalformedError says what is wrong."""
    what = "seal key"
    suite, b64 = _split_suite(text, "", what)
    raw = _unb64(b64, _PUB_SIZE[suite], what)
    return public_from_raw(suite, raw)


def public_from_raw(suite: str, raw: bytes) -> SealPublicKey:
    """A SealPublicKey from raw bytes; MalformedError for a weak or invalid key."""
    try:
        x_pub = x25519.X25519PublicKey.from_public_bytes(raw[-_X25519:])
        _PROBE.exchange(x_pub)
        key: _HpkePub = x_pub
        if suite == HYBRID:
            m_pub = mlkem.MLKEM768PublicKey.from_public_bytes(raw[:_MLKEM_PUB])
            key = hpke.MLKEM768X25519PublicKey(m_pub, x_pub)
    except ValueError as e:
        raise MalformedError(f"seal key ({suite}): not a valid public key ({e})") from None
    return SealPublicKey(suite, raw, key)


def seal_secret(suite: str, secret: bytes) -> SealPrivateKey:
    """The private seal key for `secret` (fresh random bytes, or a key file's)."""
    if suite not in SUITES:
        raise MalformedError(f"seal secret: unknown suite {show(suite)}")
    if len(secret) != _SECRET_SIZE[suite]:
        raise MalformedError(
            f"seal secret ({suite}): expected {_SECRET_SIZE[suite]} bytes, got {len(secret)}"
        )
    x_priv = x25519.X25519PrivateKey.from_private_bytes(secret[-_X25519:])
    x_raw = x_priv.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    priv: _HpkePriv = x_priv
    raw = x_raw
    if suite == HYBRID:
        m_priv = mlkem.MLKEM768PrivateKey.from_seed_bytes(secret[:_MLKEM_SEED])
        priv = hpke.MLKEM768X25519PrivateKey(m_priv, x_priv)
        raw = m_priv.public_key().public_bytes_raw() + x_raw
    return SealPrivateKey(suite, secret, priv, public_from_raw(suite, raw))


def secret_size(suite: str) -> int:
    """How many random bytes `seal_secret` takes for `suite`."""
    return _SECRET_SIZE[suite]


def parse_seal_secret(text: str) -> SealPrivateKey:
    """Parse what a seal key file holds (`SealPrivateKey.string`)."""
    what = "seal secret"
    suite, b64 = _split_suite(text.strip(), "-secret", what)
    return seal_secret(suite, _unb64(b64, _SECRET_SIZE[suite], what))


# --- the header extension -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SealInfo:
    """The header's `seal` map: how the payload is sealed, and the commitment to it."""

    suite: str
    key: str
    wrap: bytes
    commit: bytes
    v: int = SEAL_VERSION


_SEAL_KEYS = frozenset({"v", "suite", "key", "wrap", "commit"})


def seal_map(s: SealInfo) -> dict[str, object]:
    """The `seal` map as packed into a header, keys in the documented order."""
    return {"v": s.v, "suite": s.suite, "key": s.key, "wrap": s.wrap, "commit": s.commit}


def decode_seal_map(value: object) -> SealInfo:
    """Check a decoded `seal` map strictly; MalformedError naming the fault."""
    if type(value) is not dict:
        raise MalformedError(f"header: seal: expected a map, got {value_kind(value)}")
    m = fields(value, "header: seal", _SEAL_KEYS)
    return _seal_info(m["v"], m["suite"], m["key"], m["wrap"], m["commit"])


def check_seal(s: SealInfo) -> SealInfo:
    """`s` if decode_seal_map(seal_map(s)) accepts it; else the MalformedError that raises.

    The values are checked where they are, for a header about to be signed.
    """
    _seal_info(s.v, s.suite, s.key, s.wrap, s.commit)
    return s


def _seal_info(v: object, suite: object, key: object, wrap: object, commit: object) -> SealInfo:
    w = "header: seal"
    if type(v) is not int:
        raise wrong_type(w, "v", "int", v)
    if v != SEAL_VERSION:
        raise MalformedError(f"{w}: v: seal version {v} is not supported (expected 1)")
    if type(suite) is not str:
        raise wrong_type(w, "suite", "str", suite)
    if suite not in SUITES:
        raise MalformedError(f"{w}: suite: {show(suite)} is not one of {', '.join(SUITES)}")
    if type(key) is not str:
        raise wrong_type(w, "key", "str", key)
    if not 1 <= len(key) <= 64:
        raise MalformedError(f"{w}: key: the key id must be 1..64 characters")
    return SealInfo(
        suite, key, _bin(wrap, "wrap", WRAP_SIZE[suite]), _bin(commit, "commit", COMMIT_SIZE), v
    )


def _bin(value: object, key: str, size: int) -> bytes:
    if type(value) is not bytes:
        raise wrong_type("header: seal", key, "bin", value)
    if len(value) != size:
        raise MalformedError(f"header: seal: {key}: expected {size} bytes, got {len(value)}")
    return value


# --- sealing and opening ------------------------------------------------------------------


def _wrap_info(suite: str, origin: str, dest: str, key_id: str) -> bytes:
    return WRAP_INFO + b"\x00".join(s.encode() for s in (suite, origin, dest, key_id))


def _envelope_key(dek: bytes, env_id: bytes, origin: str, dest: str) -> AESGCM:
    # HKDF-Expand-SHA256 (RFC 5869 §2.3) of one block, L = 32: T(1) = HMAC(prk, info || 0x01),
    # computed directly (the library's HKDFExpand object costs more than the hash)
    info = ENVELOPE_INFO + env_id + origin.encode() + b"\x00" + dest.encode()
    return AESGCM(hmac.digest(dek, info + b"\x01", "sha256"))


def wrap_dek(pub: SealPublicKey, dek: bytes, origin: str, dest: str) -> bytes:
    """HPKE-seal `dek` to `pub` (randomised: a fresh encapsulation each call)."""
    if len(dek) != DEK_SIZE:
        raise MalformedError(f"seal: a data key is {DEK_SIZE} bytes, got {len(dek)}")
    info = _wrap_info(pub.suite, origin, dest, pub.key_id)
    return _HPKE[pub.suite].encrypt(dek, pub.hpke_key, info=info)


def unwrap_dek(priv: SealPrivateKey, info: SealInfo, origin: str, dest: str) -> bytes:
    """Open a header's `wrap` with this node's key; ItemRejected("unseal") if it does not open."""
    if info.suite != priv.suite:
        raise ItemRejected(
            "unseal", f"seal: suite {info.suite} but key {info.key} is a {priv.suite} key"
        )
    try:
        return _HPKE[priv.suite].decrypt(
            info.wrap, priv.hpke_key, info=_wrap_info(priv.suite, origin, dest, info.key)
        )
    except (InvalidTag, ValueError):
        raise ItemRejected(
            "unseal", f"seal: the wrapped key does not open with seal key {info.key}"
        ) from None


def seal_body(
    *,
    body: bytes,
    salt: bytes,
    dek: bytes,
    wrap: bytes,
    pub: SealPublicKey,
    env_id: bytes,
    origin: str,
    dest: str,
) -> tuple[SealInfo, bytes]:
    """Seal `body` for one envelope: (the header's seal map, the ciphertext payload)."""
    if len(salt) != SALT_SIZE:
        raise MalformedError(f"seal: the salt is {SALT_SIZE} bytes, got {len(salt)}")
    if len(wrap) != WRAP_SIZE[pub.suite]:
        raise MalformedError(f"seal: a {pub.suite} wrap is {WRAP_SIZE[pub.suite]} bytes")
    inner = salt + body
    commit = hashlib.sha256(inner).digest()
    ct = _envelope_key(dek, env_id, origin, dest).encrypt(_NONCE, inner, commit)
    return SealInfo(pub.suite, pub.key_id, wrap, commit), ct


def open_body(
    *, info: SealInfo, dek: bytes, payload: bytes, env_id: bytes, origin: str, dest: str
) -> bytes:
    """The `inner` bytes (salt || body) of a sealed payload, checked against `commit`.

    ItemRejected("unseal") if the ciphertext does not open or does not match.
    """
    try:
        inner = _envelope_key(dek, env_id, origin, dest).decrypt(_NONCE, payload, info.commit)
    except InvalidTag:
        raise ItemRejected(
            "unseal", f"envelope {env_id.hex()}: the sealed payload does not open"
        ) from None
    if not proves(inner, info):
        raise ItemRejected(
            "unseal", f"envelope {env_id.hex()}: the opened payload does not match its commit"
        )
    return inner


def body_of(inner: bytes) -> bytes:
    """The message body inside `inner` (what the destination stores: salt || body)."""
    return inner[SALT_SIZE:]


def proves(inner: bytes, info: SealInfo) -> bool:
    """True if `inner` is what the origin committed to (an auditor's check)."""
    return len(inner) >= SALT_SIZE and hashlib.sha256(inner).digest() == info.commit
