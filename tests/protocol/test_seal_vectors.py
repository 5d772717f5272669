"""Golden vectors for sealed envelopes (tests/vectors/relay-seal-v1.json, protocol §21).

Fixed keys and randomness: `a.test` signs with RFC 8032 test key 1 (as in
relay-v1.json), `b.test` holds one seal key per suite built from fixed bytes,
and the salt and data key are fixed. Everything after the HPKE wrap is then
deterministic and rebuilt byte for byte. HPKE's encapsulation draws its own
randomness inside `cryptography`, so each `wrap` is a recorded output: the
test opens it with b.test's key and gets the fixed data key back.

`python -m tests.protocol.test_seal_vectors` rewrites the file (new wraps).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from relay.errors import ItemRejected
from relay.protocol import sealing
from relay.protocol.envelope import (
    check_payload,
    decode_header,
    make_header,
    open_envelope,
    seal,
    verify_envelope,
)
from relay.protocol.keystr import key_id, private_key_from_seed, public_key_string

PATH = Path(__file__).parent.parent / "vectors" / "relay-seal-v1.json"
A_SEED = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
ENV_ID = bytes(range(16))
SALT = bytes(range(0x40, 0x60))
DEK = bytes(range(0x80, 0xA0))
BODY = "привет, Алматы".encode()
SECRETS = {
    sealing.HYBRID: bytes(range(96)),
    sealing.CLASSIC: bytes(range(100, 132)),
}


def b_key(suite: str) -> sealing.SealPrivateKey:
    return sealing.seal_secret(suite, SECRETS[suite])


def build(suite: str, wrap: bytes) -> dict[str, str]:
    """One suite's vector, from the fixed inputs and a wrap of DEK."""
    priv = b_key(suite)
    info, ct = sealing.seal_body(
        body=BODY,
        salt=SALT,
        dek=DEK,
        wrap=wrap,
        pub=priv.public,
        env_id=ENV_ID,
        origin="a.test",
        dest="b.test",
    )
    a = private_key_from_seed(A_SEED)
    header = make_header(
        id=ENV_ID,
        kind="message",
        origin="a.test",
        key_id=key_id(public_key_string(a.public_key())),
        sender="alice@a.test",
        to=["bob@b.test"],
        dest="b.test",
        created=1795600000000,
        expires=1795686400000,
        residency=["RU", "KZ"],
        ctype="text/plain; charset=utf-8",
        payload=ct,
        sealed=info,
    )
    env = seal(header, ct, a)
    return {
        "seal_secret": priv.string,
        "seal_key": priv.public.string,
        "seal_key_id": priv.public.key_id,
        "wrap_hex": wrap.hex(),
        "commit_hex": info.commit.hex(),
        "payload_hex": ct.hex(),
        "header_bytes_hex": env.header_bytes.hex(),
        "signature_hex": env.signature.hex(),
    }


def generate() -> dict[str, Any]:
    out: dict[str, Any] = {
        "about": "Sealed envelopes (docs/protocol.md §21). Rebuilt by "
        "tests/protocol/test_seal_vectors.py; the wraps are recorded HPKE outputs.",
        "origin_seed_hex": A_SEED.hex(),
        "id_hex": ENV_ID.hex(),
        "salt_hex": SALT.hex(),
        "dek_hex": DEK.hex(),
        "body_utf8": BODY.decode(),
        "inner_hex": (SALT + BODY).hex(),
        "suites": {},
    }
    for suite in sealing.SUITES:
        pub = b_key(suite).public
        out["suites"][suite] = build(suite, sealing.wrap_dek(pub, DEK, "a.test", "b.test"))
    return out


V: Any = json.loads(PATH.read_text("utf-8")) if PATH.exists() else {"suites": {}}


@pytest.mark.parametrize("suite", sealing.SUITES)
def test_vector_is_rebuilt_byte_for_byte(suite: str) -> None:
    want = V["suites"][suite]
    assert build(suite, bytes.fromhex(want["wrap_hex"])) == want


@pytest.mark.parametrize("suite", sealing.SUITES)
def test_vector_opens_with_the_destination_key(suite: str) -> None:
    want = V["suites"][suite]
    priv = sealing.parse_seal_secret(want["seal_secret"])
    assert priv.public.string == want["seal_key"]
    env = open_envelope(
        bytes.fromhex(want["header_bytes_hex"]),
        bytes.fromhex(want["signature_hex"]),
        bytes.fromhex(want["payload_hex"]),
    )
    check_payload(env)  # size and sha256 cover the ciphertext: any hop can check them
    verify_envelope(env, private_key_from_seed(A_SEED).public_key())
    info = env.header.seal
    assert info is not None and info.key == want["seal_key_id"] and info.suite == suite
    dek = sealing.unwrap_dek(priv, info, "a.test", "b.test")
    assert dek == DEK
    inner = sealing.open_body(
        info=info, dek=dek, payload=env.payload, env_id=ENV_ID, origin="a.test", dest="b.test"
    )
    assert inner.hex() == V["inner_hex"]
    assert sealing.body_of(inner).decode() == V["body_utf8"]
    assert sealing.proves(inner, info)
    assert BODY not in env.payload and BODY not in env.header_bytes


@pytest.mark.parametrize("suite", sealing.SUITES)
def test_vector_wrap_refuses_another_destination(suite: str) -> None:
    want = V["suites"][suite]
    env = decode_header(bytes.fromhex(want["header_bytes_hex"]))
    assert env.seal is not None
    with pytest.raises(ItemRejected) as e:  # the wrap is bound to (origin, dest)
        sealing.unwrap_dek(b_key(suite), env.seal, "a.test", "c.test")
    assert e.value.result == "rejected:unseal"


if __name__ == "__main__":
    PATH.write_text(json.dumps(generate(), ensure_ascii=False, indent=1) + "\n", "utf-8")
    sys.stdout.write(f"wrote {PATH}\n")
