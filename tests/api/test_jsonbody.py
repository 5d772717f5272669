"""relay.api.jsonbody: every malformed client document is a MalformedError; which are small."""

from __future__ import annotations

import json

import pytest

from relay.api.jsonbody import (
    LOOP_BYTES,
    LOOP_TOKENS,
    MAX_JSON_VALUES,
    TOO_DEEP,
    check_submit,
    loop_sized,
    parse_json,
)
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


@pytest.mark.parametrize(
    "raw",
    [b"[100000000000000000000000000000]", rb'{"a": -100000000000000000000, "b": "\u2028"}'],
)
def test_integers_past_64_bits_are_json_all_the_same(raw: bytes) -> None:
    assert parse_json(raw) == json.loads(raw)


def test_the_value_cap_is_inclusive() -> None:
    raw = b"[" + b"0," * (MAX_JSON_VALUES - 1) + b"0]"
    assert len(parse_json(raw)) == MAX_JSON_VALUES


@pytest.mark.parametrize(
    ("raw", "small"),
    [
        (b'{"to": ["a@n.test"], "text": "hello"}', True),
        (json.dumps({"to": ["a@n.test"], "text": "x" * (LOOP_BYTES - 40)}).encode(), True),
        (json.dumps({"to": ["a@n.test"], "text": "x" * LOOP_BYTES}).encode(), False),
        (b"[" + b"0," * (LOOP_TOKENS - 1) + b"0]", True),
        (b"[" + b"0," * LOOP_TOKENS + b"0]", False),
        (b"[" * 2049 + b"]" * 2049, True),
        (b"[" * 2048 + b"{" * 2049, False),
        # commas inside a string count too: such a body is decoded as if it were large
        (json.dumps({"to": ["a@n.test"], "text": "," * LOOP_TOKENS}).encode(), False),
    ],
    ids=[
        "tiny",
        "long-string",
        "longer-string",
        "tokens",
        "more-tokens",
        "brackets",
        "braces",
        "commas-in-text",
    ],
)
def test_loop_sized_bounds_bytes_and_values(raw: bytes, small: bool) -> None:
    assert loop_sized(raw) is small


def test_check_submit_scopes_the_key_to_the_request() -> None:
    one = b'{"to": ["a@n.test"], "text": "hi"}'
    same = b'{"text": "hi",  "to": ["a@n.test"]}'
    key, parsed = check_submit(one, False, "k1")
    assert key is not None and key.startswith("k1\nmessage:")
    assert check_submit(same, False, "k1")[0] == key
    assert check_submit(one, False, None) == (None, parsed)
    assert parsed == [
        {
            "to": ["a@n.test"],
            "body": b"hi",
            "ctype": "text/plain; charset=utf-8",
            "residency": None,
            "ttl": None,
        }
    ]
