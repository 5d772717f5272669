"""relay.api.jsonbody.parse_json: every malformed client document is a MalformedError."""

from __future__ import annotations

import json

import pytest

from relay.api.jsonbody import MAX_JSON_VALUES, TOO_DEEP, parse_json
from relay.errors import MalformedError


def test_the_largest_honest_batch_fits_the_value_cap() -> None:
    to = [f"r{i}@n.test" for i in range(100)]
    doc = {"messages": [{"to": to, "text": "x", "ctype": "text/plain", "ttl": 60}] * 1000}
    assert parse_json(json.dumps(doc).encode()) == doc


@pytest.mark.parametrize(
    ("raw", "detail"),
    [
        (b"[" + b"0," * MAX_JSON_VALUES + b"0]", f"over {MAX_JSON_VALUES} JSON values"),
        (b'{"a": [' + b"[]," * MAX_JSON_VALUES + b"[]]}", f"over {MAX_JSON_VALUES} JSON values"),
        (b"[" * 33 + b"]" * 33, TOO_DEEP),
        (b"[" * 100_000 + b"]" * 100_000, TOO_DEEP),
        (b'{"to": "\\ud800"}', "lone UTF-16 surrogate"),
        (b"{", "not JSON"),
    ],
    ids=["wide", "wide-nested", "deep", "very-deep", "surrogate", "cut"],
)
def test_malformed_documents(raw: bytes, detail: str) -> None:
    with pytest.raises(MalformedError, match=detail):
        parse_json(raw)


def test_the_value_cap_is_inclusive() -> None:
    raw = b"[" + b"0," * (MAX_JSON_VALUES - 1) + b"0]"
    assert len(parse_json(raw)) == MAX_JSON_VALUES
