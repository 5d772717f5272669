"""Shared vectors and helpers for the tables of tests/protocol: the golden
envelope of relay-v1.json and ways to write msgpack a strict decoder must refuse."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgpack

from relay.protocol.keystr import private_key_from_seed
from relay.protocol.strict import pack

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


ID1 = bytes(range(16))
ID2 = bytes(range(1, 17))
