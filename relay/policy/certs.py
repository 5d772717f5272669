"""Node certificates: does this certificate make its node trusted here, now? (DESIGN §7)

Pure: values in, verdicts out; no files, no clock of its own.

Invariants:
- A certificate counts only if (1) it strictly decodes, (2) the authority it
  names is in this node's `[[authorities]]`, (3) that authority's key verifies
  its signature, (4) that authority may attest the certificate's
  jurisdiction, (5) it is not revoked and (6) now is within
  [not_before, not_after] (unix ms, both ends included). `judge` checks the
  time-free part (1)-(5) once, when a certificate is first seen; `in_force`
  checks (6) at every use, so a certificate stops counting the moment it
  expires. Revocation is checked again at every use by the caller, since the
  revocation list can change after a certificate was first judged.
- A certificate is identified by its fingerprint: lowercase hex SHA-256 of
  cert_bytes (the signed bytes). Revocation lists name fingerprints.
- Nothing here raises for a bad certificate: a refusal is a `Verdict` whose
  `reason` tells an admin what to fix.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Mapping, Set
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from relay.errors import BadSignature, MalformedError
from relay.protocol.certificate import Certificate, open_certificate, verify_certificate

_FINGERPRINT = re.compile(r"[0-9a-f]{64}")
MAX_LINE = 16 * 1024  # a certificate line is a few hundred bytes; refuse anything absurd


@dataclass(frozen=True, slots=True)
class TrustedAuthority:
    """An authority from `[[authorities]]`: its key and the jurisdictions it may attest."""

    name: str
    key: Ed25519PublicKey
    jurisdictions: frozenset[str]


@dataclass(frozen=True, slots=True)
class Verdict:
    """The time-free judgement of one certificate blob.

    `cert` is None when the certificate is refused; then `reason` says why.
    `fingerprint` is "" only when the blob does not even decode.
    """

    blob: bytes
    cert: Certificate | None
    fingerprint: str
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.cert is not None


def fingerprint(cert_bytes: bytes) -> str:
    """Lowercase hex SHA-256 of cert_bytes: the identity used by revocation lists."""
    return hashlib.sha256(cert_bytes).hexdigest()


def judge(
    blob: bytes,
    authorities: Mapping[str, TrustedAuthority],
    revoked: Set[str],
) -> Verdict:
    """Check everything about a certificate blob except its validity window."""
    try:
        cert, cert_bytes, _ = open_certificate(blob)
    except MalformedError as e:
        return Verdict(blob, None, "", f"not a certificate: {e.detail}")
    fp = fingerprint(cert_bytes)
    who = f"certificate {fp[:16]} for {cert.name}"
    authority = authorities.get(cert.authority)
    if authority is None:
        return Verdict(blob, None, fp, f"{who}: authority {cert.authority!r} is not trusted here")
    try:
        verify_certificate(blob, authority.key)
    except (BadSignature, MalformedError) as e:
        return Verdict(blob, None, fp, f"{who}: {e.detail}")
    if cert.jurisdiction not in authority.jurisdictions:
        may = ", ".join(sorted(authority.jurisdictions))
        reason = f"authority {authority.name!r} may not attest {cert.jurisdiction} (only {may})"
        return Verdict(blob, None, fp, f"{who}: {reason}")
    if fp in revoked:
        return Verdict(blob, None, fp, f"{who}: revoked")
    return Verdict(blob, cert, fp)


def in_force(cert: Certificate, now_ms: int) -> bool:
    """True if `now_ms` is within the certificate's validity, both ends included."""
    return cert.not_before <= now_ms <= cert.not_after


def time_fault(cert: Certificate, now_ms: int) -> str:
    """Why the certificate is not in force at `now_ms`, or "" if it is."""
    if now_ms < cert.not_before:
        return f"not valid before {format_ms(cert.not_before)}"
    if now_ms > cert.not_after:
        return f"expired at {format_ms(cert.not_after)}"
    return ""


def format_ms(ms: int) -> str:
    """A unix-ms time as an ISO 8601 UTC string, for sentences."""
    try:
        return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, ValueError, OSError):
        return f"{ms} ms"


# --- the file formats -----------------------------------------------------------


def encode_line(blob: bytes) -> str:
    """A certificate file's line: standard base64 (with padding) of the blob."""
    return base64.b64encode(blob).decode("ascii")


def decode_line(line: str) -> bytes:
    """The blob of one certificate line; MalformedError if it is not base64 of a certificate."""
    text = line.strip()
    if len(text) > MAX_LINE:
        raise MalformedError(f"certificate line is {len(text)} characters, over {MAX_LINE}")
    try:
        blob = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise MalformedError("certificate line is not standard base64") from None
    open_certificate(blob)  # MalformedError if it is not a certificate
    return blob


def certificate_lines(text: str) -> list[tuple[int, str]]:
    """The (line number, text) of every certificate line; blank and `#` lines skipped."""
    out: list[tuple[int, str]] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if line and not line.startswith("#"):
            out.append((number, line))
    return out


def parse_revoked(text: str) -> tuple[frozenset[str], list[tuple[int, str]]]:
    """Read a revocation list: fingerprints, and (line, reason) for each bad line.

    Each line is a fingerprint (64 lowercase hex digits, see `fingerprint`) or
    a whole certificate line as found in a certificate file; blank lines and
    lines starting with `#` are skipped.
    """
    found: set[str] = set()
    bad: list[tuple[int, str]] = []
    for number, line in certificate_lines(text):
        if _FINGERPRINT.fullmatch(line):
            found.add(line)
            continue
        try:
            blob = decode_line(line)
        except MalformedError as e:
            reason = f"neither a fingerprint (64 hex digits) nor a certificate line: {e.detail}"
            bad.append((number, reason))
            continue
        _, cert_bytes, _ = open_certificate(blob)
        found.add(fingerprint(cert_bytes))
    return frozenset(found), bad
