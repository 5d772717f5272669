"""tests/protocol/hpke_ref.py against RFC 9180 Appendix A.1 and against `cryptography`.

A.1 is DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-128-GCM, base mode: the
KEM and KDF of relay's `x25519` seal suite; the suite's AEAD is AES-256-GCM,
which differs only in the AEAD id and key length (the RFC has no X25519
vector for it), so that combination is checked by `cryptography` opening it
(its single-shot API has no aad, so only the empty aad relay uses is).
"""

from __future__ import annotations

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric import x25519

from tests.protocol import hpke_ref

# RFC 9180 Appendix A.1.1 (published values)
A1 = {
    "info": "4f6465206f6e2061204772656369616e2055726e",
    "ikmE": "7268600d403fce431561aef583ee1613527cff655c1343f29812e66706df3234",
    "pkEm": "37fda3567bdbd628e88668c3c8d7e97d1d1253b6d4ea6d44c150f741f1bf4431",
    "skEm": "52c4a758a802cd8b936eceea314432798d5baf2d7e9235dc084ab1b9cfa2f736",
    "ikmR": "6db9df30aa07dd42ee5e8181afdb977e538f5e1fec8a06223f33f7013e525037",
    "pkRm": "3948cfe0ad1ddb695d780e59077195da6c56506b027329794ab02bca80815c4d",
    "skRm": "4612c550263fc8ad58375df3f557aac531d26850903e55a9f23f21d8534e8ac8",
    "enc": "37fda3567bdbd628e88668c3c8d7e97d1d1253b6d4ea6d44c150f741f1bf4431",
    "shared_secret": "fe0e18c9f024ce43799ae393c7e8fe8fce9d218875e8227b0187c04e7d2ea1fc",
    "key_schedule_context": "00725611c9d98c07c03f60095cd32d400d8347d45ed67097bbad50fc56da742d07"
    "cb6cffde367bb0565ba28bb02c90744a20f5ef37f30523526106f637abb05449",
    "secret": "12fff91991e93b48de37e7daddb52981084bd8aa64289c3788471d9a9712f397",
    "key": "4531685d41d65f03dc48f6b8302c05b0",
    "base_nonce": "56d890e5accaaf011cff4b7d",
    "exporter_secret": "45ff1c2e220db587171952c0592d5f5ebe103f1561a2614e38f2ffd47e99e3f8",
    # encryption sequence number 0
    "pt": "4265617574792069732074727574682c20747275746820626561757479",
    "aad": "436f756e742d30",
    "ct": "f938558b5d72f1a23810b4be2ab4f84331acc02fc97babc53a52ae8218a355a96d8770ac83d0"
    "7bea87e13c512a",
}


def h(name: str) -> bytes:
    return bytes.fromhex(A1[name])


def a1_sealed(aead: int = hpke_ref.AEAD_AES_128_GCM) -> hpke_ref.Sealed:
    return hpke_ref.seal(
        pk_r=h("pkRm"), sk_e=h("skEm"), info=h("info"), aad=h("aad"), plaintext=h("pt"), aead=aead
    )


def test_derive_key_pair_matches_appendix_a1() -> None:
    assert hpke_ref.derive_key_pair(h("ikmE")) == (h("skEm"), h("pkEm"))
    assert hpke_ref.derive_key_pair(h("ikmR")) == (h("skRm"), h("pkRm"))


@pytest.mark.parametrize(
    "field",
    [
        "enc",
        "shared_secret",
        "key_schedule_context",
        "secret",
        "key",
        "base_nonce",
        "exporter_secret",
    ],
)
def test_every_intermediate_value_matches_appendix_a1(field: str) -> None:
    assert getattr(a1_sealed(), field).hex() == A1[field]


def test_the_first_encryption_matches_appendix_a1() -> None:
    assert a1_sealed().ciphertext.hex() == A1["ct"]


@pytest.mark.parametrize("aead", [hpke_ref.AEAD_AES_128_GCM, hpke_ref.AEAD_AES_256_GCM])
def test_cryptography_opens_what_the_reference_seals(aead: int) -> None:
    cipher = {
        hpke_ref.AEAD_AES_128_GCM: hpke.AEAD.AES_128_GCM,
        hpke_ref.AEAD_AES_256_GCM: hpke.AEAD.AES_256_GCM,
    }[aead]
    suite = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, cipher)
    sk_r = x25519.X25519PrivateKey.from_private_bytes(h("skRm"))
    # cryptography's single-shot API takes no aad: it seals and opens with an empty one,
    # as relay's wrap does
    sealed = hpke_ref.seal(
        pk_r=h("pkRm"), sk_e=h("skEm"), info=h("info"), aad=b"", plaintext=h("pt"), aead=aead
    )
    assert len(sealed.key) == (16 if aead == hpke_ref.AEAD_AES_128_GCM else 32)
    assert suite.decrypt(sealed.single_shot, sk_r, info=h("info")) == h("pt")
    with pytest.raises(InvalidTag):  # a different info (the context binding) does not open
        suite.decrypt(sealed.single_shot, sk_r, info=h("info") + b"!")


def test_aes_256_gcm_differs_from_aes_128_gcm_only_past_the_kem() -> None:
    a, b = a1_sealed(hpke_ref.AEAD_AES_128_GCM), a1_sealed(hpke_ref.AEAD_AES_256_GCM)
    assert a.enc == b.enc and a.shared_secret == b.shared_secret  # the KEM has no AEAD in it
    assert a.key_schedule_context != b.key_schedule_context  # the suite id differs
    assert a.ciphertext != b.ciphertext
