"""HTTP message signatures for federation requests (DESIGN §5).

The subset of RFC 9421 relay uses, plus RFC 9530 `Content-Digest`. Pure: no
I/O, no clock (time is passed in), no randomness (nonces are passed in).

Invariants:
- The signature base is rebuilt from what was received: the component values
  trimmed of surrounding SP/HTAB, and the `relay` member of Signature-Input
  byte for byte as it stood after `relay=`. Nothing is re-serialised.
- A base contains printable ASCII only (plus inner HTAB); a value with a line
  break or a non-ASCII character cannot be signed or verified.
- Every fault in a received header raises the error of the check that header
  feeds, and nothing else:
    Relay-Origin missing, empty, repeated or garbled      -> UnknownSender
    Signature-Input / Signature: the same, or any fault
      in their contents                                    -> BadSignature
    keyid's node part differs from Relay-Origin            -> BadSignature
    Content-Digest missing, repeated, garbled, no sha-256,
      or not the body's digest                             -> DigestMismatch
    Relay-Destination missing, empty, repeated or garbled -> WrongDestination
  A header given more than once is refused rather than combined.
- Verifier choices where DESIGN leaves room:
    * The `relay` member must list exactly the five COMPONENTS, each once and
      without parameters, in any order: the base follows the received order,
      so any order verifies. Senders use the order of COMPONENTS.
    * It must carry exactly the four parameters created, nonce, keyid and alg,
      in any order, each once; any other parameter (expires, tag, ...) is
      refused, since relay would otherwise ignore something that was signed.
    * created: a non-negative integer; nonce: a string holding canonical padded
      standard base64 of 16..64 bytes; keyid: a string `<node>#<key id>` with
      exactly one `#` and both parts non-empty; alg: the string "ed25519".
    * Other labels in Signature-Input and Signature are parsed for syntax and
      then ignored. A label appearing twice, or a parameter key repeated
      within one member, is refused (RFC 8941 would let the last one win).
    * The `relay` member of Signature is a byte sequence of exactly 64 bytes,
      without parameters.
- Content-Digest may list other algorithms; only sha-256 is checked and it
  must be present. Byte sequences must be canonical padded base64.
- `Relay-Certificate` (optional, at most once) is an RFC 8941 list of 1..4
  byte sequences, each a certificate blob (protocol.md §16) of the sending
  node; a fault in it -> UnknownSender. It is not a covered component: a
  certificate carries its authority's signature, and it introduces the sender
  only if the request signature then verifies with a key it lists.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from relay.errors import (
    BadSignature,
    ClockSkew,
    DigestMismatch,
    MalformedError,
    RelayError,
    UnknownSender,
    WrongDestination,
)
from relay.protocol.sfv import BareItem, Member, Params, b64, b64_canonical, parse_dictionary

LABEL = "relay"
ALG = "ed25519"
COMPONENTS = ("@method", "@path", "content-digest", "relay-origin", "relay-destination")
PARAMS = frozenset({"created", "nonce", "keyid", "alg"})
NONCE_MIN, NONCE_MAX = 16, 64
SIGNATURE_LEN = 64
CLOCK_WINDOW_S = 300
CERTIFICATE_HEADER = "Relay-Certificate"
MAX_HEADER_CERTIFICATES = 4


# --- Content-Digest (RFC 9530) ---------------------------------------------


def content_digest(body: bytes) -> str:
    """The Content-Digest header value for `body`: `sha-256=:<b64>:`."""
    return f"sha-256=:{b64(hashlib.sha256(body).digest())}:"


def check_content_digest(header_value: str | None, body: bytes) -> None:
    """Raise DigestMismatch unless the header's sha-256 member is sha256(body)."""
    if header_value is None:
        raise DigestMismatch("the request has no Content-Digest header")
    members = parse_dictionary(header_value.strip(" \t"), DigestMismatch, "Content-Digest")
    member = members.get("sha-256")
    if member is None:
        listed = ", ".join(sorted(members))
        raise DigestMismatch(f"Content-Digest has no sha-256 member (it lists: {listed})")
    if member.inner or not isinstance(member.value, bytes) or len(member.value) != 32:
        raise DigestMismatch("the sha-256 member of Content-Digest is not a 32-byte sequence")
    if not hmac.compare_digest(member.value, hashlib.sha256(body).digest()):
        raise DigestMismatch("Content-Digest sha-256 does not match the body received")


# --- signature base and parameters (RFC 9421 §2.5) ---------------------------


def signature_base(components: Sequence[tuple[str, str]], signature_params: str) -> bytes:
    """The RFC 9421 signature base: one `"<name>": <value>` line per component,
    then the `"@signature-params"` line; no trailing newline.

    Values are trimmed of surrounding SP/HTAB. Raises MalformedError for a
    duplicate or empty component name, or any text with a line break, another
    control character or a non-ASCII character.
    """
    lines: list[str] = []
    seen: set[str] = set()
    for name, value in components:
        if not name or '"' in name or name == "@signature-params" or name in seen:
            raise MalformedError(f"component name {name!r} cannot be used in a signature base")
        seen.add(name)
        trimmed = _base_text(name, value.strip(" \t"))
        lines.append(f'"{_base_text(name, name)}": {trimmed}')
    lines.append(f'"@signature-params": {_base_text("@signature-params", signature_params)}')
    return "\n".join(lines).encode("ascii")


def signature_params(created: int, nonce: str, keyid: str) -> str:
    """The `relay` member of Signature-Input (without the `relay=` label)."""
    if isinstance(created, bool) or not isinstance(created, int) or created < 0:
        raise ValueError(f"created must be a non-negative integer, not {created!r}")
    for name, text in (("nonce", nonce), ("keyid", keyid)):
        if not _is_sf_string_safe(text):
            raise ValueError(f"{name} {text!r} cannot be written as a structured-field string")
    names = " ".join(f'"{c}"' for c in COMPONENTS)
    return f'({names});created={created};nonce="{nonce}";keyid="{keyid}";alg="{ALG}"'


def sign_request(
    *,
    method: str,
    path: str,
    content_digest: str,
    origin: str,
    destination: str,
    key: Ed25519PrivateKey,
    key_id: str,
    created: int,
    nonce: bytes,
) -> dict[str, str]:
    """Sign a federation request; return the five headers to add to it.

    `nonce` is 16..64 fresh random bytes (ValueError otherwise); the key id
    travels as `keyid="<origin>#<key_id>"`.
    """
    if not NONCE_MIN <= len(nonce) <= NONCE_MAX:
        raise ValueError(f"nonce must be {NONCE_MIN}..{NONCE_MAX} bytes, not {len(nonce)}")
    if not origin or not key_id or "#" in origin or "#" in key_id:
        raise ValueError(f"cannot form a keyid from node {origin!r} and key id {key_id!r}")
    params = signature_params(created, b64(nonce), f"{origin}#{key_id}")
    values = (method, path, content_digest, origin, destination)
    base = signature_base(tuple(zip(COMPONENTS, values, strict=True)), params)
    return {
        "Content-Digest": content_digest,
        "Relay-Origin": origin,
        "Relay-Destination": destination,
        "Signature-Input": f"{LABEL}={params}",
        "Signature": f"{LABEL}=:{b64(key.sign(base))}:",
    }


# --- verifying ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SignedRequest:
    """What a verifier extracted from a request, before any key lookup."""

    origin: str
    destination: str
    key_node: str
    key_id: str
    created: int
    nonce: str
    signature: bytes
    base: bytes
    content_digest: str = ""  # the trimmed header value that was signed
    certificates: tuple[bytes, ...] = ()  # Relay-Certificate, if sent: the sender's certificates


def parse_request(*, method: str, path: str, headers: Mapping[str, str]) -> SignedRequest:
    """Extract and check the signature headers of a federation request.

    `path` is the raw request path without the query. Header names are matched
    case-insensitively. Raises the errors listed in the module docstring.
    """
    origin = _one_header(headers, "Relay-Origin", UnknownSender)
    sig_input = _one_header(headers, "Signature-Input", BadSignature)
    sig_header = _one_header(headers, "Signature", BadSignature)

    member = _relay_member(sig_input, "Signature-Input")
    if not member.inner or not isinstance(member.value, tuple):
        raise BadSignature("the relay member of Signature-Input is not a component list")
    names = _component_names(member.value)
    created, nonce, key_node, key_id = _signature_parameters(member.params)
    if key_node != origin:
        raise BadSignature(f"keyid names node {key_node!r} but Relay-Origin is {origin!r}")

    signed = _relay_member(sig_header, "Signature")
    if signed.inner or not isinstance(signed.value, bytes) or signed.params:
        raise BadSignature("the relay member of Signature is not a plain byte sequence")
    if len(signed.value) != SIGNATURE_LEN:
        raise BadSignature(f"the signature is {len(signed.value)} bytes, not {SIGNATURE_LEN}")

    digest = _one_header(headers, "Content-Digest", DigestMismatch)
    destination = _one_header(headers, "Relay-Destination", WrongDestination)
    values = {
        "@method": method,
        "@path": path,
        "content-digest": digest,
        "relay-origin": origin,
        "relay-destination": destination,
    }
    base = signature_base([(n, values[n]) for n in names], member.text)
    certificates = _certificates(headers)
    return SignedRequest(
        origin=origin,
        destination=destination,
        key_node=key_node,
        key_id=key_id,
        created=created,
        nonce=nonce,
        signature=signed.value,
        base=base,
        content_digest=digest,
        certificates=certificates,
    )


def certificate_header(blobs: Sequence[bytes]) -> str:
    """The Relay-Certificate value for the sender's certificate blobs (1..4 of them)."""
    if not 1 <= len(blobs) <= MAX_HEADER_CERTIFICATES:
        raise ValueError(f"{CERTIFICATE_HEADER} carries 1..{MAX_HEADER_CERTIFICATES} certificates")
    return ", ".join(f":{b64(blob)}:" for blob in blobs)


def _certificates(headers: Mapping[str, str]) -> tuple[bytes, ...]:
    """The blobs of an optional Relay-Certificate header; UnknownSender if it is garbled."""
    if not any(k.lower() == CERTIFICATE_HEADER.lower() for k in headers):
        return ()
    text = _one_header(headers, CERTIFICATE_HEADER, UnknownSender)
    members = [m.strip(" \t") for m in text.split(",")]
    if len(members) > MAX_HEADER_CERTIFICATES:
        raise UnknownSender(
            f"{CERTIFICATE_HEADER} lists {len(members)} certificates;"
            f" at most {MAX_HEADER_CERTIFICATES} are read"
        )
    blobs: list[bytes] = []
    for i, m in enumerate(members):
        raw = b64_canonical(m[1:-1]) if len(m) > 2 and m[0] == m[-1] == ":" else None
        if raw is None:
            raise UnknownSender(
                f"{CERTIFICATE_HEADER} member {i + 1} is not a byte sequence of canonical"
                " padded base64 between colons"
            )
        blobs.append(raw)
    return tuple(blobs)


def verify_request(req: SignedRequest, pub: Ed25519PublicKey) -> None:
    """Raise BadSignature unless `req.signature` is `pub`'s signature of `req.base`."""
    try:
        pub.verify(req.signature, req.base)
    except InvalidSignature:
        raise BadSignature(
            f"the request signature does not verify with key {req.key_node}#{req.key_id}"
        ) from None


def check_clock(created: int, now_s: int, window_s: int = CLOCK_WINDOW_S) -> None:
    """Raise ClockSkew if `created` is more than `window_s` seconds from `now_s`.

    The detail states the receiver's time so the sender's admin can compare.
    """
    skew = created - now_s
    if abs(skew) <= window_s:
        return
    direction = "ahead of" if skew > 0 else "behind"
    raise ClockSkew(
        f"request created at {created} ({_iso(created)}) is {abs(skew)} s {direction} "
        f"this node's clock, which reads {now_s} ({_iso(now_s)}); "
        f"the limit is {window_s} s either way"
    )


# --- helpers ---------------------------------------------------------------------


def _iso(t: int) -> str:
    try:
        return datetime.fromtimestamp(t, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, ValueError, OSError):
        return "out of range"


def _visible(text: str) -> bool:
    return all(c == "\t" or " " <= c <= "~" for c in text)


def _base_text(name: str, text: str) -> str:
    if not _visible(text):
        raise MalformedError(f"{name}: {text!r} cannot be part of a signature base")
    return text


def _is_sf_string_safe(text: str) -> bool:
    return all(" " <= c <= "~" and c not in '"\\' for c in text)


def _one_header(headers: Mapping[str, str], name: str, error: type[RelayError]) -> str:
    lname = name.lower()
    found = [v for k, v in headers.items() if k.lower() == lname]
    if not found:
        raise error(f"the request has no {name} header")
    if len(found) > 1:
        raise error(f"the {name} header is given {len(found)} times")
    value = found[0].strip(" \t")
    if not value or not _visible(value):
        raise error(f"the {name} header is empty or has characters outside printable ASCII")
    return value


def _relay_member(header_value: str, header: str) -> Member:
    members = parse_dictionary(header_value, BadSignature, header)
    if LABEL not in members:
        labels = ", ".join(sorted(members))
        raise BadSignature(f"{header} has no {LABEL!r} member (it has: {labels})")
    return members[LABEL]


def _component_names(items: tuple[tuple[BareItem, Params], ...]) -> list[str]:
    names: list[str] = []
    for value, params in items:
        if not isinstance(value, str) or params:
            raise BadSignature("a covered component is not a plain string")
        names.append(value)
    if sorted(names) != sorted(COMPONENTS):
        expected = " ".join(COMPONENTS)
        raise BadSignature(f"covered components must be {expected}, each once; got {names}")
    return names


def _signature_parameters(params: Params) -> tuple[int, str, str, str]:
    """Check the four parameters; return created, nonce, key node, key id."""
    missing = sorted(PARAMS - params.keys())
    if missing:
        raise BadSignature(f"Signature-Input lacks the parameter(s) {', '.join(missing)}")
    extra = sorted(params.keys() - PARAMS)
    if extra:
        raise BadSignature(f"Signature-Input has unsupported parameter(s) {', '.join(extra)}")
    created, nonce, keyid, alg = (params[k] for k in ("created", "nonce", "keyid", "alg"))
    if type(created) is not int or created < 0:
        raise BadSignature("created is not a non-negative integer")
    if not isinstance(nonce, str):
        raise BadSignature("nonce is not a string")
    raw = b64_canonical(nonce)
    if raw is None or not NONCE_MIN <= len(raw) <= NONCE_MAX:
        raise BadSignature(f"nonce is not padded base64 of {NONCE_MIN}..{NONCE_MAX} bytes")
    if not isinstance(keyid, str) or keyid.count("#") != 1:
        raise BadSignature("keyid is not a string of the form <node>#<key id>")
    key_node, _, key_id = keyid.partition("#")
    if not key_node or not key_id:
        raise BadSignature("keyid is not a string of the form <node>#<key id>")
    if alg != ALG:
        raise BadSignature(f"alg must be the string {ALG!r}")
    return created, nonce, key_node, key_id
