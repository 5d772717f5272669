"""Golden vectors for sealed envelopes (tests/vectors/relay-seal-v1.json, protocol §21).

Fixed keys and randomness: `a.test` signs with RFC 8032 test key 1 (as in
relay-v1.json), `b.test` holds one seal key per suite built from fixed bytes,
and the salt and data key are fixed. Everything after the HPKE wrap is then
deterministic and rebuilt byte for byte.

The `x25519` wrap is reproducible too: it is HPKE base mode with the fixed
ephemeral secret `c0..df`, computed by the test-only RFC 9180 sender in
tests/protocol/hpke_ref.py (checked against RFC 9180 Appendix A.1), and the
file lists its intermediate values. The `mlkem768x25519` wrap is a recorded
output of `cryptography`, which draws the ML-KEM encapsulation randomness
itself and offers no way to fix it; reproducing it would take a test-only
ML-KEM-768 (FIPS 203) and X-Wing implementation. The test opens it with
b.test's key and gets the fixed data key back.

`python -m tests.protocol.test_seal_vectors` rewrites the file; it keeps the
recorded hybrid wrap that is there (a new one only if there is none).
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
from tests.protocol import hpke_ref

PATH = Path(__file__).parent.parent / "vectors" / "relay-seal-v1.json"
A_SEED = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
ENV_ID = bytes(range(16))
SALT = bytes(range(0x40, 0x60))
DEK = bytes(range(0x80, 0xA0))
BODY = "привет, Алматы".encode()
EPHEMERAL = bytes(range(0xC0, 0xE0))  # the x25519 wrap's fixed HPKE ephemeral secret
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


def classic_wrap() -> tuple[bytes, dict[str, str]]:
    """The x25519 suite's wrap from the fixed ephemeral secret, and the values an
    implementer checks on the way (protocol §21 "Reproducing the x25519 wrap")."""
    pub = b_key(sealing.CLASSIC).public
    info = b"relay-seal-v1 wrap\x00x25519\x00a.test\x00b.test\x00" + pub.key_id.encode()
    done = hpke_ref.seal(
        pk_r=pub.raw, sk_e=EPHEMERAL, info=info, aad=b"", plaintext=DEK,
        aead=hpke_ref.AEAD_AES_256_GCM,
    )  # fmt: skip
    return done.single_shot, {
        "hpke_ephemeral_secret_hex": EPHEMERAL.hex(),
        "hpke_info_hex": info.hex(),
        "hpke_enc_hex": done.enc.hex(),
        "hpke_shared_secret_hex": done.shared_secret.hex(),
        "hpke_key_hex": done.key.hex(),
        "hpke_base_nonce_hex": done.base_nonce.hex(),
    }


def expected(suite: str, wrap: bytes) -> dict[str, str]:
    """What the file holds for `suite` given its wrap."""
    if suite == sealing.CLASSIC:
        return {**build(suite, wrap), **classic_wrap()[1]}
    return build(suite, wrap)


def generate() -> dict[str, Any]:
    out: dict[str, Any] = {
        "about": "Sealed envelopes (docs/protocol.md §21). Rebuilt by "
        "tests/protocol/test_seal_vectors.py. The x25519 wrap is HPKE with the fixed "
        "ephemeral secret hpke_ephemeral_secret_hex; the mlkem768x25519 wrap is a recorded "
        "HPKE output.",
        "origin_seed_hex": A_SEED.hex(),
        "id_hex": ENV_ID.hex(),
        "salt_hex": SALT.hex(),
        "dek_hex": DEK.hex(),
        "body_utf8": BODY.decode(),
        "inner_hex": (SALT + BODY).hex(),
        "suites": {},
    }
    for suite in sealing.SUITES:
        if suite == sealing.CLASSIC:
            wrap = classic_wrap()[0]
        elif recorded := V["suites"].get(suite, {}).get("wrap_hex"):
            wrap = bytes.fromhex(recorded)
        else:
            wrap = sealing.wrap_dek(b_key(suite).public, DEK, "a.test", "b.test")
        out["suites"][suite] = expected(suite, wrap)
    return out


V: Any = json.loads(PATH.read_text("utf-8")) if PATH.exists() else {"suites": {}}


@pytest.mark.parametrize("suite", sealing.SUITES)
def test_vector_is_rebuilt_byte_for_byte(suite: str) -> None:
    want = V["suites"][suite]
    assert expected(suite, bytes.fromhex(want["wrap_hex"])) == want


def test_the_x25519_vector_is_reproduced_from_start_to_finish() -> None:
    """No recorded output left: the wrap too comes from the fixed inputs."""
    wrap, hpke_values = classic_wrap()
    assert V["suites"][sealing.CLASSIC] == {**build(sealing.CLASSIC, wrap), **hpke_values}
    assert wrap[:32] == bytes.fromhex(hpke_values["hpke_enc_hex"])
    assert len(wrap) == sealing.WRAP_SIZE[sealing.CLASSIC]
    # relay's own wrap (cryptography, a random ephemeral key) differs, yet both open alike
    info = decode_header(bytes.fromhex(V["suites"][sealing.CLASSIC]["header_bytes_hex"])).seal
    assert info is not None and info.wrap == wrap
    assert sealing.unwrap_dek(b_key(sealing.CLASSIC), info, "a.test", "b.test") == DEK


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
