"""Tables for relay.protocol.sfv: the strict RFC 8941 dictionary parser that
Signature-Input, Signature and Content-Digest go through."""

from __future__ import annotations

from decimal import Decimal

import pytest

from relay.errors import BadSignature, DigestMismatch, RelayError
from relay.protocol.sfv import Token, b64, b64_canonical, parse_dictionary


def test_members_keep_their_text_exactly_as_received() -> None:
    text = 'sig1=("@method" "@path");created=1;keyid="a#b", other=:AAAA:'
    members = parse_dictionary(text, BadSignature, "Signature-Input")
    sig1 = members["sig1"]
    assert sig1.inner and sig1.value == (("@method", {}), ("@path", {}))
    assert sig1.params == {"created": 1, "keyid": "a#b"}
    assert sig1.text == '("@method" "@path");created=1;keyid="a#b"'
    assert members["other"].value == b"\x00\x00\x00" and not members["other"].inner


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("a=42", 42),
        ("a=-7", -7),
        ("a=1.5", Decimal("1.5")),
        ('a="x\\"y"', 'x"y'),
        ("a=sha-256", Token("sha-256")),
        ("a=?0", False),
        ("a", True),
    ],
)
def test_bare_items(text: str, value: object) -> None:
    assert parse_dictionary(text, BadSignature, "H")["a"].value == value


@pytest.mark.parametrize(
    ("text", "fault"),
    [
        ("", "empty dictionary"),
        ("a=1, a=2", "member 'a' repeated"),
        ("a=1;p=1;p=2", "parameter 'p' repeated"),
        ("a=1,", "trailing comma"),
        ("a=:AAB=:", "not canonical padded base64"),
        ("a=:AAAA", "unterminated byte sequence"),
        ('a="x', "unterminated string"),
        ('a="\\n"', "bad escape"),
        ("a=1234567890123456", "integer too long"),
        ("a=1.2345", "bad decimal"),
        ("A=1", "expected a key"),
        ("a=1 b=2", "expected ','"),
    ],
)
def test_refusals_raise_the_callers_error(text: str, fault: str) -> None:
    with pytest.raises(DigestMismatch) as info:
        parse_dictionary(text, DigestMismatch, "Content-Digest")
    assert info.value.detail.startswith("Content-Digest is not a valid structured field: ")
    assert fault in info.value.detail


@pytest.mark.parametrize("error", [BadSignature, DigestMismatch])
def test_the_error_class_is_the_callers(error: type[RelayError]) -> None:
    with pytest.raises(error):
        parse_dictionary("a=(", error, "H")


def test_b64_canonical_round_trip() -> None:
    assert b64(b"\xff\x00") == "/wA="
    assert b64_canonical("/wA=") == b"\xff\x00"
    assert b64_canonical("/wB=") is None  # non-zero padding bits
    assert b64_canonical("/wA") is None  # unpadded
    assert b64_canonical("-_A=") is None  # URL-safe alphabet
