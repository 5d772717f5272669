"""Tables for relay.protocol.certificate: certificate framing and refusals."""

from __future__ import annotations

from typing import Any

import pytest

from relay.errors import MalformedError
from relay.protocol.certificate import Certificate, open_certificate, sign_certificate
from relay.protocol.sealing import CLASSIC, seal_secret
from relay.protocol.strict import pack
from tests.protocol.wire import (
    A_KEY,
    DROP,
    V,
    mutated,
)

# --- certificates ---------------------------------------------------------------

SEAL_KEY = seal_secret(CLASSIC, bytes(range(1, 33))).public.string

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
    pytest.param({"seal_keys": []}, "seal_keys: expected 1..4", id="seal-keys-empty"),
    pytest.param({"seal_keys": [SEAL_KEY] * 2}, "seal_keys: expected 1..4", id="seal-keys-dup"),
    pytest.param({"seal_keys": ["x25519:AA"]}, r"seal_keys\[0\]:", id="seal-keys-bad"),
    pytest.param({"seal_keys": SEAL_KEY}, "seal_keys: expected an array", id="seal-keys-str"),
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


def test_a_certificate_may_carry_the_node_s_seal_keys() -> None:
    plain = Certificate("n.test", tuple(CERT_BASE["keys"]), "RU", "http://n.test", 1, 2, "x")
    sealed = Certificate(
        "n.test", tuple(CERT_BASE["keys"]), "RU", "http://n.test", 1, 2, "x", seal_keys=(SEAL_KEY,)
    )
    got, cert_bytes, _ = open_certificate(sign_certificate(sealed, A_KEY))
    assert got == sealed and b"seal_keys" in cert_bytes
    # without seal keys the bytes are those of a v1 certificate: no seal_keys key at all
    _, plain_bytes, _ = open_certificate(sign_certificate(plain, A_KEY))
    assert b"seal_keys" not in plain_bytes
