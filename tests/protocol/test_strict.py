"""Tables for relay.protocol.strict: what the strict msgpack subset refuses and accepts."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from relay.errors import MalformedError
from relay.protocol.strict import fields, pack, strict_unpack
from tests.protocol.wire import (
    HB,
)

# --- strict msgpack -------------------------------------------------------------

STRICT_REFUSALS = [
    pytest.param(b"", "truncated", id="empty"),
    pytest.param(b"\x01\x02", "trailing bytes", id="trailing"),
    pytest.param(HB + b"\xc0", "trailing bytes", id="header-trailing"),
    pytest.param(HB[:-1], "truncated", id="header-truncated"),
    pytest.param(b"\xc1", "reserved", id="reserved-byte"),
    pytest.param(b"\xa2\xff\xfe", "UTF-8", id="invalid-utf8"),
    pytest.param(b"\xa3\xed\xa0\x80", "UTF-8", id="utf8-surrogate"),
    pytest.param(b"\xcb" + b"\x00" * 8, "float is not allowed", id="float64"),
    pytest.param(b"\xca" + b"\x00" * 4, "float is not allowed", id="float32"),
    pytest.param(b"\xc0", "nil is not allowed", id="nil"),
    pytest.param(b"\xc3", "bool is not allowed", id="bool"),
    pytest.param(b"\xd4\x01\x00", "ext is not allowed", id="ext"),
    pytest.param(b"\xd6\xff\x00\x00\x00\x00", "ext is not allowed", id="timestamp-ext"),
    pytest.param(b"\xc7\x03\xff\x00\x00\x00", "not strict msgpack", id="bad-timestamp"),
    pytest.param(b"\xff", "outside 0..2", id="negative-fixint"),
    pytest.param(b"\xd3" + b"\xff" * 8, "outside 0..2", id="negative-int64"),
    pytest.param(b"\xcf\x80" + b"\x00" * 7, "outside 0..2", id="two-to-the-63"),
    pytest.param(b"\xcf" + b"\xff" * 8, "outside 0..2", id="uint64-max"),
    pytest.param(b"\x82\xa1a\x01\xa1a\x02", "'a' is repeated", id="repeated-key"),
    pytest.param(b"\x82\xc4\x01a\x01\xc4\x01a\x02", "repeated", id="repeated-bin-key"),
    pytest.param(b"\x81\x01\x01", "map key is not a str", id="int-key"),
    pytest.param(b"\x81\x91\x01\x01", "map key is not a str", id="array-key"),
    pytest.param(b"\x91" * 33 + b"\x01", "nested deeper than 32", id="depth-33"),
    pytest.param(b"\x81\xa1a" * 33 + b"\x01", "nested deeper than 32", id="map-depth-33"),
    pytest.param(b"\x91" * 100_000 + b"\x01", "nested too deep", id="nesting-bomb"),
    pytest.param(b"\xdd\xff\xff\xff\xff", "declared length", id="array32-length"),
    pytest.param(b"\xdf\xff\xff\xff\xff\xa1a", "declared length", id="map32-length"),
    pytest.param(b"\xdb\xff\xff\xff\xffabc", "truncated", id="str32-length"),
    pytest.param(b"\xc6\x7f\xff\xff\xff\x00", "truncated", id="bin32-length"),
    pytest.param(pack([0] * 10_001), "declares 10001 elements; at most 10000", id="array-cap"),
    pytest.param(pack({str(i): 0 for i in range(10_001)}), "at most 10000", id="map-cap"),
    pytest.param(pack([[0] * 10_000] * 33), "more than 320000 objects", id="objects-cap"),
    pytest.param(pack([{"k": [0] * 5000}] * 70), "more than 320000 objects", id="objects-cap-maps"),
    pytest.param(
        b"\xdd" + (15 * 2**20).to_bytes(4, "big") + b"\xc0" * 15 * 2**20,
        "at most 10000",
        id="nils-declared",
    ),
    pytest.param(b"\x92\x01\x91\xcb" + b"\x00" * 8, r"at \[1\]\[0\]", id="path-array"),
    pytest.param(pack({"a": {"b": None}}), r"at \.a\.b", id="path-map"),
    pytest.param(pack({"a": [1, "x", b"y", True]}), r"bool .*at \.a\[3\]", id="path-past-leaves"),
    pytest.param(pack(["x", 2**63]), r"outside 0\.\.2\^63-1 \(at \[1\]\)", id="path-big-int"),
    pytest.param(pack({"k": 1, "b": 2**64 - 1}), r"outside .*at \.b", id="path-map-int"),
]


@pytest.mark.parametrize(("data", "fragment"), STRICT_REFUSALS)
def test_strict_unpack_refuses(data: bytes, fragment: str) -> None:
    with pytest.raises(MalformedError, match=fragment) as info:
        strict_unpack(data, "thing")
    assert info.value.detail.startswith("thing: ")


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"\x00", 0),
        (b"\xcf\x7f" + b"\xff" * 7, 2**63 - 1),
        (b"\xa2\xc3\xa9", "é"),
        (b"\xc4\x02\xff\x00", b"\xff\x00"),
        (b"\x91" * 32 + b"\x01", [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]),
        (b"\x82\xa1a\x01\xc4\x01a\x02", {"a": 1, b"a": 2}),
        (b"\x90", []),
        (b"\x80", {}),
        (pack([b"x" * 400_000, {"k": [1, "y"]}]), [b"x" * 400_000, {"k": [1, "y"]}]),  # counted
    ],
)
def test_strict_unpack_accepts(data: bytes, expected: object) -> None:
    assert strict_unpack(data, "thing") == expected


# --- pack (one reused Packer per thread) -----------------------------------------

PACK_VECTORS = [
    pytest.param({"a": 1}, b"\x81\xa1a\x01", id="map"),
    pytest.param(["é", b"\xff"], b"\x92\xa2\xc3\xa9\xc4\x01\xff", id="str-and-bin"),
    pytest.param(2**63 - 1, b"\xcf\x7f" + b"\xff" * 7, id="max-int"),
    pytest.param([], b"\x90", id="empty-array"),
]


@pytest.mark.parametrize(("value", "expected"), PACK_VECTORS)
def test_pack_vectors(value: object, expected: bytes) -> None:
    assert pack(value) == expected
    assert pack(value) == expected  # the reused packer starts empty each time


def test_pack_after_a_refused_value_starts_clean() -> None:
    # the overflow comes after the map header and a key were written to the buffer
    with pytest.raises(MalformedError, match="outside the range msgpack can carry"):
        pack({"first": "x" * 100, "second": [1, 2**64]})
    with pytest.raises(TypeError):
        pack({"a": object()})
    assert pack({"a": 1}) == b"\x81\xa1a\x01"


def test_pack_from_threads_matches_one_thread() -> None:
    values = [{"n": i, "s": "x" * (i % 300), "b": bytes(i % 70)} for i in range(2000)]
    expected = [pack(v) for v in values]

    def run(_: int) -> list[bytes]:
        return [pack(v) for v in values]

    with ThreadPoolExecutor(4) as pool:
        for got in pool.map(run, range(8)):
            assert got == expected
    assert strict_unpack(expected[7], "thing") == values[7]


# --- field access ---------------------------------------------------------------

_KEYS = frozenset({"a", "b"})
_OPTIONAL = frozenset({"x", "y"})


@pytest.mark.parametrize(
    "value",
    [
        pytest.param({"a": 1, "b": 2}, id="required-only"),
        pytest.param({"a": 1, "b": 2, "x": 3}, id="one-optional"),
        pytest.param({"y": 0, "a": 1, "x": 3, "b": 2}, id="both-optional-any-order"),
    ],
)
def test_fields_accepts_required_keys_with_any_optional_ones(value: dict[str, int]) -> None:
    assert fields(value, "thing", _KEYS, _OPTIONAL) is value


@pytest.mark.parametrize(
    ("value", "optional", "message"),
    [
        pytest.param([], _OPTIONAL, "thing: expected a map, got array", id="not-a-map"),
        pytest.param({"a": 1}, _OPTIONAL, "thing: missing key b", id="missing"),
        pytest.param(
            {"a": 1, "x": 2}, _OPTIONAL, "thing: missing key b", id="optional-not-instead"
        ),
        pytest.param({"a": 1, "b": 2, "z": 0}, _OPTIONAL, "thing: unknown key 'z'", id="unknown"),
        pytest.param(
            {"a": 1, "b": 2, "x": 0, "z": 0},
            _OPTIONAL,
            "thing: unknown key 'z'",
            id="unknown-with-optional",
        ),
        pytest.param(
            {"a": 1, "b": 2, "x": 0}, frozenset(), "thing: unknown key 'x'", id="not-optional-here"
        ),
        pytest.param(
            {"b": 2, "z": 0}, _OPTIONAL, "thing: unknown key 'z'", id="unknown-before-missing"
        ),
    ],
)
def test_fields_refuses_naming_the_key(
    value: object, optional: frozenset[str], message: str
) -> None:
    with pytest.raises(MalformedError) as e:
        fields(value, "thing", _KEYS, optional)
    assert str(e.value.detail) == message
