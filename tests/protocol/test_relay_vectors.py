"""Golden vectors (tests/vectors/relay-v1.json): every blob is rebuilt byte for
byte by the functions the node uses, then decoded and checked by them.

The batch request's HTTP signature base is tested with relay.protocol.httpsig."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from relay.errors import BadSignature, ItemRejected
from relay.protocol import httpsig
from relay.protocol.batch import (
    RESULT_DOMAIN,
    Batch,
    BatchItem,
    BatchResult,
    batch_ids,
    decode_batch,
    encode_batch,
    encode_result,
    open_result,
    sign_result,
)
from relay.protocol.certificate import (
    CERT_DOMAIN,
    Certificate,
    encode_certificate,
    open_certificate,
    sign_certificate,
    verify_certificate,
)
from relay.protocol.envelope import (
    ENVELOPE_DOMAIN,
    check_payload,
    decode_header,
    encode_header,
    make_header,
    open_envelope,
    peek_id,
    seal,
    verify_envelope,
)
from relay.protocol.keystr import key_id, private_key_from_seed
from relay.protocol.receipt import Receipt, decode_receipt, encode_receipt
from relay.protocol.strict import pack

V: Any = json.loads((Path(__file__).parent.parent / "vectors" / "relay-v1.json").read_text("utf-8"))
ENV_ID = bytes(range(16))
BATCH_ID = bytes(range(16, 32))


def key(node: str) -> Ed25519PrivateKey:
    return private_key_from_seed(bytes.fromhex(V["keys"][node]["seed_hex"]))


HEADER_BYTES = bytes.fromhex(V["envelope"]["header_bytes_hex"])
SIGNATURE = bytes.fromhex(V["envelope"]["signature_hex"])
PAYLOAD = bytes.fromhex(V["envelope"]["payload_hex"])


def golden_header() -> Any:
    return make_header(
        id=ENV_ID,
        kind="message",
        origin="a.test",
        key_id=key_id(V["keys"]["a.test"]["public"]),
        sender="alice@a.test",
        to=["bob@b.test"],
        dest="b.test",
        created=1795600000000,
        expires=1795686400000,
        residency=["RU", "KZ"],
        ctype="text/plain; charset=utf-8",
        payload=V["envelope"]["payload_utf8"].encode("utf-8"),
    )


def test_payload_vector() -> None:
    assert V["envelope"]["payload_utf8"].encode("utf-8") == PAYLOAD


def test_envelope_is_rebuilt_byte_for_byte() -> None:
    header = golden_header()
    assert encode_header(header) == HEADER_BYTES
    env = seal(header, PAYLOAD, key("a.test"))
    assert env.header_bytes == HEADER_BYTES
    assert env.signature == SIGNATURE
    assert env.header == header
    assert V["envelope"]["signed_bytes"] == "b'relay-envelope-v1\\x00' + header_bytes"
    key("a.test").public_key().verify(SIGNATURE, ENVELOPE_DOMAIN + HEADER_BYTES)


def test_envelope_decodes_and_checks() -> None:
    env = open_envelope(HEADER_BYTES, SIGNATURE, PAYLOAD)
    verify_envelope(env, key("a.test").public_key())
    check_payload(env)
    h = env.header
    assert (h.id, h.kind, h.origin, h.key, h.sender) == (
        ENV_ID,
        "message",
        "a.test",
        "11qYAYKx",
        "alice@a.test",
    )
    assert (h.to, h.dest, h.residency, h.max_hops, h.v) == (
        ("bob@b.test",),
        "b.test",
        ("KZ", "RU"),
        8,
        1,
    )
    assert (h.size, h.sha256) == (len(PAYLOAD), hashlib.sha256(PAYLOAD).digest())
    assert decode_header(HEADER_BYTES) == h
    assert peek_id(HEADER_BYTES) == ENV_ID


def test_envelope_refused_under_another_key() -> None:
    env = open_envelope(HEADER_BYTES, SIGNATURE, PAYLOAD)
    with pytest.raises(ItemRejected) as info:
        verify_envelope(env, key("b.test").public_key())
    assert info.value.result == "rejected:signature"


GOLDEN_BATCH = Batch(BATCH_ID, (BatchItem(HEADER_BYTES, SIGNATURE, PAYLOAD, ("a.test",)),))
BODY = bytes.fromhex(V["batch_request"]["body_hex"])


def test_batch_body_is_rebuilt_byte_for_byte() -> None:
    assert encode_batch(GOLDEN_BATCH) == BODY


def test_batch_body_decodes() -> None:
    assert decode_batch(BODY) == GOLDEN_BATCH
    assert batch_ids(decode_batch(BODY)) == (ENV_ID,)
    assert V["batch_request"]["relay_origin"] == "a.test"
    assert V["batch_request"]["relay_destination"] == "b.test"


NONCE = "ZGVmZ2hpamtsbW5vcHFycw=="
RESULT = BatchResult(BATCH_ID, NONCE, {ENV_ID: "accepted"})
RESULT_BYTES = bytes.fromhex(V["batch_response"]["result_bytes_hex"])
RESULT_BODY = bytes.fromhex(V["batch_response"]["body_hex"])


def test_batch_result_is_rebuilt_byte_for_byte() -> None:
    assert V["batch_response"]["signed_by"] == "b.test"
    assert encode_result(RESULT) == RESULT_BYTES
    signature = bytes.fromhex(V["batch_response"]["signature_hex"])
    key("b.test").public_key().verify(signature, RESULT_DOMAIN + RESULT_BYTES)
    assert sign_result(RESULT, key("b.test")) == RESULT_BODY
    assert pack([RESULT_BYTES, signature]) == RESULT_BODY


def test_batch_result_opens_with_the_receivers_key_only() -> None:
    assert open_result(RESULT_BODY, key("b.test").public_key()) == RESULT
    assert RESULT.nonce in V["batch_request"]["signature_input"]
    with pytest.raises(BadSignature):
        open_result(RESULT_BODY, key("a.test").public_key())


RECEIPT = Receipt(
    status="delivered",
    reason="",
    at=1795600002000,
    jurisdiction="KZ",
    mode="enforce",
    entries=((ENV_ID, ("bob@b.test",)),),
)


def test_receipt_payload_round_trip() -> None:
    data = bytes.fromhex(V["receipt_payload_hex"])
    assert encode_receipt(RECEIPT) == data
    assert decode_receipt(data) == RECEIPT


def test_receipt_envelope_from_the_vector_payload() -> None:
    """The receipt itself travels in an envelope b.test signs; it must pass every check."""
    data = bytes.fromhex(V["receipt_payload_hex"])
    header = make_header(
        id=bytes(range(32, 48)),
        kind="receipt",
        origin="b.test",
        key_id=key_id(V["keys"]["b.test"]["public"]),
        sender="postmaster@b.test",
        to=["postmaster@a.test"],
        dest="a.test",
        created=1795600002000,
        expires=1795600002000 + 86400000,
        residency=["KZ", "RU"],
        ctype="application/vnd.relay.receipt+msgpack",
        payload=data,
    )
    env = seal(header, data, key("b.test"))
    opened = open_envelope(env.header_bytes, env.signature, env.payload)
    verify_envelope(opened, key("b.test").public_key())
    check_payload(opened)
    assert decode_receipt(opened.payload) == RECEIPT


CERT = Certificate(
    name="c.test",
    keys=(V["keys"]["b.test"]["public"],),
    jurisdiction="KZ",
    url="https://c.test:8443",
    not_before=1795600000000,
    not_after=1803376000000,
    authority="kz-registry",
)
CERT_BYTES = bytes.fromhex(V["certificate"]["cert_bytes_hex"])
CERT_SIGNATURE = bytes.fromhex(V["certificate"]["signature_hex"])


def test_certificate_is_rebuilt_byte_for_byte() -> None:
    assert V["certificate"]["signed_by"] == "authority"
    assert encode_certificate(CERT) == CERT_BYTES
    key("authority").public_key().verify(CERT_SIGNATURE, CERT_DOMAIN + CERT_BYTES)
    blob = sign_certificate(CERT, key("authority"))
    assert blob == pack([CERT_BYTES, CERT_SIGNATURE])


def test_certificate_decodes_and_verifies() -> None:
    blob = pack([CERT_BYTES, CERT_SIGNATURE])
    assert open_certificate(blob) == (CERT, CERT_BYTES, CERT_SIGNATURE)
    assert verify_certificate(blob, key("authority").public_key()) == CERT
    with pytest.raises(BadSignature):
        verify_certificate(blob, key("a.test").public_key())


INTRO = V["batch_request_with_certificate"]
INTRO_BATCH = Batch(
    bytes(range(32, 48)),
    (BatchItem(HEADER_BYTES, SIGNATURE, PAYLOAD, ("a.test", "c.test")),),
)
INTRO_NONCE = b"tuvwxyz012345678"


def test_batch_request_with_certificate_is_rebuilt_byte_for_byte() -> None:
    body = encode_batch(INTRO_BATCH)
    assert body == bytes.fromhex(INTRO["body_hex"])
    headers = httpsig.sign_request(
        method="POST",
        path="/federation/v1/batch",
        content_digest=httpsig.content_digest(body),
        origin="c.test",
        destination="b.test",
        key=key("b.test"),  # c.test's certificate lists RFC 8032 test key 2
        key_id=V["keys"]["b.test"]["key_id"],
        created=1795600002,
        nonce=INTRO_NONCE,
    )
    assert headers == {
        "Content-Digest": INTRO["content_digest"],
        "Relay-Origin": INTRO["relay_origin"],
        "Relay-Destination": INTRO["relay_destination"],
        "Signature-Input": INTRO["signature_input"],
        "Signature": INTRO["signature"],
    }
    blob = pack([CERT_BYTES, CERT_SIGNATURE])
    assert httpsig.certificate_header([blob]) == INTRO["relay_certificate"]


def test_batch_request_with_certificate_introduces_its_sender() -> None:
    headers = {
        "Content-Digest": INTRO["content_digest"],
        "Relay-Origin": INTRO["relay_origin"],
        "Relay-Destination": INTRO["relay_destination"],
        "Relay-Certificate": INTRO["relay_certificate"],
        "Signature-Input": INTRO["signature_input"],
        "Signature": INTRO["signature"],
    }
    req = httpsig.parse_request(method="POST", path="/federation/v1/batch", headers=headers)
    assert req.base == INTRO["signature_base"].encode("ascii")
    (blob,) = req.certificates
    cert = verify_certificate(blob, key("authority").public_key())
    assert (cert.name, cert.keys) == (req.origin, (V["keys"]["b.test"]["public"],))
    assert req.key_id == key_id(cert.keys[0])
    httpsig.verify_request(req, key("b.test").public_key())
    httpsig.check_content_digest(req.content_digest, bytes.fromhex(INTRO["body_hex"]))
