"""Tables for relay.protocol.envelope: strict msgpack, every header check of DESIGN §4,
tampering, traces, and the refusals of the receipt, batch, result and
certificate decoders."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import msgpack
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
from relay.protocol.certificate import Certificate, open_certificate, sign_certificate
from relay.protocol.envelope import (
    MAX_LIFETIME_MS,
    RECEIPT_CTYPE,
    check_payload,
    decode_header,
    encode_header,
    header_digest,
    make_header,
    open_envelope,
    peek_id,
    seal,
    verify_envelope,
)
from relay.protocol.keystr import private_key_from_seed
from relay.protocol.names import split_address, valid_mailbox, valid_node_name
from relay.protocol.receipt import Receipt, decode_receipt, encode_receipt
from relay.protocol.strict import pack, strict_unpack

V: Any = json.loads((Path(__file__).parent.parent / "vectors" / "relay-v1.json").read_text("utf-8"))
A_KEY = private_key_from_seed(bytes.fromhex(V["keys"]["a.test"]["seed_hex"]))
B_KEY = private_key_from_seed(bytes.fromhex(V["keys"]["b.test"]["seed_hex"]))
HB = bytes.fromhex(V["envelope"]["header_bytes_hex"])
SIG = bytes.fromhex(V["envelope"]["signature_hex"])
PAYLOAD = bytes.fromhex(V["envelope"]["payload_hex"])
BASE: dict[str, Any] = msgpack.unpackb(HB)
DROP = object()


def mutated(base: dict[str, Any], changes: dict[str, Any]) -> bytes:
    m = dict(base)
    for k, v in changes.items():
        if v is DROP:
            del m[k]
        else:
            m[k] = v
    return pack(m)


def raw_map(pairs: list[tuple[Any, Any]]) -> bytes:
    """A msgpack map written by hand, so keys may repeat."""
    return b"\xde" + len(pairs).to_bytes(2, "big") + b"".join(pack(k) + pack(v) for k, v in pairs)


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
    pytest.param(b"\x92\x01\x91\xcb" + b"\x00" * 8, r"at \[1\]\[0\]", id="path-array"),
    pytest.param(pack({"a": {"b": None}}), r"at \.a\.b", id="path-map"),
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
    ],
)
def test_strict_unpack_accepts(data: bytes, expected: object) -> None:
    assert strict_unpack(data, "thing") == expected


# --- names ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("a.test", True),
        ("msk.example.ru", True),
        ("localhost", True),
        ("x-1.b2", True),
        ("127.0.0.1", True),
        ("a" * 63 + ".test", True),
        (".".join(["a" * 63] * 3) + "." + "a" * 61, True),  # 253 characters
        (".".join(["a" * 63] * 3) + "." + "a" * 62, False),  # 254 characters
        ("a" * 64 + ".test", False),
        ("", False),
        ("A.test", False),
        ("a..test", False),
        (".a.test", False),
        ("a.test.", False),
        ("-a.test", False),
        ("a-.test", False),
        ("a_b.test", False),
        ("a.test\n", False),
        ("a test", False),
        ("а.test", False),  # Cyrillic a
        ("a.tést", False),
    ],
)
def test_valid_node_name(name: str, ok: bool) -> None:
    assert valid_node_name(name) is ok


@pytest.mark.parametrize(
    ("mailbox", "ok"),
    [
        ("bob", True),
        ("postmaster", True),
        ("a.b+c_d-e", True),
        ("-x", True),
        ("x" * 64, True),
        ("x" * 65, False),
        ("", False),
        (".bob", False),
        ("Bob", False),
        ("bob smith", False),
        ("bob@x", False),
        ("bob\n", False),
        ("bób", False),
    ],
)
def test_valid_mailbox(mailbox: str, ok: bool) -> None:
    assert valid_mailbox(mailbox) is ok


def test_split_address() -> None:
    assert split_address("bob@b.test") == ("bob", "b.test")
    for bad in ["bob", "bob@", "@b.test", "bob@B.test", "bob@b.test@c.test", ".bob@b.test"]:
        with pytest.raises(MalformedError):
            split_address(bad)


# --- header: every check of DESIGN §4 --------------------------------------------

RECEIPT_OK = {
    "kind": "receipt",
    "from": "postmaster@a.test",
    "to": ["postmaster@b.test"],
    "ctype": RECEIPT_CTYPE,
}
CREATED = BASE["created"]

HEADER_REFUSALS = [
    pytest.param({"v": 2}, "v: version 2", id="v-2"),
    pytest.param({"v": 0}, "v: version 0", id="v-0"),
    pytest.param({"v": "1"}, "v: expected int, got str", id="v-str"),
    pytest.param({"id": b"\x00" * 15}, "id: expected 16 bytes", id="id-15"),
    pytest.param({"id": b"\x00" * 17}, "id: expected 16 bytes", id="id-17"),
    pytest.param({"id": "0123456789abcdef"}, "id: expected bin, got str", id="id-str-in-bin"),
    pytest.param({"kind": "note"}, "kind:", id="kind-unknown"),
    pytest.param({"kind": b"message"}, "kind: expected str, got bin", id="kind-bin-in-str"),
    pytest.param({"origin": "A.test"}, "origin:", id="origin-upper"),
    pytest.param({"origin": "a..test"}, "origin:", id="origin-empty-label"),
    pytest.param({"origin": ""}, "origin:", id="origin-empty"),
    pytest.param({"key": ""}, "key:", id="key-empty"),
    pytest.param({"key": 7}, "key: expected str", id="key-int"),
    pytest.param({"from": "alice@c.test"}, "from:", id="from-other-node"),
    pytest.param({"from": "alice"}, "from:", id="from-no-at"),
    pytest.param({"from": ".alice@a.test"}, "from:", id="from-bad-mailbox"),
    pytest.param({"from": "Alice@a.test"}, "from:", id="from-upper"),
    pytest.param({"to": []}, "to: 0 recipients", id="to-empty"),
    pytest.param({"to": [f"u{i}@b.test" for i in range(101)]}, "to: 101", id="to-101"),
    pytest.param({"to": ["bob@c.test"]}, "to:.*not at dest", id="to-other-dest"),
    pytest.param(
        {"to": ["bob@b.test", "bob@b.test"]}, "to: a recipient is listed twice", id="to-dup"
    ),
    pytest.param({"to": "bob@b.test"}, "to: expected an array", id="to-str"),
    pytest.param({"to": [b"bob@b.test"]}, "to: expected an array of str", id="to-bin-item"),
    pytest.param({"to": ["bob"]}, "to:", id="to-no-at"),
    pytest.param({"dest": "B.test"}, "dest:", id="dest-upper"),
    pytest.param({"dest": "c.test"}, "not at dest", id="dest-not-recipients"),
    pytest.param({"expires": CREATED}, "expires:", id="expires-equal-created"),
    pytest.param({"expires": CREATED - 1}, "expires:", id="expires-before-created"),
    pytest.param({"expires": CREATED + MAX_LIFETIME_MS + 1}, "expires:", id="expires-over-30d"),
    pytest.param({"created": "now"}, "created: expected int", id="created-str"),
    pytest.param({"residency": []}, "residency: the set is empty", id="residency-empty"),
    pytest.param({"residency": ["kz"]}, "residency:.*uppercase", id="residency-lower"),
    pytest.param({"residency": ["KZZ"]}, "residency:", id="residency-3-letters"),
    pytest.param({"residency": ["K1"]}, "residency:", id="residency-digit"),
    pytest.param({"residency": ["RU", "KZ"]}, "strictly ascending", id="residency-order"),
    pytest.param({"residency": ["KZ", "KZ"]}, "strictly ascending", id="residency-repeat"),
    pytest.param({"residency": "KZ"}, "residency: expected an array", id="residency-str"),
    pytest.param({"ctype": ""}, "ctype:", id="ctype-empty"),
    pytest.param({"ctype": None}, "nil is not allowed", id="ctype-nil"),
    pytest.param({"size": "26"}, "size: expected int", id="size-str"),
    pytest.param({"size": -1}, "outside 0..2.*size", id="size-negative"),
    pytest.param({"size": 2**63}, "outside 0..2.*size", id="size-2-63"),
    pytest.param({"sha256": b"\x00" * 31}, "sha256: expected 32 bytes", id="sha256-31"),
    pytest.param({"sha256": "0" * 32}, "sha256: expected bin", id="sha256-str"),
    pytest.param({"max_hops": 0}, "max_hops:", id="max-hops-0"),
    pytest.param({"max_hops": 17}, "max_hops:", id="max-hops-17"),
    pytest.param({"max_hops": True}, "bool is not allowed", id="max-hops-bool"),
    pytest.param({"created": 1.5}, "float is not allowed.*created", id="created-float"),
    pytest.param({"ctype": msgpack.ExtType(5, b"x")}, "ext is not allowed", id="ctype-ext"),
    pytest.param({"extra": 1}, "unknown key 'extra'", id="unknown-key"),
    pytest.param({"ctype": DROP}, "missing key ctype", id="missing-ctype"),
    pytest.param({"v": DROP, "id": DROP}, "missing key id, v", id="missing-two"),
    pytest.param({**RECEIPT_OK, "from": "alice@a.test"}, "a receipt comes from", id="receipt-from"),
    pytest.param({**RECEIPT_OK, "to": ["bob@b.test"]}, "a receipt goes to", id="receipt-to"),
    pytest.param(
        {**RECEIPT_OK, "ctype": "text/plain"}, "receipt's content type", id="receipt-ctype"
    ),
]


@pytest.mark.parametrize(("changes", "fragment"), HEADER_REFUSALS)
def test_decode_header_refuses(changes: dict[str, Any], fragment: str) -> None:
    data = mutated(BASE, changes)
    with pytest.raises(MalformedError, match=fragment) as info:
        decode_header(data)
    assert info.value.detail.startswith("header: ")
    assert info.value.code == "malformed"


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"max_hops": 1}, id="max-hops-1"),
        pytest.param({"max_hops": 16}, id="max-hops-16"),
        pytest.param({"expires": CREATED + MAX_LIFETIME_MS}, id="expires-30d"),
        pytest.param({"expires": CREATED + 1}, id="expires-1ms"),
        pytest.param({"to": [f"u{i}@b.test" for i in range(100)]}, id="to-100"),
        pytest.param({"residency": ["ZZ"]}, id="residency-unknown-code-is-not-malformed"),
        pytest.param({"from": "a.b+c_d-e@a.test"}, id="mailbox-punctuation"),
        pytest.param({"ctype": "application/octet-stream"}, id="ctype"),
        pytest.param({"size": 2**63 - 1}, id="size-max"),
        pytest.param(RECEIPT_OK, id="receipt"),
    ],
)
def test_decode_header_accepts(changes: dict[str, Any]) -> None:
    h = decode_header(mutated(BASE, changes))
    assert h.id == BASE["id"]


def test_decode_header_refuses_repeated_key() -> None:
    pairs = [*BASE.items(), ("kind", "receipt")]
    with pytest.raises(MalformedError, match="'kind' is repeated"):
        decode_header(raw_map(pairs))


def test_decode_header_accepts_any_key_order() -> None:
    reordered = pack(dict(reversed(list(BASE.items()))))
    assert reordered != HB
    assert decode_header(reordered) == decode_header(HB)


def test_decode_header_refuses_non_map() -> None:
    with pytest.raises(MalformedError, match="expected a map, got array"):
        decode_header(pack([1, 2]))


def test_decode_header_refuses_invalid_utf8_field() -> None:
    bad = HB.replace(b"\xa7message", b"\xa7messag\xff")
    with pytest.raises(MalformedError, match="UTF-8"):
        decode_header(bad)


def test_peek_id() -> None:
    assert peek_id(HB) == BASE["id"]
    assert peek_id(mutated(BASE, {"kind": "bogus"})) == BASE["id"]
    for bad in [
        mutated(BASE, {"id": DROP}),
        mutated(BASE, {"id": b"\x00" * 15}),
        mutated(BASE, {"id": "0123456789abcdef"}),
        pack([BASE["id"]]),
        HB + b"\x00",
        b"",
    ]:
        with pytest.raises(MalformedError):
            peek_id(bad)


# --- envelope: sign, open, verify, tamper -----------------------------------------


def header_args(**over: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "id": bytes(16),
        "kind": "message",
        "origin": "a.test",
        "key_id": "11qYAYKx",
        "sender": "alice@a.test",
        "to": ["bob@b.test", "carol@b.test"],
        "dest": "b.test",
        "created": 1_000,
        "expires": 2_000,
        "residency": ["RU", "KZ", "RU"],
        "ctype": "text/plain",
        "payload": b"hello",
    }
    args.update(over)
    return args


def test_make_header_round_trip() -> None:
    h = make_header(**header_args())
    assert h.residency == ("KZ", "RU")
    assert h.size == 5 and h.sha256 == hashlib.sha256(b"hello").digest()
    assert h.to == ("bob@b.test", "carol@b.test") and h.max_hops == 8
    assert decode_header(encode_header(h)) == h
    env = seal(h, b"hello", A_KEY)
    opened = open_envelope(env.header_bytes, env.signature, env.payload)
    assert opened == env
    verify_envelope(opened, A_KEY.public_key())
    check_payload(opened)


@pytest.mark.parametrize(
    "over",
    [
        {"residency": ["kz"]},
        {"residency": []},
        {"to": ["bob@c.test"]},
        {"sender": "alice@b.test"},
        {"expires": 1_000},
        {"max_hops": 17},
        {"id": b"short"},
        {"created": -1},
        {"expires": 2**64},
        {"created": -(2**64)},
        {"kind": "receipt"},
    ],
)
def test_make_header_refuses(over: dict[str, Any]) -> None:
    with pytest.raises(MalformedError):
        make_header(**header_args(**over))


def test_seal_refuses_a_payload_the_header_does_not_describe() -> None:
    h = make_header(**header_args())
    with pytest.raises(MalformedError, match="payload"):
        seal(h, b"hellO", A_KEY)
    with pytest.raises(MalformedError, match="payload"):
        seal(h, b"hello!", A_KEY)


def test_every_header_byte_is_covered_by_the_signature() -> None:
    pub = A_KEY.public_key()
    refused = {"malformed": 0, "signature": 0}
    for i in range(len(HB)):
        for bit in (0x01, 0x80):
            bad = bytearray(HB)
            bad[i] ^= bit
            try:
                env = open_envelope(bytes(bad), SIG, PAYLOAD)
            except MalformedError:
                refused["malformed"] += 1
                continue
            with pytest.raises(ItemRejected) as info:
                verify_envelope(env, pub)
            assert info.value.item_code == "signature"
            refused["signature"] += 1
    assert sum(refused.values()) == 2 * len(HB)
    assert refused["signature"] > 0 and refused["malformed"] > 0


def test_every_signature_byte_matters() -> None:
    pub = A_KEY.public_key()
    for i in range(len(SIG)):
        bad = bytearray(SIG)
        bad[i] ^= 0x04
        env = open_envelope(HB, bytes(bad), PAYLOAD)
        with pytest.raises(ItemRejected, match="signature does not verify"):
            verify_envelope(env, pub)


@pytest.mark.parametrize("length", [0, 63, 65])
def test_signature_length(length: int) -> None:
    with pytest.raises(MalformedError, match="signature: expected 64 bytes"):
        open_envelope(HB, b"\x00" * length, PAYLOAD)


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (PAYLOAD + b"!", "size"),
        (PAYLOAD[:-1], "size"),
        (b"", "size"),
        (bytes([PAYLOAD[0] ^ 1]) + PAYLOAD[1:], "digest"),
        (PAYLOAD[::-1], "digest"),
    ],
)
def test_payload_tampering(payload: bytes, code: str) -> None:
    env = open_envelope(HB, SIG, payload)
    verify_envelope(env, A_KEY.public_key())  # the header is intact
    with pytest.raises(ItemRejected) as info:
        check_payload(env)
    assert info.value.item_code == code


def test_signature_is_over_exact_bytes_not_a_re_encoding() -> None:
    reordered = pack(dict(reversed(list(BASE.items()))))
    env = open_envelope(reordered, SIG, PAYLOAD)
    assert env.header == decode_header(HB)
    with pytest.raises(ItemRejected):
        verify_envelope(env, A_KEY.public_key())
    # ...while an origin that encodes in another key order is fine: no canonical form.
    own = A_KEY.sign(b"relay-envelope-v1\x00" + reordered)
    verify_envelope(open_envelope(reordered, own, PAYLOAD), A_KEY.public_key())


def test_header_digest() -> None:
    assert header_digest(HB) == hashlib.sha256(HB).digest()
    assert header_digest(HB) != header_digest(pack(dict(reversed(list(BASE.items())))))


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


# --- receipt payload ------------------------------------------------------------

ID1 = bytes(range(16))
ID2 = bytes(range(1, 17))
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


# --- certificates ---------------------------------------------------------------

CERT_BASE: dict[str, Any] = {
    "v": 1,
    "name": "c.test",
    "keys": [V["keys"]["b.test"]["public"]],
    "jurisdiction": "KZ",
    "url": "https://c.test:8443",
    "not_before": 10,
    "not_after": 20,
    "authority": "kz-registry",
}

CERT_REFUSALS = [
    pytest.param({"v": 2}, "v: version 2", id="v-2"),
    pytest.param({"name": "C.test"}, "name:", id="name-upper"),
    pytest.param({"keys": []}, "keys: expected one or more", id="keys-empty"),
    pytest.param({"keys": [CERT_BASE["keys"][0]] * 2}, "distinct", id="keys-dup"),
    pytest.param({"keys": ["ed25519:abc"]}, r"keys\[0\]:", id="keys-bad"),
    pytest.param({"keys": ["ed25519:" + "A" * 43]}, "small order", id="keys-weak"),
    pytest.param({"keys": "ed25519:x"}, "keys: expected an array", id="keys-str"),
    pytest.param({"jurisdiction": "Kz"}, "jurisdiction:", id="jurisdiction"),
    pytest.param({"url": "ftp://c.test"}, "url:", id="url-scheme"),
    pytest.param({"url": "https://c test"}, "url:", id="url-space"),
    pytest.param({"url": "https://"}, "url:", id="url-empty-host"),
    pytest.param({"not_after": 10}, "not_after must be later", id="not-after-equal"),
    pytest.param({"not_before": 30}, "not_after must be later", id="not-before-later"),
    pytest.param({"authority": ""}, "authority: empty", id="authority-empty"),
    pytest.param({"extra": 1}, "unknown key", id="unknown-key"),
    pytest.param({"url": DROP}, "missing key url", id="missing-key"),
]


@pytest.mark.parametrize(("changes", "fragment"), CERT_REFUSALS)
def test_open_certificate_refuses(changes: dict[str, Any], fragment: str) -> None:
    blob = pack([mutated(CERT_BASE, changes), b"\x00" * 64])
    with pytest.raises(MalformedError, match=fragment) as info:
        open_certificate(blob)
    assert info.value.detail.startswith("certificate")


def test_certificate_framing_and_round_trip() -> None:
    c = Certificate("n.test", tuple(CERT_BASE["keys"]), "RU", "http://n.test", 1, 2, "ru-authority")
    blob = sign_certificate(c, A_KEY)
    assert open_certificate(blob)[0] == c
    cb = pack(CERT_BASE)
    for bad in [
        pack(cb),
        pack([cb]),
        pack([cb, b"\x00" * 63]),
        blob + b"\x00",
        pack([cb, b"\x00" * 64, b""]),
    ]:
        with pytest.raises(MalformedError):
            open_certificate(bad)
    with pytest.raises(MalformedError):
        sign_certificate(Certificate("n.test", (), "RU", "http://n.test", 1, 2, "x"), A_KEY)


# --- signing refuses what decoding would refuse -------------------------------------


def test_sign_result_refuses_unknown_outcome() -> None:
    with pytest.raises(MalformedError):
        sign_result(BatchResult(bytes(16), "n", {ID1: "maybe"}), B_KEY)


def test_errors_carry_item_codes() -> None:
    env = open_envelope(HB, SIG, PAYLOAD + b"x")
    with pytest.raises(ItemRejected) as info:
        check_payload(env)
    assert info.value.result == "rejected:size"
