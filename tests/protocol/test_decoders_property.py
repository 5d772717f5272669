"""Property tests: every decoder of network bytes returns a value or raises a
RelayError subclass, nothing else (DESIGN §2, STYLE 2).

Inputs are random bytes, random msgpack of every type (allowed or not), the
golden blobs with bytes flipped, inserted or cut, and structured mutations of
valid maps (a field dropped, added or given a value of the wrong type or size).
The module prints how many inputs and decoder calls it ran.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.errors import ItemRejected, MalformedError, RelayError, UnknownSender
from relay.protocol import httpsig
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
from relay.protocol.certificate import open_certificate
from relay.protocol.envelope import (
    decode_header,
    encode_header,
    make_header,
    open_envelope,
    peek_id,
    seal,
    verify_envelope,
)
from relay.protocol.erasure import decode_answer, decode_request, read_chain
from relay.protocol.keystr import parse_public_key, private_key_from_seed, public_key_string
from relay.protocol.receipt import decode_receipt
from relay.protocol.strict import pack, strict_unpack

V: Any = json.loads((Path(__file__).parent.parent / "vectors" / "relay-v1.json").read_text("utf-8"))
A_KEY = private_key_from_seed(bytes.fromhex(V["keys"]["a.test"]["seed_hex"]))
B_KEY = private_key_from_seed(bytes.fromhex(V["keys"]["b.test"]["seed_hex"]))
B_PUB = B_KEY.public_key()
HB = bytes.fromhex(V["envelope"]["header_bytes_hex"])
SIG = bytes.fromhex(V["envelope"]["signature_hex"])
PAYLOAD = bytes.fromhex(V["envelope"]["payload_hex"])
BODY = bytes.fromhex(V["batch_request"]["body_hex"])
RESULT_BYTES = bytes.fromhex(V["batch_response"]["result_bytes_hex"])
RESULT_BODY = bytes.fromhex(V["batch_response"]["body_hex"])
RECEIPT = bytes.fromhex(V["receipt_payload_hex"])
CERT_BYTES = bytes.fromhex(V["certificate"]["cert_bytes_hex"])
CERT_BLOB = pack([CERT_BYTES, bytes.fromhex(V["certificate"]["signature_hex"])])
GOLDEN = [HB, BODY, RESULT_BYTES, RESULT_BODY, RECEIPT, CERT_BYTES, CERT_BLOB]


def _batch_and_ids(data: bytes) -> object:
    return batch_ids(decode_batch(data))


ERASURE_V: Any = json.loads(
    (Path(__file__).parent.parent / "vectors" / "relay-erasure-v1.json").read_text("utf-8")
)
ERASURE_REQUEST = bytes.fromhex(ERASURE_V["request"]["payload_hex"])
ERASURE_ANSWER = bytes.fromhex(ERASURE_V["answer_c_to_a"]["payload_hex"])
GOLDEN += [ERASURE_REQUEST, ERASURE_ANSWER]


DECODERS: dict[str, Callable[[bytes], object]] = {
    "strict_unpack": lambda d: strict_unpack(d, "fuzz"),
    "decode_header": decode_header,
    "peek_id": peek_id,
    "open_envelope": lambda d: open_envelope(d, SIG, PAYLOAD),
    "decode_receipt": decode_receipt,
    "decode_batch": _batch_and_ids,
    "open_result": lambda d: open_result(d, B_PUB),
    "open_certificate": open_certificate,
    "parse_public_key": lambda d: parse_public_key(d.decode("latin-1")),
    "decode_request": decode_request,
    "decode_answer": decode_answer,
    "read_chain": lambda d: read_chain("c.test", decode_answer(d)),
}

CASES: Counter[str] = Counter()


@pytest.fixture(scope="module", autouse=True)
def _report_counts(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is None or capture is None:
        return
    refused = CASES["refused"]
    with capture.global_and_fixture_disabled():
        reporter.write_line(
            f"\ndecoder fuzz: {CASES['inputs']} inputs, {CASES['calls']} decoder calls "
            f"({CASES['calls'] - refused} decoded, {refused} refused with a RelayError)"
        )


def feed(data: bytes) -> dict[str, RelayError | None]:
    """Run every decoder on `data`; anything but a value or a RelayError fails the test."""
    CASES["inputs"] += 1
    outcome: dict[str, RelayError | None] = {}
    for name, decoder in DECODERS.items():
        CASES["calls"] += 1
        try:
            decoder(data)
        except RelayError as e:
            CASES["refused"] += 1
            outcome[name] = e
        else:
            outcome[name] = None
    return outcome


# --- strategies -----------------------------------------------------------------

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.sampled_from([0, 1, 16, 2**63 - 1, 2**63, -1]),
    st.floats(),
    st.text(max_size=20),
    st.text(alphabet="abz09.-@+_KZRU", max_size=16),
    st.binary(max_size=40),
    st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=12)),
    st.builds(msgpack.Timestamp, st.integers(0, 2**40), st.integers(0, 999_999_999)),
)
map_keys = st.one_of(st.text(max_size=10), st.binary(max_size=16))
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5), st.dictionaries(map_keys, inner, max_size=5)
    ),
    max_leaves=20,
)
# Values of a plausible type but a wrong size, case or range.
near_values = st.one_of(
    values,
    st.binary(min_size=14, max_size=34),
    st.integers(min_value=0, max_value=40),
    st.lists(st.text(alphabet="abKZRU.@", max_size=12), max_size=4),
    st.lists(st.binary(min_size=15, max_size=17), max_size=3),
)

BASES: dict[str, tuple[dict[str, Any], Callable[[bytes], object]]] = {
    "header": (msgpack.unpackb(HB), decode_header),
    "receipt": (msgpack.unpackb(RECEIPT), decode_receipt),
    "erasure": (msgpack.unpackb(ERASURE_REQUEST), decode_request),
    "erasure-receipt": (
        msgpack.unpackb(ERASURE_ANSWER),
        lambda d: read_chain("c.test", decode_answer(d)),
    ),
    "batch": (msgpack.unpackb(BODY), decode_batch),
    "certificate": (msgpack.unpackb(CERT_BYTES), lambda d: open_certificate(pack([d, SIG]))),
    "result": (
        msgpack.unpackb(RESULT_BYTES, strict_map_key=False),
        lambda d: open_result(pack([d, B_KEY.sign(b"relay-result-v1\x00" + d)]), B_PUB),
    ),
}


@st.composite
def structured_mutation(draw: st.DrawFn) -> tuple[str, str, bytes]:
    """(which map, which operation, packed bytes) from a valid map, changed once."""
    which = draw(st.sampled_from(sorted(BASES)))
    m = dict(BASES[which][0])
    op = draw(st.sampled_from(["replace", "drop", "add", "replace-two"]))
    if op == "drop":
        del m[draw(st.sampled_from(sorted(m)))]
    elif op == "add":
        m[draw(st.text(min_size=1, max_size=10).filter(lambda k: k not in m))] = draw(values)
    else:
        for _ in range(1 if op == "replace" else 2):
            m[draw(st.sampled_from(sorted(m)))] = draw(near_values)
    return which, op, pack(m)


@st.composite
def byte_mutation(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(GOLDEN)))
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(data) - 1))
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]))
        if op == "flip":
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":
            data[i] = draw(st.sampled_from([0x00, 0x7F, 0x80, 0xC0, 0xC1, 0xCF, 0xDD, 0xDF, 0xFF]))
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=9))
        elif op == "delete":
            del data[i : i + draw(st.integers(1, 9))]
        else:
            del data[i:]
        if not data:
            break
    return bytes(data)


# --- properties -------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes(data: bytes) -> None:
    feed(data)


@pytest.mark.slow
@settings(max_examples=300, deadline=None)
@given(values)
def test_random_msgpack(value: object) -> None:
    feed(pack(value))


@settings(max_examples=300, deadline=None)
@given(byte_mutation())
def test_golden_blobs_mutated(data: bytes) -> None:
    feed(data)


@settings(max_examples=300, deadline=None)
@given(structured_mutation())
def test_structured_mutations(case: tuple[str, str, bytes]) -> None:
    which, op, data = case
    feed(data)
    decoder = BASES[which][1]
    try:
        decoder(data)
    except RelayError as e:
        assert isinstance(e, MalformedError), e
    else:
        # A map with a key missing or an unknown key added is never accepted.
        assert op not in ("drop", "add"), f"{which}: {op} was accepted"


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=60), st.text(alphabet="ABCabc019+/=-_ é", min_size=40, max_size=46))
def test_parse_public_key_text(text: str, b64ish: str) -> None:
    for candidate in (text, "ed25519:" + text, "ed25519:" + b64ish):
        CASES["calls"] += 1
        try:
            pub = parse_public_key(candidate)
        except MalformedError:
            CASES["refused"] += 1
        else:
            assert public_key_string(pub) == candidate


@settings(max_examples=100, deadline=None)
@given(st.binary(min_size=32, max_size=32))
def test_parse_public_key_any_32_bytes(raw: bytes) -> None:
    text = "ed25519:" + base64.b64encode(raw).decode("ascii").rstrip("=")
    CASES["calls"] += 1
    try:
        pub = parse_public_key(text)
    except MalformedError:
        CASES["refused"] += 1  # not a point, non-canonical, or small order
    else:
        assert public_key_string(pub) == text


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.text(alphabet="ab.-A", max_size=6), max_size=6),
    st.text(alphabet="ab.", max_size=4),
    st.text(alphabet="ab.", max_size=4),
    st.integers(0, 20),
)
def test_check_trace_only_item_rejections(
    trace: list[str], origin: str, sender: str, max_hops: int
) -> None:
    CASES["calls"] += 1
    try:
        check_trace(trace, origin, sender, max_hops)
    except ItemRejected as e:
        CASES["refused"] += 1
        assert e.item_code in {"malformed", "loop", "hops"}
    else:
        assert trace[0] == origin and trace[-1] == sender
        assert len(set(trace)) == len(trace) <= max_hops


names = st.from_regex(r"[a-z0-9]{1,6}(\.[a-z0-9]{1,6}){0,2}", fullmatch=True)
mailboxes = st.from_regex(r"[a-z0-9_+-][a-z0-9._+-]{0,8}", fullmatch=True)
codes = st.from_regex(r"[A-Z]{2}", fullmatch=True)


@pytest.mark.slow
@settings(max_examples=150, deadline=None)
@given(
    env_id=st.binary(min_size=16, max_size=16),
    origin=names,
    dest=names,
    sender=mailboxes,
    rcpts=st.lists(mailboxes, min_size=1, max_size=5, unique=True),
    created=st.integers(0, 2**62),
    ttl=st.integers(1, 30 * 24 * 3600 * 1000),
    residency=st.lists(codes, min_size=1, max_size=5),
    ctype=st.text(min_size=1, max_size=30),
    payload=st.binary(max_size=64),
    max_hops=st.integers(1, 16),
)
def test_valid_headers_round_trip(
    env_id: bytes,
    origin: str,
    dest: str,
    sender: str,
    rcpts: list[str],
    created: int,
    ttl: int,
    residency: list[str],
    ctype: str,
    payload: bytes,
    max_hops: int,
) -> None:
    h = make_header(
        id=env_id,
        kind="message",
        origin=origin,
        key_id="11qYAYKx",
        sender=f"{sender}@{origin}",
        to=[f"{r}@{dest}" for r in rcpts],
        dest=dest,
        created=created,
        expires=created + ttl,
        residency=residency,
        ctype=ctype,
        payload=payload,
        max_hops=max_hops,
    )
    assert decode_header(encode_header(h)) == h
    assert h.sha256 == hashlib.sha256(payload).digest()
    env = seal(h, payload, A_KEY)
    verify_envelope(open_envelope(env.header_bytes, env.signature, payload), A_KEY.public_key())
    body = encode_batch(
        Batch(env_id, (BatchItem(env.header_bytes, env.signature, payload, (origin,)),))
    )
    assert batch_ids(decode_batch(body)) == (env_id,)
    result = BatchResult(env_id, "bm9uY2U=", {env_id: "accepted"})
    assert open_result(sign_result(result, B_KEY), B_PUB) == result


INTRO = V["batch_request_with_certificate"]


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.just(INTRO["relay_certificate"]),
        st.text(max_size=400),
        st.lists(st.binary(max_size=300), min_size=0, max_size=6).map(
            lambda blobs: ", ".join(f":{base64.b64encode(b).decode()}:" for b in blobs)
        ),
        st.text(alphabet=":,=+/ \tABCabc019", max_size=80),
    )
)
def test_relay_certificate_header_parses_or_is_unknown_sender(text: str) -> None:
    """Relay-Certificate: its blobs or UnknownSender; the signature base never changes."""
    headers = {
        "Content-Digest": INTRO["content_digest"],
        "Relay-Origin": INTRO["relay_origin"],
        "Relay-Destination": INTRO["relay_destination"],
        "Signature-Input": INTRO["signature_input"],
        "Signature": INTRO["signature"],
        "Relay-Certificate": text,
    }
    CASES["calls"] += 1
    try:
        req = httpsig.parse_request(method="POST", path="/federation/v1/batch", headers=headers)
    except RelayError as e:
        CASES["refused"] += 1
        assert isinstance(e, UnknownSender), e
    else:
        assert 1 <= len(req.certificates) <= httpsig.MAX_HEADER_CERTIFICATES
        assert req.base == INTRO["signature_base"].encode("ascii")
        for blob in req.certificates:
            feed(blob)
