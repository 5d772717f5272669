"""Tests for relay.protocol.httpsig: RFC 9421 B.2.6, RFC 9530, relay's own golden
request, and a table of every way a request's signature headers can be wrong."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import load_pem_private_key, load_pem_public_key
from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict

from relay.errors import (
    BadSignature,
    ClockSkew,
    DigestMismatch,
    MalformedError,
    RelayError,
    UnknownSender,
    WrongDestination,
)
from relay.protocol import httpsig

VECTORS = Path(__file__).parent.parent / "vectors"
PATH = "/federation/v1/batch"


def load(name: str) -> Any:
    return json.loads((VECTORS / name).read_text(encoding="utf-8"))


RELAY = load("relay-v1.json")
BATCH = RELAY["batch_request"]
BODY = bytes.fromhex(BATCH["body_hex"])
A_KEY = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(RELAY["keys"]["a.test"]["seed_hex"]))
B_KEY = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(RELAY["keys"]["b.test"]["seed_hex"]))
NONCE = base64.b64decode("ZGVmZ2hpamtsbW5vcHFycw==")
CREATED = 1795600001


def vector_headers() -> dict[str, str]:
    return {
        "Content-Digest": BATCH["content_digest"],
        "Relay-Origin": BATCH["relay_origin"],
        "Relay-Destination": BATCH["relay_destination"],
        "Signature-Input": BATCH["signature_input"],
        "Signature": BATCH["signature"],
    }


def signed(params: str, *, method: str = "POST", path: str = PATH, **over: str) -> dict[str, str]:
    """Headers whose Signature-Input member is `params`, honestly signed by a.test
    over the components it lists, so only the parser's rules can refuse them."""
    headers = vector_headers() | over
    headers["Signature-Input"] = "relay=" + params
    values = {
        "@method": method,
        "@path": path,
        "content-digest": headers["Content-Digest"],
        "relay-origin": headers["Relay-Origin"],
        "relay-destination": headers["Relay-Destination"],
    }
    inner = params[params.index("(") + 1 : params.index(")")]
    names = [n.split(";")[0].strip('"') for n in inner.split()]
    base = httpsig.signature_base([(n, values.get(n, "x")) for n in names], params)
    sig = base64.b64encode(A_KEY.sign(base)).decode()
    headers["Signature"] = f"relay=:{sig}:"
    return headers


def params_with(**fields: str) -> str:
    """The vector's Signature-Input member with some parameters replaced
    (value given as written on the wire) or removed (value "")."""
    member: str = BATCH["signature_input"].removeprefix("relay=")
    comps, _, rest = member.partition(";")
    parts = dict(p.split("=", 1) for p in rest.split(";"))
    for key, value in fields.items():
        if value:
            parts[key] = value
        else:
            del parts[key]
    return comps + "".join(f";{k}={v}" for k, v in parts.items())


# --- outside truth: RFC 9421 B.2.6 and RFC 9530 ----------------------------------


def test_rfc9421_b26_signature_base_sign_and_verify() -> None:
    vec = load("rfc9421-b26-ed25519.json")
    req = vec["request"]
    headers = {name.lower(): value for name, value in req["headers"]}
    derived = {
        "@method": req["method"],
        "@path": urlsplit(req["target"]).path,
        "@authority": headers["host"].lower(),
    }
    components = [
        (n, derived[n] if n.startswith("@") else headers[n]) for n in vec["covered_components"]
    ]
    params = vec["signature_input"].removeprefix("sig-b26=")

    base = httpsig.signature_base(components, params)
    assert base == vec["signature_base"].encode("ascii")

    key = load_pem_private_key(vec["private_key_pem"].encode(), password=None)
    assert isinstance(key, Ed25519PrivateKey)
    expected = base64.b64decode(vec["signature"].removeprefix("sig-b26=").strip(":"))
    assert key.sign(base) == expected

    pub = load_pem_public_key(vec["public_key_pem"].encode())
    assert isinstance(pub, Ed25519PublicKey)
    pub.verify(expected, base)


def test_rfc9530_content_digest() -> None:
    vec = load("rfc9530-content-digest.json")
    body = vec["body"].encode("utf-8")
    assert httpsig.content_digest(body) == vec["content_digest"]
    httpsig.check_content_digest(vec["content_digest"], body)
    with pytest.raises(DigestMismatch):
        httpsig.check_content_digest(vec["content_digest"], body + b" ")


# --- relay's golden request --------------------------------------------------------


def test_golden_content_digest() -> None:
    assert httpsig.content_digest(BODY) == BATCH["content_digest"]


def test_golden_sign_request() -> None:
    headers = httpsig.sign_request(
        method="POST",
        path=PATH,
        content_digest=httpsig.content_digest(BODY),
        origin="a.test",
        destination="b.test",
        key=A_KEY,
        key_id=RELAY["keys"]["a.test"]["key_id"],
        created=CREATED,
        nonce=NONCE,
    )
    assert headers == vector_headers()


def test_golden_signature_params() -> None:
    params = httpsig.signature_params(CREATED, "ZGVmZ2hpamtsbW5vcHFycw==", "a.test#11qYAYKx")
    assert "relay=" + params == BATCH["signature_input"]


def test_golden_parse_and_verify() -> None:
    req = httpsig.parse_request(method="POST", path=PATH, headers=vector_headers())
    assert req.base == BATCH["signature_base"].encode("ascii")
    assert (req.origin, req.destination) == ("a.test", "b.test")
    assert (req.key_node, req.key_id) == ("a.test", "11qYAYKx")
    assert (req.created, req.nonce) == (CREATED, "ZGVmZ2hpamtsbW5vcHFycw==")
    assert req.content_digest == BATCH["content_digest"]
    httpsig.verify_request(req, A_KEY.public_key())
    httpsig.check_content_digest(req.content_digest, BODY)


def test_verify_with_another_key_fails() -> None:
    req = httpsig.parse_request(method="POST", path=PATH, headers=vector_headers())
    with pytest.raises(BadSignature):
        httpsig.verify_request(req, B_KEY.public_key())


def test_headers_case_insensitive_and_trimmed() -> None:
    raw = CIMultiDict((k.upper(), f" \t{v} ") for k, v in vector_headers().items())
    req = httpsig.parse_request(method="POST", path=PATH, headers=raw)
    assert req.base == BATCH["signature_base"].encode("ascii")
    httpsig.verify_request(req, A_KEY.public_key())
    lower = {k.lower(): v for k, v in vector_headers().items()}
    assert httpsig.parse_request(method="POST", path=PATH, headers=lower).base == req.base


def test_other_component_and_param_orders_verify() -> None:
    params = (
        '("relay-destination" "@path" "@method" "relay-origin" "content-digest")'
        ';alg="ed25519";keyid="a.test#11qYAYKx";nonce="ZGVmZ2hpamtsbW5vcHFycw==";created=1795600001'
    )
    req = httpsig.parse_request(method="POST", path=PATH, headers=signed(params))
    assert req.base.startswith(b'"relay-destination": b.test\n"@path": /federation/v1/batch\n')
    assert req.base.endswith(b'"@signature-params": ' + params.encode())
    httpsig.verify_request(req, A_KEY.public_key())


def test_other_labels_are_ignored() -> None:
    headers = vector_headers()
    headers["Signature-Input"] = 'other=("@method");created=1, ' + headers["Signature-Input"]
    headers["Signature"] += ", other=:AAAA:"
    req = httpsig.parse_request(method="POST", path=PATH, headers=headers)
    httpsig.verify_request(req, A_KEY.public_key())


# --- refusals ------------------------------------------------------------------------

GOOD_PARAMS: str = BATCH["signature_input"].removeprefix("relay=")
SIG_B64: str = BATCH["signature"].removeprefix("relay=:").removesuffix(":")


def without(name: str) -> dict[str, str]:
    headers = vector_headers()
    del headers[name]
    return headers


def replaced(**over: str) -> dict[str, str]:
    return vector_headers() | {k.replace("_", "-"): v for k, v in over.items()}


PARSE_REFUSALS: list[tuple[str, dict[str, str], type[RelayError]]] = [
    ("no Relay-Origin", without("Relay-Origin"), UnknownSender),
    ("no Signature-Input", without("Signature-Input"), BadSignature),
    ("no Signature", without("Signature"), BadSignature),
    ("no Content-Digest", without("Content-Digest"), DigestMismatch),
    ("no Relay-Destination", without("Relay-Destination"), WrongDestination),
    ("empty Relay-Origin", replaced(Relay_Origin="  "), UnknownSender),
    ("non-ASCII Relay-Origin", replaced(Relay_Origin="а.test"), UnknownSender),
    ("empty Relay-Destination", replaced(Relay_Destination=""), WrongDestination),
    (
        "wrong label in Signature-Input",
        replaced(Signature_Input="sig=" + GOOD_PARAMS),
        BadSignature,
    ),
    ("wrong label in Signature", replaced(Signature=f"sig=:{SIG_B64}:"), BadSignature),
    (
        "relay label twice",
        replaced(Signature_Input=BATCH["signature_input"] + ", " + BATCH["signature_input"]),
        BadSignature,
    ),
    (
        "extra component",
        signed(GOOD_PARAMS.replace('"relay-destination")', '"relay-destination" "content-type")')),
        BadSignature,
    ),
    ("missing component", signed(GOOD_PARAMS.replace(' "@path"', "")), BadSignature),
    (
        "repeated component",
        replaced(
            Signature_Input="relay="
            + GOOD_PARAMS.replace('"relay-destination")', '"relay-destination" "@path")')
        ),
        BadSignature,
    ),
    (
        "component with a parameter",
        signed(GOOD_PARAMS.replace('"@method"', '"@method";req')),
        BadSignature,
    ),
    ("component as a token", signed(GOOD_PARAMS.replace('"@path"', "path")), BadSignature),
    (
        "components not a list",
        replaced(Signature_Input='relay="x"' + GOOD_PARAMS[GOOD_PARAMS.index(";") :]),
        BadSignature,
    ),
    ("missing created", signed(params_with(created="")), BadSignature),
    ("missing nonce", signed(params_with(nonce="")), BadSignature),
    ("missing keyid", signed(params_with(keyid="")), BadSignature),
    ("missing alg", signed(params_with(alg="")), BadSignature),
    ("extra parameter", signed(params_with(expires="1795600301")), BadSignature),
    ("repeated parameter", signed(GOOD_PARAMS + ";created=1795600001"), BadSignature),
    ("alg rsa", signed(params_with(alg='"rsa-pss-sha512"')), BadSignature),
    ("alg as a token", signed(params_with(alg="ed25519")), BadSignature),
    ("created as a string", signed(params_with(created='"1795600001"')), BadSignature),
    ("created negative", signed(params_with(created="-1")), BadSignature),
    ("created decimal", signed(params_with(created="1795600001.5")), BadSignature),
    (
        "nonce 15 bytes",
        signed(params_with(nonce=f'"{base64.b64encode(bytes(15)).decode()}"')),
        BadSignature,
    ),
    (
        "nonce 65 bytes",
        signed(params_with(nonce=f'"{base64.b64encode(bytes(65)).decode()}"')),
        BadSignature,
    ),
    ("nonce not base64", signed(params_with(nonce='"not base64 at all!!"')), BadSignature),
    ("nonce unpadded", signed(params_with(nonce='"ZGVmZ2hpamtsbW5vcHFycw"')), BadSignature),
    ("nonce non-canonical", signed(params_with(nonce='"ZGVmZ2hpamtsbW5vcHFycx=="')), BadSignature),
    ("nonce as bytes", signed(params_with(nonce=":ZGVmZ2hpamtsbW5vcHFycw==:")), BadSignature),
    ("keyid without #", signed(params_with(keyid='"a.test"')), BadSignature),
    ("keyid with two #", signed(params_with(keyid='"a.test#11qY#AYKx"')), BadSignature),
    ("keyid empty key id", signed(params_with(keyid='"a.test#"')), BadSignature),
    ("keyid of another node", signed(params_with(keyid='"c.test#11qYAYKx"')), BadSignature),
    ("Relay-Origin not the keyid node", replaced(Relay_Origin="c.test"), BadSignature),
    (
        "signature 63 bytes",
        replaced(Signature=f"relay=:{base64.b64encode(bytes(63)).decode()}:"),
        BadSignature,
    ),
    (
        "signature 65 bytes",
        replaced(Signature=f"relay=:{base64.b64encode(bytes(65)).decode()}:"),
        BadSignature,
    ),
    ("signature as a string", replaced(Signature=f'relay="{SIG_B64}"'), BadSignature),
    ("signature with a parameter", replaced(Signature=f"relay=:{SIG_B64}:;x=1"), BadSignature),
    ("signature unpadded", replaced(Signature=f"relay=:{SIG_B64.rstrip('=')}:"), BadSignature),
    ("signature unterminated", replaced(Signature=f"relay=:{SIG_B64}"), BadSignature),
    ("unterminated inner list", replaced(Signature_Input='relay=("@method" "@path"'), BadSignature),
    ("unterminated string", replaced(Signature_Input='relay=("@method'), BadSignature),
    ("trailing comma", replaced(Signature_Input=BATCH["signature_input"] + ","), BadSignature),
    ("uppercase label", replaced(Signature_Input="RELAY=" + GOOD_PARAMS), BadSignature),
    ("junk after member", replaced(Signature_Input=BATCH["signature_input"] + " x"), BadSignature),
    (
        "bad escape",
        replaced(Signature_Input=BATCH["signature_input"].replace("a.test#", "a.\\test#")),
        BadSignature,
    ),
    ("bare label", replaced(Signature_Input="relay"), BadSignature),
    ("integer too long", signed(params_with(created="1234567890123456")), BadSignature),
]


@pytest.mark.parametrize(
    ("headers", "error"),
    [pytest.param(h, e, id=name) for name, h, e in PARSE_REFUSALS],
)
def test_parse_refusals(headers: dict[str, str], error: type[RelayError]) -> None:
    with pytest.raises(error) as info:
        httpsig.parse_request(method="POST", path=PATH, headers=headers)
    assert type(info.value) is error
    assert info.value.detail


@pytest.mark.parametrize(
    ("name", "error"),
    [
        ("Relay-Origin", UnknownSender),
        ("Signature-Input", BadSignature),
        ("Signature", BadSignature),
        ("Content-Digest", DigestMismatch),
        ("Relay-Destination", WrongDestination),
    ],
)
def test_repeated_header_refused(name: str, error: type[RelayError]) -> None:
    headers = CIMultiDict(vector_headers())
    headers.add(name.lower(), vector_headers()[name])
    with pytest.raises(error):
        httpsig.parse_request(method="POST", path=PATH, headers=headers)


def test_honest_signed_helper_is_accepted() -> None:
    """The refusal table's `signed` helper makes valid requests when nothing is wrong."""
    req = httpsig.parse_request(method="POST", path=PATH, headers=signed(GOOD_PARAMS))
    httpsig.verify_request(req, A_KEY.public_key())


OTHER_DIGEST = httpsig.content_digest(b"other body")
TAMPERED: list[tuple[str, dict[str, str], str, str]] = [
    ("digest", replaced(Content_Digest=OTHER_DIGEST), "POST", PATH),
    ("destination", replaced(Relay_Destination="c.test"), "POST", PATH),
    (
        "created",
        replaced(Signature_Input=BATCH["signature_input"].replace("=1795600001", "=1795600002")),
        "POST",
        PATH,
    ),
    (
        "nonce",
        replaced(Signature_Input=BATCH["signature_input"].replace("ZGVm", "ZGVn")),
        "POST",
        PATH,
    ),
    (
        "origin and keyid together",
        replaced(
            Relay_Origin="c.test",
            Signature_Input=BATCH["signature_input"].replace("a.test#", "c.test#"),
        ),
        "POST",
        PATH,
    ),
    ("method", vector_headers(), "PUT", PATH),
    ("path", vector_headers(), "POST", "/federation/v1/batch2"),
    (
        "params whitespace",
        replaced(Signature_Input=BATCH["signature_input"].replace('" "', '"  "')),
        "POST",
        PATH,
    ),
]


@pytest.mark.parametrize(
    ("headers", "method", "path"),
    [pytest.param(h, m, p, id=name) for name, h, m, p in TAMPERED],
)
def test_tampered_requests_fail_verification(
    headers: dict[str, str], method: str, path: str
) -> None:
    req = httpsig.parse_request(method=method, path=path, headers=headers)
    with pytest.raises(BadSignature):
        httpsig.verify_request(req, A_KEY.public_key())


# --- Content-Digest ------------------------------------------------------------------

GOOD_DIGEST = BATCH["content_digest"]
SHA512 = "sha-512=:" + base64.b64encode(bytes(64)).decode() + ":"


@pytest.mark.parametrize(
    "value",
    [GOOD_DIGEST, f"{SHA512}, {GOOD_DIGEST}", f" {GOOD_DIGEST} ", f"{GOOD_DIGEST},md5=:AAAA:"],
)
def test_content_digest_accepted(value: str) -> None:
    httpsig.check_content_digest(value, BODY)


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        SHA512,
        OTHER_DIGEST,
        GOOD_DIGEST.replace("sha-256", "sha-512"),
        f'sha-256="{GOOD_DIGEST[9:-1]}"',
        "sha-256=:" + base64.b64encode(bytes(31)).decode() + ":",
        GOOD_DIGEST[:-1],
        GOOD_DIGEST + "," + GOOD_DIGEST,
        "SHA-256=" + GOOD_DIGEST[8:],
        "sha-256=:" + GOOD_DIGEST[9:-2] + ":",
    ],
)
def test_content_digest_refused(value: str | None) -> None:
    with pytest.raises(DigestMismatch):
        httpsig.check_content_digest(value, BODY)


# --- signature base, params, signing -------------------------------------------------


@pytest.mark.parametrize(
    "components",
    [
        [("relay-origin", "a.test\nb")],
        [("relay-origin", "a.test\r")],
        [("relay-origin", "алматы")],
        [("relay-origin", "a\x00")],
        [("@path", "/x"), ("@path", "/x")],
        [("", "x")],
        [('"x', "x")],
        [("@signature-params", "x")],
    ],
)
def test_signature_base_refuses(components: list[tuple[str, str]]) -> None:
    with pytest.raises(MalformedError):
        httpsig.signature_base(components, '("relay-origin");created=1')


def test_signature_base_refuses_bad_params_text() -> None:
    with pytest.raises(MalformedError):
        httpsig.signature_base([("@method", "POST")], '("@method");created=1\n')


def test_signature_base_trims_and_has_no_trailing_newline() -> None:
    base = httpsig.signature_base([("@method", " POST\t"), ("x", "a b")], "()")
    assert base == b'"@method": POST\n"x": a b\n"@signature-params": ()'


@pytest.mark.parametrize("size", [0, 15, 65, 100])
def test_sign_request_refuses_nonce_size(size: int) -> None:
    with pytest.raises(ValueError, match="nonce"):
        httpsig.sign_request(
            method="POST",
            path=PATH,
            content_digest=GOOD_DIGEST,
            origin="a.test",
            destination="b.test",
            key=A_KEY,
            key_id="11qYAYKx",
            created=CREATED,
            nonce=bytes(size),
        )


@pytest.mark.parametrize("size", [16, 64])
def test_sign_request_nonce_bounds_round_trip(size: int) -> None:
    headers = httpsig.sign_request(
        method="POST",
        path=PATH,
        content_digest=GOOD_DIGEST,
        origin="a.test",
        destination="b.test",
        key=A_KEY,
        key_id="11qYAYKx",
        created=CREATED,
        nonce=bytes(range(size)),
    )
    req = httpsig.parse_request(method="POST", path=PATH, headers=headers)
    assert base64.b64decode(req.nonce) == bytes(range(size))
    httpsig.verify_request(req, A_KEY.public_key())


@pytest.mark.parametrize(
    ("origin", "key_id"), [("a#test", "k"), ("a.test", "k#1"), ("", "k"), ("a.test", "")]
)
def test_sign_request_refuses_bad_keyid(origin: str, key_id: str) -> None:
    with pytest.raises(ValueError, match="keyid"):
        httpsig.sign_request(
            method="POST",
            path=PATH,
            content_digest=GOOD_DIGEST,
            origin=origin,
            destination="b.test",
            key=A_KEY,
            key_id=key_id,
            created=CREATED,
            nonce=NONCE,
        )


@pytest.mark.parametrize(
    ("created", "nonce", "keyid"), [(-1, "n", "a#k"), (1, 'n"', "a#k"), (1, "n", "a\\#k")]
)
def test_signature_params_refuses(created: int, nonce: str, keyid: str) -> None:
    with pytest.raises(ValueError):
        httpsig.signature_params(created, nonce, keyid)


# --- clock ---------------------------------------------------------------------------

NOW = 1795600000


@pytest.mark.parametrize("created", [NOW, NOW - 300, NOW + 300, NOW + 1])
def test_clock_inside_window(created: int) -> None:
    httpsig.check_clock(created, NOW)


@pytest.mark.parametrize("created", [NOW - 301, NOW + 301, 0, 10**15])
def test_clock_outside_window(created: int) -> None:
    with pytest.raises(ClockSkew) as info:
        httpsig.check_clock(created, NOW)
    assert str(NOW) in info.value.detail
    assert "2026-11-25T09:46:40Z" in info.value.detail
    assert str(created) in info.value.detail


def test_clock_custom_window() -> None:
    httpsig.check_clock(NOW + 60, NOW, window_s=60)
    with pytest.raises(ClockSkew):
        httpsig.check_clock(NOW + 61, NOW, window_s=60)


# --- hostile input: parse or raise a RelayError, nothing else ------------------------

SF_ALPHABET = st.sampled_from(list('relay=()"@:;,#*?-. \t0123456789abAZ+/\\é'))


@settings(max_examples=300, deadline=None)
@given(
    sig_input=st.one_of(
        st.text(SF_ALPHABET, max_size=60),
        st.builds(
            lambda i, s: BATCH["signature_input"][:i] + s + BATCH["signature_input"][i:],
            st.integers(0, len(BATCH["signature_input"])),
            st.text(SF_ALPHABET, max_size=4),
        ),
    ),
    signature=st.one_of(st.text(SF_ALPHABET, max_size=40), st.just(BATCH["signature"])),
)
def test_hostile_signature_headers(sig_input: str, signature: str) -> None:
    headers = replaced(Signature_Input=sig_input, Signature=signature)
    try:
        req = httpsig.parse_request(method="POST", path=PATH, headers=headers)
    except RelayError:
        return
    try:
        httpsig.verify_request(req, A_KEY.public_key())
    except BadSignature:
        return
    assert req.base == BATCH["signature_base"].encode("ascii")


@settings(max_examples=200, deadline=None)
@given(st.text(SF_ALPHABET, max_size=60))
def test_hostile_content_digest(value: str) -> None:
    try:
        httpsig.check_content_digest(value, BODY)
    except DigestMismatch:
        return
    assert GOOD_DIGEST[9:-1] in value
