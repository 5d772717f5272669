"""Extension delivery-v1 (docs/protocol.md §22): the signed batch result's
`delivered` statement. Tables of what decodes and what is refused, the request
header, and the golden vector (tests/vectors/relay-delivery-v1.json)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from relay.errors import BadSignature, MalformedError
from relay.protocol.batch import (
    RESULT_DOMAIN,
    BatchResult,
    Delivered,
    decode_result,
    encode_result,
    open_result,
    sign_result,
    signed_parts,
    wants_delivery,
)
from relay.protocol.keystr import private_key_from_seed
from relay.protocol.strict import pack
from tests.protocol.wire import A_KEY, B_KEY, DROP, ID1, ID2, mutated

DELIVERED: dict[str, Any] = {"at": 1_795_600_001_500, "jurisdiction": "DE", "mode": "enforce"}
BASE: dict[str, Any] = {
    "batch": bytes(16),
    "nonce": "bm9uY2Vub25jZW5vbmNl",
    "results": {ID1: "accepted", ID2: "duplicate", bytes(16): "rejected:residency"},
    "delivered": {**DELIVERED, "ids": [ID1, ID2]},
}


def signed(result_bytes: bytes) -> bytes:
    return pack([result_bytes, B_KEY.sign(RESULT_DOMAIN + result_bytes)])


def test_a_result_with_delivered_round_trips() -> None:
    r = BatchResult(
        bytes(16),
        "bm9uY2U=",
        {ID1: "accepted", ID2: "rejected:unknown_mailbox"},
        Delivered(5, "FR", "audit", (ID1,)),
    )
    assert open_result(sign_result(r, B_KEY), B_KEY.public_key(), delivery=True) == r
    assert decode_result(encode_result(r)) == r


def test_delivered_may_list_no_id() -> None:
    body = signed(mutated(BASE, {"delivered": {**DELIVERED, "ids": []}}))
    opened = open_result(body, B_KEY.public_key(), delivery=True)
    assert opened.delivered == Delivered(1_795_600_001_500, "DE", "enforce", ())


def test_a_sender_that_asked_takes_a_result_without_delivered() -> None:
    # a receiver of an earlier version ignores the request header
    body = signed(mutated(BASE, {"delivered": DROP}))
    opened = open_result(body, B_KEY.public_key(), delivery=True)
    assert opened.delivered is None and opened.results[ID1] == "accepted"


def test_delivered_is_refused_when_the_sender_did_not_ask() -> None:
    with pytest.raises(MalformedError, match="unknown key"):
        open_result(signed(pack(BASE)), B_KEY.public_key())


DELIVERED_REFUSALS = [
    pytest.param({"ids": [bytes(16)]}, "not accepted or duplicate", id="id-rejected"),
    pytest.param({"ids": [bytes([9] * 16)]}, "not accepted or duplicate", id="id-not-in-results"),
    pytest.param({"ids": [ID1, ID1]}, "listed twice", id="id-twice"),
    pytest.param({"ids": [ID1[:15]]}, "16-byte", id="id-15"),
    pytest.param({"ids": ["x" * 16]}, "16-byte", id="id-str"),
    pytest.param({"ids": ID1}, "ids: expected an array", id="ids-bin"),
    pytest.param({"jurisdiction": "de"}, "not a country code", id="jurisdiction-lower"),
    pytest.param({"jurisdiction": "DEU"}, "not a country code", id="jurisdiction-three"),
    pytest.param({"mode": "lenient"}, "not enforce or audit", id="mode"),
    pytest.param({"at": "now"}, "at: expected int", id="at-str"),
    pytest.param({"extra": 1}, "unknown key", id="unknown-key"),
    pytest.param({"mode": DROP}, "missing key mode", id="missing-mode"),
]


@pytest.mark.parametrize(("changes", "fragment"), DELIVERED_REFUSALS)
def test_open_result_refuses_a_bad_delivered(changes: dict[str, Any], fragment: str) -> None:
    delivered = dict(BASE["delivered"])
    for k, v in changes.items():
        if v is DROP:
            del delivered[k]
        else:
            delivered[k] = v
    body = signed(mutated(BASE, {"delivered": delivered}))
    with pytest.raises(MalformedError, match=fragment) as info:
        open_result(body, B_KEY.public_key(), delivery=True)
    assert info.value.detail.startswith("batch result: delivered")


def test_delivered_must_be_a_map() -> None:
    with pytest.raises(MalformedError, match="delivered: expected a map"):
        open_result(signed(mutated(BASE, {"delivered": [ID1]})), B_KEY.public_key(), delivery=True)


def test_the_statement_is_signed_with_the_rest() -> None:
    rb = pack(BASE)
    pub = B_KEY.public_key()
    assert signed_parts(signed(rb)) == (rb, B_KEY.sign(RESULT_DOMAIN + rb))
    other = mutated(BASE, {"delivered": {**DELIVERED, "ids": [ID1]}})
    for bad in [
        pack([other, B_KEY.sign(RESULT_DOMAIN + rb)]),  # the ids changed after signing
        pack([rb, A_KEY.sign(RESULT_DOMAIN + rb)]),
    ]:
        with pytest.raises(BadSignature):
            open_result(bad, pub, delivery=True)


def test_sign_result_refuses_a_statement_about_a_refused_item() -> None:
    r = BatchResult(bytes(16), "n", {ID1: "rejected:size"}, Delivered(1, "DE", "enforce", (ID1,)))
    with pytest.raises(MalformedError, match="not accepted or duplicate"):
        sign_result(r, B_KEY)


@pytest.mark.parametrize(
    ("values", "wanted"),
    [
        (["v1"], True),
        ([" v1 "], True),
        (["v2, v1"], True),
        (["v2", "v1"], True),
        (["v2"], False),
        (["v10"], False),
        (["V1"], False),
        ([""], False),
        ([], False),
    ],
)
def test_the_request_header_asks_for_v1(values: list[str], wanted: bool) -> None:
    assert wants_delivery(values) is wanted


# --- golden vector ---------------------------------------------------------------------

VEC: Any = json.loads(
    (Path(__file__).parent.parent / "vectors" / "relay-delivery-v1.json").read_text("utf-8")
)
KEYS: Any = json.loads(
    (Path(__file__).parent.parent / "vectors" / "relay-v1.json").read_text("utf-8")
)["keys"]


def test_the_golden_result_is_rebuilt_byte_for_byte() -> None:
    b = private_key_from_seed(bytes.fromhex(KEYS["b.test"]["seed_hex"]))
    d = VEC["delivered"]
    r = BatchResult(
        bytes(range(16, 32)),
        "ZGVmZ2hpamtsbW5vcHFycw==",
        {bytes(range(16)): "accepted"},
        Delivered(d["at"], d["jurisdiction"], d["mode"], tuple(map(bytes.fromhex, d["ids_hex"]))),
    )
    resp = VEC["batch_response"]
    result_bytes = bytes.fromhex(resp["result_bytes_hex"])
    assert encode_result(r) == result_bytes
    assert sign_result(r, b) == bytes.fromhex(resp["body_hex"])
    assert bytes.fromhex(resp["signature_hex"]) == b.sign(RESULT_DOMAIN + result_bytes)
    assert open_result(bytes.fromhex(resp["body_hex"]), b.public_key(), delivery=True) == r
    assert VEC["request_header"] == "Relay-Delivery: v1"
