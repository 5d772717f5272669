"""Tables for relay.protocol.erasure: request and answer payloads, their refusals,
the chain of answers, and the golden vectors of tests/vectors/relay-erasure-v1.json."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from relay.errors import ItemRejected, MalformedError
from relay.protocol.envelope import ENVELOPE_DOMAIN, decode_header, open_envelope, verify_envelope
from relay.protocol.erasure import (
    ERASURE_CTYPE,
    ERASURE_RECEIPT_CTYPE,
    ErasureAnswer,
    ErasureRequest,
    Onward,
    decode_answer,
    decode_request,
    encode_answer,
    encode_request,
    read_chain,
    request_header,
)
from relay.protocol.keystr import parse_public_key
from tests.protocol import erasure_vectors as ev
from tests.protocol.wire import DROP, ID1, ID2, mutated, raw_map

V: Any = json.loads(
    (Path(__file__).parent.parent / "vectors" / "relay-erasure-v1.json").read_text("utf-8")
)
B_KEY = V["keys"]["b.test"]["public"]

# --- request payload -----------------------------------------------------------------

REQUEST_BASE: dict[str, Any] = {"target": ID1, "source": "admin", "reason": "court", "at": 5}

REQUEST_REFUSALS = [
    pytest.param({"target": ID1[:15]}, "target", id="target-15"),
    pytest.param({"target": ID1.hex()}, "target", id="target-str"),
    pytest.param({"source": "peer"}, "source: .* is not mailbox or admin", id="source-unknown"),
    pytest.param({"reason": "x" * 501}, "reason: over 500 bytes", id="reason-long"),
    pytest.param({"reason": "é" * 251}, "reason: over 500 bytes", id="reason-long-utf8"),
    pytest.param({"reason": b"court"}, "reason: expected str", id="reason-bin"),
    pytest.param({"at": -1}, "outside", id="at-negative"),
    pytest.param({"extra": 1}, "unknown key", id="unknown-key"),
    pytest.param({"at": DROP}, "missing key at", id="missing-at"),
]


@pytest.mark.parametrize(("changes", "fragment"), REQUEST_REFUSALS)
def test_decode_request_refuses(changes: dict[str, Any], fragment: str) -> None:
    with pytest.raises(MalformedError, match=fragment) as info:
        decode_request(mutated(REQUEST_BASE, changes))
    assert info.value.detail.startswith("erasure")


def test_request_round_trips_and_refuses_a_repeated_key() -> None:
    r = ErasureRequest(ID2, "mailbox", "", 1795610000000)
    assert decode_request(encode_request(r)) == r
    with pytest.raises(MalformedError, match="repeated"):
        decode_request(raw_map([*REQUEST_BASE.items(), ("source", "mailbox")]))
    with pytest.raises(MalformedError):
        encode_request(ErasureRequest(ID2, "robot", "", 1))


def test_only_the_origin_writes_a_request_about_its_message() -> None:
    with pytest.raises(MalformedError, match=r"only a.test erases"):
        request_header(
            id=ID2,
            origin="c.test",
            key_id="x",
            target_origin="a.test",
            dest="b.test",
            residency=["RU"],
            created=1,
            expires=2,
            payload=b"",
        )


# --- answer payload ------------------------------------------------------------------

ANSWER_BASE: dict[str, Any] = {
    "request": ID1,
    "target": ID2,
    "status": "erased",
    "at": 7,
    "hold_until": 0,
    "rule": "",
    "jurisdiction": "KZ",
    "next": [],
    "downstream": [],
}

ANSWER_REFUSALS = [
    pytest.param({"status": "gone"}, "status: .* is not erased, held or unknown", id="status"),
    pytest.param({"hold_until": 9}, "exactly when held", id="erased-with-hold"),
    pytest.param({"rule": "r"}, "exactly when held", id="erased-with-rule"),
    pytest.param({"status": "held"}, "exactly when held", id="held-without-hold"),
    pytest.param({"status": "held", "hold_until": 9}, "exactly when held", id="held-no-rule"),
    pytest.param({"jurisdiction": "kz"}, "jurisdiction", id="jurisdiction-lower"),
    pytest.param({"request": ID1[:8]}, "request", id="request-short"),
    pytest.param({"next": [["b.test", [B_KEY]], ["c.test", [B_KEY]]]}, "at most one", id="2-next"),
    pytest.param({"next": [["B.test", [B_KEY]]]}, "not a node name", id="next-name"),
    pytest.param({"next": [["b.test", []]]}, "1..8 keys", id="next-no-keys"),
    pytest.param({"next": [["b.test", ["ed25519:nope"]]]}, "ed25519", id="next-bad-key"),
    pytest.param({"next": [["b.test"]]}, r"expected \[node", id="next-short"),
    pytest.param({"next": "b.test"}, "expected an array", id="next-str"),
    pytest.param({"downstream": [[b"h", b"s", b"p"]]}, "more answers than next", id="orphan"),
    pytest.param(
        {"next": [["b.test", [B_KEY]]], "downstream": [[b"h", b"s"]]},
        r"expected \[header_bytes",
        id="downstream-short",
    ),
    pytest.param(
        {"next": [["b.test", [B_KEY]]], "downstream": [["h", b"s", b"p"]]},
        r"expected \[header_bytes",
        id="downstream-str",
    ),
    pytest.param({"extra": 1}, "unknown key", id="unknown-key"),
    pytest.param({"next": DROP}, "missing key next", id="missing-next"),
]


@pytest.mark.parametrize(("changes", "fragment"), ANSWER_REFUSALS)
def test_decode_answer_refuses(changes: dict[str, Any], fragment: str) -> None:
    with pytest.raises(MalformedError, match=fragment) as info:
        decode_answer(mutated(ANSWER_BASE, changes))
    assert info.value.detail.startswith("erasure-receipt")


def test_answer_round_trips() -> None:
    a = ErasureAnswer(
        ID1,
        ID2,
        "held",
        7,
        99,
        "retention.content_min_days",
        "RU",
        (Onward("b.test", (B_KEY,)),),
        (),
    )
    assert decode_answer(encode_answer(a)) == a
    unknown = replace(a, status="unknown", hold_until=0, rule="", next=())
    assert decode_answer(encode_answer(unknown)) == unknown


# --- golden vectors -------------------------------------------------------------------


def _env(section: str) -> tuple[bytes, bytes, bytes]:
    d = V[section]
    return (
        bytes.fromhex(d["header_bytes_hex"]),
        bytes.fromhex(d["signature_hex"]),
        bytes.fromhex(d["payload_hex"]),
    )


def test_vectors_are_rebuilt_byte_for_byte() -> None:
    assert ev.build() == V


def test_request_vector_decodes_and_verifies() -> None:
    env = open_envelope(*_env("request"))
    h = env.header
    assert (h.kind, h.origin, h.sender, h.to, h.dest) == (
        "erasure",
        "a.test",
        "postmaster@a.test",
        ("postmaster@b.test",),
        "b.test",
    )
    assert (h.ctype, h.residency, h.max_hops) == (ERASURE_CTYPE, ("KZ", "RU"), 16)
    verify_envelope(env, parse_public_key(V["keys"]["a.test"]["public"]))
    assert decode_request(env.payload) == ErasureRequest(bytes(range(16)), "mailbox", "", ev.T)
    # it names the message of relay-v1.json, and shares its residency and destination
    assert decode_header(bytes.fromhex(ev.RELAY_V1["envelope"]["header_bytes_hex"])).id == bytes(
        range(16)
    )


def test_the_origin_reads_the_chain_of_answers_from_two_relays_away() -> None:
    env = open_envelope(*_env("answer_c_to_a"))
    assert (env.header.kind, env.header.ctype) == ("erasure-receipt", ERASURE_RECEIPT_CTYPE)
    assert (env.header.origin, env.header.dest) == ("c.test", "a.test")
    verify_envelope(env, parse_public_key(V["keys"]["c.test"]["public"]))  # a.test pins c.test
    first = decode_answer(env.payload)
    links = read_chain("c.test", first)
    assert [(link.node, link.answer.status if link.answer else None) for link in links] == [
        ("c.test", "erased"),
        ("b.test", "erased"),
    ]
    b = links[1]
    assert b.signed == _env("answer_b_to_c") and b.answer is not None
    assert (b.answer.jurisdiction, b.answer.at, b.answer.next) == ("KZ", ev.T + 1000, ())
    held = decode_answer(bytes.fromhex(V["held_answer_payload_hex"]))
    assert (held.status, held.hold_until, held.rule) == (
        "held",
        ev.T + 30 * ev.DAY,
        "retention.content_min_days",
    )


def test_a_relay_that_named_its_next_hop_before_it_answered_leaves_it_pending() -> None:
    first = replace(decode_answer(_env("answer_c_to_a")[2]), downstream=())
    links = read_chain("c.test", first)
    assert [(link.node, link.answer) for link in links][1] == ("b.test", None)


def _chain_with(
    nested: tuple[bytes, bytes, bytes], keys: tuple[str, ...] = (B_KEY,), node: str = "b.test"
) -> ErasureAnswer:
    first = decode_answer(_env("answer_c_to_a")[2])
    return replace(first, next=(Onward(node, keys),), downstream=(nested,))


def test_read_chain_refuses_what_the_previous_node_did_not_vouch_for() -> None:
    header, sig, payload = _env("answer_b_to_c")
    # signed with a key c.test did not name for b.test
    with pytest.raises(ItemRejected, match=r"not one c.test named"):
        read_chain("c.test", _chain_with((header, sig, payload), (V["keys"]["a.test"]["public"],)))
    # a flipped signature bit
    bad_sig = bytes([sig[0] ^ 1]) + sig[1:]
    with pytest.raises(ItemRejected, match="signature does not verify"):
        read_chain("c.test", _chain_with((header, bad_sig, payload)))
    # another payload under the signed header
    with pytest.raises(ItemRejected, match=r"sha256|bytes"):
        read_chain("c.test", _chain_with((header, sig, payload + b"x")))
    # the answer is from b.test, but c.test named d.test
    with pytest.raises(MalformedError, match=r"not an erasure-receipt from d.test"):
        read_chain("c.test", _chain_with((header, sig, payload), node="d.test"))
    # written to c.test, so it cannot be read as if a.test had named b.test directly
    with pytest.raises(MalformedError, match=r"to a.test"):
        read_chain("a.test", _chain_with((header, sig, payload)))
    # a node may not name itself (a loop)
    with pytest.raises(MalformedError, match="already in the chain"):
        read_chain("b.test", _chain_with((header, sig, payload)))


def test_read_chain_refuses_an_answer_about_another_request() -> None:
    other = ev.answer(
        "b.test",
        "c.test",
        ev.ANSWER_B_ID,
        ErasureAnswer(ID1, ev.MESSAGE.id, "erased", 1, 0, "", "KZ", (), ()),
        ev.T,
    )
    with pytest.raises(MalformedError, match="another request"):
        read_chain("c.test", _chain_with((other.header_bytes, other.signature, other.payload)))


def test_the_signatures_cover_the_domain_and_the_exact_header_bytes() -> None:
    header, sig, _ = _env("answer_b_to_c")
    pub = parse_public_key(B_KEY)
    pub.verify(sig, ENVELOPE_DOMAIN + header)
