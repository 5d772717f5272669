"""relay.protocol.sealing: seal keys, the header's `seal` map, seal and open (protocol §21)."""

from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import Any

import pytest

from relay.errors import ItemRejected, MalformedError
from relay.protocol import sealing
from relay.protocol.envelope import check_header, decode_header, encode_header, make_header
from relay.protocol.strict import pack, strict_unpack

ENV_ID = bytes(range(16))
HYBRID_KEY = sealing.seal_secret(sealing.HYBRID, bytes(range(96)))
CLASSIC_KEY = sealing.seal_secret(sealing.CLASSIC, bytes(range(100, 132)))
OTHER_KEY = sealing.seal_secret(sealing.CLASSIC, bytes(range(1, 33)))


def sealed(
    priv: sealing.SealPrivateKey, body: bytes = b"secret", dest: str = "b.test"
) -> tuple[sealing.SealInfo, bytes, bytes]:
    dek = os.urandom(32)
    wrap = sealing.wrap_dek(priv.public, dek, "a.test", dest)
    info, ct = sealing.seal_body(
        body=body,
        salt=os.urandom(32),
        dek=dek,
        wrap=wrap,
        pub=priv.public,
        env_id=ENV_ID,
        origin="a.test",
        dest=dest,
    )
    return info, ct, dek


# --- keys -------------------------------------------------------------------------


@pytest.mark.parametrize("priv", [HYBRID_KEY, CLASSIC_KEY], ids=["hybrid", "classic"])
def test_key_strings_round_trip(priv: sealing.SealPrivateKey) -> None:
    pub = sealing.parse_seal_key(priv.public.string)
    assert pub.raw == priv.public.raw and pub.key_id == priv.public.key_id
    assert pub.string.startswith(priv.suite + ":") and "=" not in pub.string
    again = sealing.parse_seal_secret(priv.string + "\n")
    assert again.public.string == priv.public.string


CLASSIC_B64 = CLASSIC_KEY.public.string.split(":", 1)[1]
BAD_KEYS = [
    (42, "expected a string"),
    ("ed25519:" + CLASSIC_B64, "must start with one of"),
    ("x25519-secret:" + CLASSIC_B64, "must start with one of"),
    ("x25519:" + CLASSIC_B64 + "=", "without '=' padding"),
    ("x25519:" + CLASSIC_B64[:-1], "expected 32 bytes"),
    ("x25519:" + CLASSIC_B64[:-1] + "B", "non-canonical base64"),
    ("x25519:" + "A" * 43, "not a valid public key"),  # the zero point: low order
    ("x25519:" + CLASSIC_B64[:-2] + "!!", "base64 without"),
    ("mlkem768x25519:" + CLASSIC_B64, "expected 1216 bytes"),
]


@pytest.mark.parametrize(("text", "why"), BAD_KEYS)
def test_bad_key_strings_are_refused(text: object, why: str) -> None:
    with pytest.raises(MalformedError, match=why):
        sealing.parse_seal_key(text)


def test_bad_secrets_are_refused() -> None:
    with pytest.raises(MalformedError, match="must start with"):
        sealing.parse_seal_secret(CLASSIC_KEY.public.string)
    with pytest.raises(MalformedError, match="expected 96 bytes"):
        sealing.parse_seal_secret("mlkem768x25519-secret:" + CLASSIC_B64)
    with pytest.raises(MalformedError, match="unknown suite"):
        sealing.seal_secret("rsa", b"")


# --- the header's seal map ----------------------------------------------------------


def header_with(info: sealing.SealInfo | None, kind: str = "message") -> bytes:
    receipt = kind == "receipt"
    h = make_header(
        id=ENV_ID,
        kind=kind,
        origin="a.test",
        key_id="11qYAYKx",
        sender="postmaster@a.test" if receipt else "alice@a.test",
        to=["postmaster@b.test" if receipt else "bob@b.test"],
        dest="b.test",
        created=1795600000000,
        expires=1795686400000,
        residency=["RU"],
        ctype="application/vnd.relay.receipt+msgpack" if receipt else "text/plain",
        payload=b"ciphertext",
    )
    return encode_header(dataclasses.replace(h, seal=info))


def test_sealed_header_round_trips() -> None:
    info, _, _ = sealed(HYBRID_KEY)
    data = header_with(info)
    h = decode_header(data)
    assert h.seal == info
    assert encode_header(h) == data
    m = strict_unpack(data, "t")
    assert isinstance(m, dict) and list(m)[-1] == "seal"  # after the fifteen v1 keys
    assert decode_header(header_with(None)).seal is None


def replace_seal(data: bytes, **changes: object) -> bytes:
    m = strict_unpack(data, "t")
    assert isinstance(m, dict)
    seal_map = dict(m["seal"])
    for k, v in changes.items():
        if v is None:
            del seal_map[k]
        else:
            seal_map[k] = v
    m["seal"] = seal_map
    return pack(m)


GOOD = sealed(CLASSIC_KEY)[0]
BAD_MAPS = [
    ({"v": 2}, "seal version 2 is not supported"),
    ({"suite": "rsa"}, "is not one of"),
    ({"suite": sealing.HYBRID}, "wrap"),  # a classic-sized wrap under the hybrid suite
    ({"key": ""}, "1..64"),
    ({"wrap": b"short"}, "wrap"),
    ({"commit": b"\x00" * 31}, "commit"),
    ({"commit": None}, "commit"),
    ({"extra": 1}, "extra"),
    ({"key": b"bin"}, "key"),
]


@pytest.mark.parametrize(("changes", "why"), BAD_MAPS)
def test_bad_seal_maps_are_malformed(changes: dict[str, object], why: str) -> None:
    with pytest.raises(MalformedError, match=why):
        decode_header(replace_seal(header_with(GOOD), **changes))


# SealInfo values wrong in one way each, with what the error names.
BAD_SEALS = [
    ({"v": 2}, "header: seal: v: seal version 2 is not supported (expected 1)"),
    ({"v": True}, "header: seal: v: expected int, got bool"),
    ({"suite": "rsa"}, "header: seal: suite: 'rsa' is not one of mlkem768x25519, x25519"),
    ({"suite": b"x25519"}, "header: seal: suite: expected str, got bin"),
    ({"suite": sealing.HYBRID}, "header: seal: wrap: expected 1168 bytes, got 80"),
    ({"key": ""}, "header: seal: key: the key id must be 1..64 characters"),
    ({"key": "k" * 65}, "header: seal: key: the key id must be 1..64 characters"),
    ({"key": 7}, "header: seal: key: expected str, got int"),
    ({"wrap": b"short"}, "header: seal: wrap: expected 80 bytes, got 5"),
    ({"wrap": bytearray(80)}, "header: seal: wrap: expected bin, got ext"),
    ({"commit": bytes(31)}, "header: seal: commit: expected 32 bytes, got 31"),
    ({"commit": "c" * 32}, "header: seal: commit: expected bin, got str"),
]


@pytest.mark.parametrize(("changes", "error"), BAD_SEALS)
def test_sealing_a_header_checks_its_seal_as_a_peer_decodes_it(
    changes: dict[str, Any], error: str
) -> None:
    bad = dataclasses.replace(GOOD, **changes)
    for check in (
        sealing.check_seal,
        lambda s: sealing.decode_seal_map(sealing.seal_map(s)),
        lambda s: check_header(dataclasses.replace(decode_header(header_with(None)), seal=s)),
    ):
        with pytest.raises(MalformedError) as e:
            check(bad)
        assert e.value.detail == error
    if type(changes.get("wrap")) is not bytearray:  # packs as bin: refused as ill-typed
        with pytest.raises(MalformedError):  # the bytes a peer would get, refused too
            decode_header(header_with(bad))


def test_a_good_seal_passes_the_check_unchanged() -> None:
    assert sealing.check_seal(GOOD) is GOOD
    h = dataclasses.replace(decode_header(header_with(None)), seal=GOOD)
    assert check_header(h) is h


def test_seal_is_not_a_map() -> None:
    m = strict_unpack(header_with(GOOD), "t")
    assert isinstance(m, dict)
    m["seal"] = [1]
    with pytest.raises(MalformedError, match="seal: expected a map"):
        decode_header(pack(m))


def test_receipts_are_never_sealed() -> None:
    with pytest.raises(MalformedError, match="a receipt is never sealed"):
        decode_header(header_with(GOOD, kind="receipt"))


# --- seal and open ---------------------------------------------------------------------


@pytest.mark.parametrize("priv", [HYBRID_KEY, CLASSIC_KEY], ids=["hybrid", "classic"])
def test_open_gives_back_the_body(priv: sealing.SealPrivateKey) -> None:
    info, ct, dek = sealed(priv, b"the body")
    assert b"the body" not in ct
    assert len(ct) == sealing.SALT_SIZE + len(b"the body") + 16
    got = sealing.unwrap_dek(priv, info, "a.test", "b.test")
    assert got == dek
    inner = sealing.open_body(
        info=info, dek=got, payload=ct, env_id=ENV_ID, origin="a.test", dest="b.test"
    )
    assert sealing.body_of(inner) == b"the body" and sealing.proves(inner, info)


def test_the_same_body_seals_differently() -> None:
    a, ct_a, _ = sealed(CLASSIC_KEY, b"yes")
    b, ct_b, _ = sealed(CLASSIC_KEY, b"yes")
    assert a.commit != b.commit and ct_a != ct_b  # the salt hides a guessable body


def unseal(
    info: sealing.SealInfo,
    ct: bytes,
    dek: bytes,
    env_id: bytes = ENV_ID,
    origin: str = "a.test",
    dest: str = "b.test",
) -> bytes:
    return sealing.open_body(
        info=info, dek=dek, payload=ct, env_id=env_id, origin=origin, dest=dest
    )


def test_tampered_ciphertext_does_not_open() -> None:
    info, ct, dek = sealed(CLASSIC_KEY)
    flipped = bytes([ct[0] ^ 1]) + ct[1:]
    with pytest.raises(ItemRejected) as e:
        unseal(info, flipped, dek)
    assert e.value.result == "rejected:unseal"


def test_ciphertext_is_bound_to_its_envelope() -> None:
    info, ct, dek = sealed(CLASSIC_KEY)
    with pytest.raises(ItemRejected, match="does not open"):
        unseal(info, ct, dek, origin="c.test")
    with pytest.raises(ItemRejected, match="does not open"):
        unseal(info, ct, dek, dest="c.test")
    with pytest.raises(ItemRejected, match="does not open"):
        unseal(info, ct, dek, env_id=bytes(16))


def test_a_changed_commit_does_not_open() -> None:
    info, ct, dek = sealed(CLASSIC_KEY)
    other = dataclasses.replace(info, commit=bytes(32))
    with pytest.raises(ItemRejected, match="does not open"):
        unseal(other, ct, dek)


def test_a_wrap_for_another_key_does_not_open() -> None:
    info, _, _ = sealed(CLASSIC_KEY)
    with pytest.raises(ItemRejected, match="does not open with seal key"):
        sealing.unwrap_dek(OTHER_KEY, info, "a.test", "b.test")
    with pytest.raises(ItemRejected, match="is a mlkem768x25519 key"):
        sealing.unwrap_dek(HYBRID_KEY, info, "a.test", "b.test")


def test_bad_inputs_to_seal_are_refused() -> None:
    pub = CLASSIC_KEY.public
    with pytest.raises(MalformedError, match="data key"):
        sealing.wrap_dek(pub, b"short", "a.test", "b.test")
    for salt, wrap, why in ((b"", bytes(80), "salt"), (bytes(32), b"", "wrap")):
        with pytest.raises(MalformedError, match=why):
            sealing.seal_body(
                body=b"",
                salt=salt,
                dek=bytes(32),
                wrap=wrap,
                pub=pub,
                env_id=ENV_ID,
                origin="a.test",
                dest="b.test",
            )


def test_a_payload_sealed_under_a_false_commit_is_refused() -> None:
    # an origin that seals `inner` under a commit that is not sha256(inner):
    # it opens, but it proves nothing, so it is refused
    info, _, dek = sealed(CLASSIC_KEY)
    inner = os.urandom(sealing.SALT_SIZE) + b"body"
    ct = sealing._envelope_key(dek, ENV_ID, "a.test", "b.test").encrypt(
        bytes(12), inner, info.commit
    )
    with pytest.raises(ItemRejected, match="does not match its commit") as e:
        unseal(info, ct, dek)
    assert e.value.result == "rejected:unseal"


def test_a_payload_without_its_salt_is_refused() -> None:
    info, _, dek = sealed(CLASSIC_KEY)
    inner = bytes(sealing.SALT_SIZE - 1)  # committed to honestly, but shorter than a salt
    info = dataclasses.replace(info, commit=hashlib.sha256(inner).digest())
    ct = sealing._envelope_key(dek, ENV_ID, "a.test", "b.test").encrypt(
        bytes(12), inner, info.commit
    )
    with pytest.raises(ItemRejected, match="does not match its commit"):
        unseal(info, ct, dek)
