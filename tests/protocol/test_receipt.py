"""Tables for relay.protocol.receipt: receipt payloads and their refusals."""

from __future__ import annotations

from typing import Any

import pytest

from relay.errors import MalformedError
from relay.protocol.receipt import Receipt, decode_receipt, encode_receipt
from tests.protocol.wire import (
    DROP,
    ID1,
    ID2,
    mutated,
    raw_map,
)

# --- receipt payload ------------------------------------------------------------

RECEIPT_BASE: dict[str, Any] = {
    "status": "delivered",
    "reason": "",
    "at": 1795600002000,
    "jurisdiction": "KZ",
    "mode": "enforce",
    "envelopes": [[ID1, ["bob@b.test"]]],
}

RECEIPT_REFUSALS = [
    pytest.param({"status": "lost"}, "status:", id="status-unknown"),
    pytest.param({"status": b"delivered"}, "status: expected str", id="status-bin"),
    pytest.param({"reason": "late"}, "reason: must be empty", id="delivered-with-reason"),
    pytest.param({"reason": None}, "nil", id="reason-nil"),
    pytest.param({"at": -5}, "outside", id="at-negative"),
    pytest.param({"at": "now"}, "at: expected int", id="at-str"),
    pytest.param({"jurisdiction": "kz"}, "jurisdiction:", id="jurisdiction-lower"),
    pytest.param({"mode": "strict"}, "mode:", id="mode-unknown"),
    pytest.param({"envelopes": []}, "envelopes: expected an array of 1..1000", id="no-entries"),
    pytest.param(
        {"envelopes": [[i.to_bytes(16, "big"), ["bob@b.test"]] for i in range(1001)]},
        "1..1000",
        id="1001-entries",
    ),
    pytest.param(
        {"envelopes": [[ID1, ["bob@b.test"]], [ID1, ["al@b.test"]]]}, "twice", id="dup-id"
    ),
    pytest.param({"envelopes": [[ID1[:15], ["bob@b.test"]]]}, "16-byte", id="id-15"),
    pytest.param({"envelopes": [[ID1.hex()[:16], ["bob@b.test"]]]}, "16-byte", id="id-str"),
    pytest.param({"envelopes": [[ID1]]}, r"envelopes\[0\]: expected", id="entry-short"),
    pytest.param({"envelopes": [[ID1, ["bob@b.test"], 1]]}, "expected", id="entry-long"),
    pytest.param({"envelopes": [ID1]}, "expected", id="entry-not-array"),
    pytest.param({"envelopes": [[ID1, []]]}, "distinct recipients", id="no-recipients"),
    pytest.param({"envelopes": [[ID1, ["b@b.test", "b@b.test"]]]}, "distinct", id="dup-rcpt"),
    pytest.param({"envelopes": [[ID1, ["bob"]]]}, "no '@'", id="rcpt-invalid"),
    pytest.param({"envelopes": [[ID1, "bob@b.test"]]}, "expected an array", id="rcpts-str"),
    pytest.param({"extra": 1}, "unknown key", id="unknown-key"),
    pytest.param({"mode": DROP}, "missing key mode", id="missing-key"),
]


@pytest.mark.parametrize(("changes", "fragment"), RECEIPT_REFUSALS)
def test_decode_receipt_refuses(changes: dict[str, Any], fragment: str) -> None:
    with pytest.raises(MalformedError, match=fragment) as info:
        decode_receipt(mutated(RECEIPT_BASE, changes))
    assert info.value.detail.startswith("receipt")


def test_receipt_round_trips() -> None:
    r = Receipt(
        status="rejected",
        reason="residency",
        at=5,
        jurisdiction="RU",
        mode="audit",
        entries=((ID1, ("bob@b.test", "al@b.test")), (ID2, ("x@c.test",))),
    )
    assert decode_receipt(encode_receipt(r)) == r
    expired = Receipt("expired", "", 5, "RU", "enforce", ((ID1, ("bob@b.test",)),))
    assert decode_receipt(encode_receipt(expired)) == expired
    with pytest.raises(MalformedError):
        encode_receipt(Receipt("delivered", "why", 5, "RU", "enforce", ((ID1, ("b@b.test",)),)))


def test_decode_receipt_refuses_repeated_key() -> None:
    pairs = [*RECEIPT_BASE.items(), ("status", "rejected")]
    with pytest.raises(MalformedError, match="repeated"):
        decode_receipt(raw_map(pairs))
