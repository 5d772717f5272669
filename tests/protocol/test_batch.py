"""Tables for relay.protocol.batch: traces, batch bodies and signed batch results."""

from __future__ import annotations

from typing import Any

import pytest

from relay.errors import BadSignature, ItemRejected, MalformedError
from relay.protocol.batch import (
    Batch,
    BatchItem,
    BatchResult,
    batch_ids,
    check_trace,
    decode_batch,
    encode_batch,
    open_result,
    sign_result,
)
from relay.protocol.strict import pack
from tests.protocol.wire import (
    A_KEY,
    B_KEY,
    BASE,
    DROP,
    HB,
    ID1,
    ID2,
    PAYLOAD,
    SIG,
    mutated,
    raw_map,
)

# --- trace ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("trace", "origin", "sender", "max_hops", "here", "code"),
    [
        (["a.test"], "a.test", "a.test", 8, None, None),
        (["a.test"], "a.test", "a.test", 1, "b.test", None),
        (["a.test", "r.test", "s.test"], "a.test", "s.test", 3, "b.test", None),
        ([], "a.test", "a.test", 8, None, "malformed"),
        (["A.test"], "A.test", "A.test", 8, None, "malformed"),
        (["a.test", ""], "a.test", "", 8, None, "malformed"),
        (["x.test"], "a.test", "x.test", 8, None, "malformed"),
        (["a.test", "r.test"], "a.test", "q.test", 8, None, "malformed"),
        (["a.test", "r.test", "a.test"], "a.test", "a.test", 8, None, "loop"),
        (["a.test", "r.test", "r.test"], "a.test", "r.test", 8, None, "loop"),
        (["a.test", "b.test", "r.test"], "a.test", "r.test", 8, "b.test", "loop"),
        (["a.test", "r.test", "s.test"], "a.test", "s.test", 2, None, "hops"),
        ([f"n{i}.test" for i in range(17)], "n0.test", "n16.test", 16, None, "hops"),
    ],
)
def test_check_trace(
    trace: list[str], origin: str, sender: str, max_hops: int, here: str | None, code: str | None
) -> None:
    if code is None:
        check_trace(trace, origin, sender, max_hops, here=here)
        return
    with pytest.raises(ItemRejected) as info:
        check_trace(trace, origin, sender, max_hops, here=here)
    assert info.value.item_code == code


# --- batch body -----------------------------------------------------------------

ITEM = [HB, SIG, PAYLOAD, ["a.test"]]
BATCH_BASE: dict[str, Any] = {"batch": bytes(16), "items": [ITEM]}

BATCH_REFUSALS = [
    pytest.param({"batch": bytes(15)}, "batch: expected 16 bytes", id="batch-15"),
    pytest.param({"batch": "x" * 16}, "batch: expected bin", id="batch-str"),
    pytest.param({"items": []}, "non-empty array", id="no-items"),
    pytest.param({"items": {"a": 1}}, "non-empty array", id="items-map"),
    pytest.param({"items": [ITEM[:3]]}, r"items\[0\]: expected \[header", id="item-3"),
    pytest.param({"items": [[*ITEM, [], 1]]}, r"items\[0\]: expected", id="item-6"),
    pytest.param({"items": [ITEM, "x"]}, r"items\[1\]: expected", id="item-str"),
    pytest.param({"items": [[HB.hex(), SIG, PAYLOAD, ["a.test"]]]}, "must be bin", id="hb-str"),
    pytest.param({"items": [[HB, SIG, "text", ["a.test"]]]}, "must be bin", id="payload-str"),
    pytest.param(
        {"items": [[HB, SIG, PAYLOAD, "a.test"]]}, "trace: expected an array", id="trace-str"
    ),
    pytest.param(
        {"items": [[HB, SIG, PAYLOAD, [b"a.test"]]]},
        "trace: expected an array of str",
        id="trace-bin",
    ),
    pytest.param(
        {"items": [[*ITEM, "c"]]}, "certificates: expected an array of bin", id="certs-str"
    ),
    pytest.param(
        {"items": [[*ITEM, ["c"]]]}, "certificates: expected an array of bin", id="certs-item-str"
    ),
    pytest.param({"extra": 1}, "unknown key", id="unknown-key"),
    pytest.param({"items": DROP}, "missing key items", id="missing-items"),
    pytest.param({"items": [[HB, SIG, PAYLOAD, [1.5]]]}, "float", id="float-in-trace"),
]


@pytest.mark.parametrize(("changes", "fragment"), BATCH_REFUSALS)
def test_decode_batch_refuses(changes: dict[str, Any], fragment: str) -> None:
    with pytest.raises(MalformedError, match=fragment) as info:
        decode_batch(mutated(BATCH_BASE, changes))
    assert info.value.detail.startswith("batch body")


def test_decode_batch_refuses_framing() -> None:
    body = pack(BATCH_BASE)
    for bad in [
        body + b"\x00",
        body[:-1],
        pack([BATCH_BASE]),
        raw_map([*BATCH_BASE.items(), ("batch", bytes(16))]),
    ]:
        with pytest.raises(MalformedError):
            decode_batch(bad)


def test_batch_with_certificates_round_trips() -> None:
    b = Batch(
        bytes(range(16)),
        (
            BatchItem(HB, SIG, PAYLOAD, ("a.test",), (b"cert-1", b"cert-2")),
            BatchItem(b"\x80", b"", b"", ("r.test", "s.test"), ()),
            BatchItem(b"not even msgpack", b"sig", b"", ()),
        ),
    )
    assert decode_batch(encode_batch(b)) == b


def test_batch_ids() -> None:
    other = mutated(BASE, {"id": ID2})
    b = Batch(bytes(16), (BatchItem(HB, SIG, PAYLOAD, ()), BatchItem(other, SIG, PAYLOAD, ())))
    assert batch_ids(b) == (BASE["id"], ID2)
    dup = Batch(bytes(16), (BatchItem(HB, SIG, PAYLOAD, ()), BatchItem(HB, SIG, b"", ())))
    with pytest.raises(MalformedError, match=r"items\[1\]: id .* repeats items\[0\]"):
        batch_ids(dup)
    no_id = Batch(bytes(16), (BatchItem(HB, SIG, PAYLOAD, ()), BatchItem(b"\x90", SIG, b"", ())))
    with pytest.raises(MalformedError, match=r"items\[1\]"):
        batch_ids(no_id)


# --- batch result -----------------------------------------------------------------

RESULT_BASE: dict[str, Any] = {
    "batch": bytes(16),
    "nonce": "bm9uY2Vub25jZW5vbmNl",
    "results": {ID1: "accepted"},
}


def signed_result(result_bytes: bytes) -> bytes:
    return pack([result_bytes, B_KEY.sign(b"relay-result-v1\x00" + result_bytes)])


def test_result_round_trips() -> None:
    results = {ID1: "accepted", ID2: "duplicate", bytes(16): "rejected:residency"}
    r = BatchResult(bytes(16), "bm9uY2U=", results)
    assert open_result(sign_result(r, B_KEY), B_KEY.public_key()) == r


RESULT_REFUSALS = [
    pytest.param({"results": {ID1: "rejected:bogus"}}, "not a known outcome", id="unknown-code"),
    pytest.param({"results": {ID1: "ok"}}, "not a known outcome", id="unknown-outcome"),
    pytest.param({"results": {ID1: b"accepted"}}, "not a known outcome", id="outcome-bin"),
    pytest.param({"results": {ID1[:15]: "accepted"}}, "16-byte", id="key-15"),
    pytest.param({"results": {"id": "accepted"}}, "16-byte", id="key-str"),
    pytest.param({"results": [ID1]}, "results: expected a map", id="results-array"),
    pytest.param({"nonce": ""}, "nonce: empty", id="nonce-empty"),
    pytest.param({"nonce": 5}, "nonce: expected str", id="nonce-int"),
    pytest.param({"batch": bytes(17)}, "batch: expected 16 bytes", id="batch-17"),
    pytest.param({"extra": 1}, "unknown key", id="unknown-key"),
    pytest.param({"nonce": DROP}, "missing key nonce", id="missing-key"),
]


@pytest.mark.parametrize(("changes", "fragment"), RESULT_REFUSALS)
def test_open_result_refuses_signed_garbage(changes: dict[str, Any], fragment: str) -> None:
    body = signed_result(mutated(RESULT_BASE, changes))
    with pytest.raises(MalformedError, match=fragment):
        open_result(body, B_KEY.public_key())


def test_open_result_refuses_framing_and_bad_signatures() -> None:
    rb = pack(RESULT_BASE)
    good = signed_result(rb)
    pub = B_KEY.public_key()
    assert open_result(good, pub).results == {ID1: "accepted"}
    sig = B_KEY.sign(b"relay-result-v1\x00" + rb)
    for bad in [
        pack(rb),
        pack([rb]),
        pack([rb, sig, b""]),
        pack([rb, sig[:63]]),
        pack([rb.hex(), sig]),
        good + b"\x00",
    ]:
        with pytest.raises(MalformedError):
            open_result(bad, pub)
    for bad in [
        pack([rb, A_KEY.sign(b"relay-result-v1\x00" + rb)]),
        pack([rb, B_KEY.sign(b"relay-envelope-v1\x00" + rb)]),  # another purpose's domain
        pack([rb, B_KEY.sign(rb)]),
        pack([rb + b"\x00", sig]),
    ]:
        with pytest.raises(BadSignature):
            open_result(bad, pub)


# --- signing refuses what decoding would refuse -------------------------------------


def test_sign_result_refuses_unknown_outcome() -> None:
    with pytest.raises(MalformedError):
        sign_result(BatchResult(bytes(16), "n", {ID1: "maybe"}), B_KEY)
