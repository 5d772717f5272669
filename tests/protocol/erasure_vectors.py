"""Builds the erasure golden vectors (tests/vectors/relay-erasure-v1.json) with the
functions the node uses; `python -m tests.protocol.erasure_vectors` prints the file.

The path is a.test (origin, RFC 8032 test key 1) -> c.test (relay, test key 3)
-> b.test (destination, test key 2), about the message envelope of
relay-v1.json (id 00..0f, dest b.test, residency KZ, RU)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from relay.protocol.envelope import Envelope, decode_header, seal
from relay.protocol.erasure import (
    ErasureAnswer,
    ErasureRequest,
    Onward,
    answer_header,
    encode_answer,
    encode_request,
    request_header,
)
from relay.protocol.keystr import key_id, private_key_from_seed, public_key_string

RELAY_V1: Any = json.loads((Path(__file__).parent.parent / "vectors" / "relay-v1.json").read_text())
SEEDS = {
    "a.test": RELAY_V1["keys"]["a.test"]["seed_hex"],
    "b.test": RELAY_V1["keys"]["b.test"]["seed_hex"],
    "c.test": RELAY_V1["keys"]["authority"]["seed_hex"],  # RFC 8032 test 3
}
MESSAGE = decode_header(bytes.fromhex(RELAY_V1["envelope"]["header_bytes_hex"]))
REQUEST_ID = bytes(range(0x30, 0x40))
ANSWER_B_ID = bytes(range(0x40, 0x50))
ANSWER_C_ID = bytes(range(0x50, 0x60))
T = 1795610000000
DAY = 86_400_000


def public(node: str) -> str:
    return public_key_string(private_key_from_seed(bytes.fromhex(SEEDS[node])).public_key())


def _seal(node: str, header: Any, payload: bytes) -> Envelope:
    return seal(header, payload, private_key_from_seed(bytes.fromhex(SEEDS[node])))


def request() -> Envelope:
    payload = encode_request(ErasureRequest(MESSAGE.id, "mailbox", "", T))
    h = request_header(
        id=REQUEST_ID,
        origin="a.test",
        key_id=key_id(public("a.test")),
        target_origin=MESSAGE.origin,
        dest=MESSAGE.dest,
        residency=MESSAGE.residency,
        created=T,
        expires=T + 5 * DAY,
        payload=payload,
    )
    return _seal("a.test", h, payload)


def answer(writer: str, to_node: str, ident: bytes, a: ErasureAnswer, created: int) -> Envelope:
    payload = encode_answer(a)
    h = answer_header(
        id=ident,
        writer=writer,
        key_id=key_id(public(writer)),
        to_node=to_node,
        residency=MESSAGE.residency,
        created=created,
        expires=created + 5 * DAY,
        payload=payload,
    )
    return _seal(writer, h, payload)


def answer_b() -> Envelope:
    a = ErasureAnswer(REQUEST_ID, MESSAGE.id, "erased", T + 1000, 0, "", "KZ", (), ())
    return answer("b.test", "c.test", ANSWER_B_ID, a, T + 1000)


def answer_c() -> Envelope:
    b = answer_b()
    a = ErasureAnswer(
        REQUEST_ID,
        MESSAGE.id,
        "erased",
        T + 500,
        0,
        "",
        "RU",
        (Onward("b.test", (public("b.test"),)),),
        ((b.header_bytes, b.signature, b.payload),),
    )
    return answer("c.test", "a.test", ANSWER_C_ID, a, T + 2000)


def held_payload() -> bytes:
    return encode_answer(
        ErasureAnswer(
            REQUEST_ID,
            MESSAGE.id,
            "held",
            T + 1000,
            T + 30 * DAY,
            "retention.content_min_days",
            "KZ",
            (),
            (),
        )
    )


def _env(e: Envelope) -> dict[str, str]:
    return {
        "header_bytes_hex": e.header_bytes.hex(),
        "signature_hex": e.signature.hex(),
        "payload_hex": e.payload.hex(),
    }


def build() -> dict[str, Any]:
    """The whole vector file."""
    return {
        "about": (
            "Golden vectors for erasure (docs/protocol.md, Erasure): the erasure request"
            " a.test writes about the message envelope of relay-v1.json, the answer b.test"
            " (its destination) sends c.test (the relay between them), and the answer c.test"
            " sends a.test, carrying b.test's as signed. c.test signs with RFC 8032 test key 3"
            " (the authority key of relay-v1.json); a.test and b.test as there."
        ),
        "keys": {node: {"public": public(node), "key_id": key_id(public(node))} for node in SEEDS},
        "request": _env(request()),
        "answer_b_to_c": _env(answer_b()),
        "answer_c_to_a": _env(answer_c()),
        "held_answer_payload_hex": held_payload().hex(),
    }


if __name__ == "__main__":
    print(json.dumps(build(), indent=2))
