"""Certificate validation (relay.policy.certs) and trust lookups (relay.policy.trust).

Certificates are signed here with fixed seeds, so every blob is a stable
vector; the clock is a plain integer the tests move by hand.
"""

from __future__ import annotations

import asyncio
import base64
import os
import time
from pathlib import Path

import msgpack
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from relay.config.keys import generate_key_file
from relay.config.model import DAY_MS, Config, TrustConfig
from relay.config.parse import parse_config
from relay.errors import MalformedError
from relay.policy import certfiles
from relay.policy.certfiles import (
    CertFile,
    Signature,
    StoreFiles,
    read_store,
    read_store_if_changed,
    watch_store,
)
from relay.policy.certs import (
    TrustedAuthority,
    decode_line,
    encode_line,
    fingerprint,
    in_force,
    judge,
    parse_revoked,
    time_fault,
)
from relay.policy.trust import MAX_LEARNED_PER_NAME, Trust
from relay.protocol.certificate import (
    CERT_DOMAIN,
    Certificate,
    encode_certificate,
    sign_certificate,
)
from relay.protocol.keystr import key_id, private_key_from_seed, public_key_string

NOW = 1_800_000_000_000
AUTHORITY = private_key_from_seed(bytes([7]) * 32)
AUTHORITY_KEY = public_key_string(AUTHORITY.public_key())
IMPOSTOR = private_key_from_seed(bytes([8]) * 32)
NODE_KEY = public_key_string(private_key_from_seed(bytes([9]) * 32).public_key())
PINNED_KEY = public_key_string(private_key_from_seed(bytes([10]) * 32).public_key())
AUTHORITIES = {
    "reg.test": TrustedAuthority("reg.test", AUTHORITY.public_key(), frozenset({"BY", "RU"}))
}


def make_cert(
    name: str = "c.test",
    *,
    jurisdiction: str = "RU",
    authority: str = "reg.test",
    not_before: int = NOW - DAY_MS,
    not_after: int = NOW + DAY_MS,
    url: str = "http://127.0.0.1:9003",
    signer: Ed25519PrivateKey = AUTHORITY,
    keys: tuple[str, ...] = (NODE_KEY,),
    seal_keys: tuple[str, ...] = (),
) -> bytes:
    return sign_certificate(
        Certificate(
            name, keys, jurisdiction, url, not_before, not_after, authority, seal_keys=seal_keys
        ),
        signer,
    )


def fp(blob: bytes) -> str:
    cert_bytes = msgpack.unpackb(blob)[0]
    assert isinstance(cert_bytes, bytes)
    return fingerprint(cert_bytes)


# --- relay.policy.certs: judge ----------------------------------------------------------------


def test_a_good_certificate_is_accepted() -> None:
    blob = make_cert()
    v = judge(blob, AUTHORITIES, frozenset())
    assert v.ok and v.reason == ""
    assert v.cert is not None and (v.cert.name, v.cert.jurisdiction) == ("c.test", "RU")
    assert v.fingerprint == fp(blob) and len(v.fingerprint) == 64


def test_the_signature_covers_the_domain_and_the_exact_bytes() -> None:
    blob = make_cert()
    cert_bytes, signature = msgpack.unpackb(blob)
    AUTHORITY.public_key().verify(signature, CERT_DOMAIN + cert_bytes)
    assert cert_bytes == encode_certificate(
        Certificate(
            "c.test",
            (NODE_KEY,),
            "RU",
            "http://127.0.0.1:9003",
            NOW - DAY_MS,
            NOW + DAY_MS,
            "reg.test",
        )
    )


@pytest.mark.parametrize(
    ("blob", "reason"),
    [
        (make_cert(authority="other.test"), "authority 'other.test' is not trusted here"),
        (make_cert(signer=IMPOSTOR), "signature does not verify"),
        (make_cert(jurisdiction="KZ"), "may not attest KZ (only BY, RU)"),
        (b"\x92\xc4\x01x\xc4\x01y", "not a certificate"),
        (b"", "not a certificate"),
    ],
    ids=["unknown authority", "forged", "jurisdiction not attested", "bad shape", "empty"],
)
def test_refused_certificates_say_why(blob: bytes, reason: str) -> None:
    v = judge(blob, AUTHORITIES, frozenset())
    assert not v.ok and v.cert is None
    assert reason in v.reason


def test_tampered_cert_bytes_do_not_verify() -> None:
    cert_bytes, signature = msgpack.unpackb(make_cert())
    tampered = cert_bytes.replace(b"c.test", b"d.test")
    blob = msgpack.packb([tampered, signature], use_bin_type=True)
    v = judge(blob, AUTHORITIES, frozenset())
    assert not v.ok and "signature does not verify" in v.reason


def test_a_revoked_certificate_is_refused() -> None:
    blob = make_cert()
    v = judge(blob, AUTHORITIES, frozenset({fp(blob)}))
    assert not v.ok and v.reason.endswith("revoked")


@pytest.mark.parametrize(
    ("now", "valid", "fault"),
    [
        (NOW - DAY_MS - 1, False, "not valid before"),
        (NOW - DAY_MS, True, ""),
        (NOW, True, ""),
        (NOW + DAY_MS, True, ""),
        (NOW + DAY_MS + 1, False, "expired at"),
    ],
)
def test_validity_window_includes_both_ends(now: int, valid: bool, fault: str) -> None:
    v = judge(make_cert(), AUTHORITIES, frozenset())
    assert v.cert is not None
    assert in_force(v.cert, now) is valid
    assert (time_fault(v.cert, now) != "") is not valid
    assert fault in time_fault(v.cert, now)


# --- relay.policy.certs: file formats ----------------------------------------------------------


def test_certificate_lines_round_trip() -> None:
    blob = make_cert()
    line = encode_line(blob)
    assert line == base64.b64encode(blob).decode() and "\n" not in line
    assert decode_line(f"  {line}\n") == blob


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("not base64 at all!", "not standard base64"),
        (base64.b64encode(b"\x93\x01\x02\x03").decode(), "certificate"),
        ("A" * 20_000, "over"),
    ],
)
def test_bad_certificate_lines(line: str, reason: str) -> None:
    with pytest.raises(MalformedError) as info:
        decode_line(line)
    assert reason in info.value.detail


def test_revocation_list_takes_fingerprints_and_certificate_lines() -> None:
    by_fp, by_line = make_cert("a.test"), make_cert("b.test")
    text = (
        "# revoked by the registry\n"
        f"{fp(by_fp)}\n"
        "\n"
        f"   {encode_line(by_line)}   \n"
        "not-a-fingerprint\n"
        f"{fp(by_fp).upper()}\n"
    )
    revoked, bad = parse_revoked(text)
    assert revoked == {fp(by_fp), fp(by_line)}
    assert [line for line, _ in bad] == [5, 6]
    assert all("neither a fingerprint" in reason for _, reason in bad)


# --- relay.policy.trust ---------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> int:
        return self.now


def node_config(tmp_path: Path, extra: str = "", *, authorities: bool = True) -> Config:
    key = tmp_path / "node.key"
    if not key.exists():
        generate_key_file(key)
    text = '[node]\nname = "a.test"\njurisdiction = "RU"\nlisten = "127.0.0.1:0"\n'
    text += 'key_file = "node.key"\n'
    if authorities:
        text += (
            f'[[authorities]]\nname = "reg.test"\nkey = "{AUTHORITY_KEY}"\n'
            'jurisdictions = ["RU", "BY"]\n'
        )
    return parse_config(text + extra, tmp_path / "node.toml")


def store(tmp_path: Path, name: str, *blobs: bytes) -> None:
    certs = tmp_path / "certs"
    certs.mkdir(exist_ok=True)
    (certs / name).write_text("".join(encode_line(b) + "\n" for b in blobs))


def test_a_certified_node_is_trusted_with_its_keys_url_and_jurisdiction(tmp_path: Path) -> None:
    blob = make_cert()
    store(tmp_path, "c.cert", blob)
    trust = Trust(node_config(tmp_path), clock=Clock())
    node = trust.node("c.test")
    assert node is not None
    assert (node.name, node.jurisdiction, node.url, node.source) == (
        "c.test",
        "RU",
        "http://127.0.0.1:9003",
        "certificate",
    )
    assert set(node.keys) == {key_id(NODE_KEY)}
    assert node.certificate == blob and node.not_after == NOW + DAY_MS
    assert trust.jurisdiction("c.test") == "RU"
    assert trust.certificate_for("c.test") == blob
    assert trust.names() == ["c.test"]
    assert trust.why_untrusted("c.test") == ""


def test_only_cert_files_are_read(tmp_path: Path) -> None:
    store(tmp_path, "c.cert.bak", make_cert())
    store(tmp_path, "README", make_cert())
    trust = Trust(node_config(tmp_path), clock=Clock())
    assert trust.node("c.test") is None


def test_pinned_config_wins_over_a_certificate(tmp_path: Path) -> None:
    store(tmp_path, "c.cert", make_cert(jurisdiction="BY"))
    pin = f'[[peers]]\nname = "c.test"\njurisdiction = "RU"\nkeys = ["{PINNED_KEY}"]\n'
    trust = Trust(node_config(tmp_path, pin), clock=Clock())
    node = trust.node("c.test")
    assert node is not None and node.source == "pinned"
    assert (node.jurisdiction, node.url, set(node.keys)) == ("RU", None, {key_id(PINNED_KEY)})
    certified = trust.certified("c.test")
    assert certified is not None and certified.jurisdiction == "BY"


def test_without_authorities_no_certificate_counts(tmp_path: Path) -> None:
    store(tmp_path, "c.cert", make_cert())
    trust = Trust(node_config(tmp_path, authorities=False), clock=Clock())
    assert trust.node("c.test") is None and not trust.has_authorities
    assert "not trusted here" in trust.why_untrusted("c.test")


def test_an_expired_certificate_stops_counting_at_once(tmp_path: Path) -> None:
    store(tmp_path, "c.cert", make_cert())
    clock = Clock()
    trust = Trust(node_config(tmp_path), clock=clock)
    clock.now = NOW + DAY_MS
    assert trust.node("c.test") is not None
    clock.now = NOW + DAY_MS + 1
    assert trust.node("c.test") is None
    assert "expired at" in trust.why_untrusted("c.test")


def test_not_yet_valid_certificate_does_not_count(tmp_path: Path) -> None:
    store(tmp_path, "c.cert", make_cert(not_before=NOW + 1))
    trust = Trust(node_config(tmp_path), clock=Clock())
    assert trust.node("c.test") is None
    assert "not valid before" in trust.why_untrusted("c.test")


def test_the_certificate_valid_longest_is_used(tmp_path: Path) -> None:
    short = make_cert(url="http://short.example", not_after=NOW + 10)
    long = make_cert(url="http://long.example", not_after=NOW + 5 * DAY_MS)
    store(tmp_path, "c.cert", short, long)
    trust = Trust(node_config(tmp_path), clock=Clock())
    node = trust.node("c.test")
    assert node is not None and node.url == "http://long.example"


@pytest.mark.parametrize("form", ["fingerprint", "line"])
def test_revocation_file_refuses_a_certificate(tmp_path: Path, form: str) -> None:
    blob = make_cert()
    store(tmp_path, "c.cert", blob)
    (tmp_path / "revoked.txt").write_text(
        (fp(blob) if form == "fingerprint" else encode_line(blob)) + "\n"
    )
    trust = Trust(node_config(tmp_path), clock=Clock())
    assert trust.node("c.test") is None
    assert "revoked" in trust.why_untrusted("c.test")


def test_a_revocation_added_later_applies_to_held_certificates(tmp_path: Path) -> None:
    blob = make_cert()
    trust = Trust(node_config(tmp_path), clock=Clock())
    assert trust.learn([blob]) == [blob]
    assert trust.node("c.test") is not None
    (tmp_path / "revoked.txt").write_text(fp(blob) + "\n")
    trust.use_store(read_store(trust.store_config))
    assert trust.node("c.test") is None
    assert "revoked" in trust.why_untrusted("c.test")


def test_an_unreadable_revocation_list_fails_closed(tmp_path: Path) -> None:
    store(tmp_path, "c.cert", make_cert())
    trust = Trust(node_config(tmp_path), clock=Clock())
    assert trust.node("c.test") is not None
    (tmp_path / "revoked.txt").write_text("garbage line\n")
    trust.use_store(read_store(trust.store_config))
    assert trust.node("c.test") is None
    assert "revoked.txt:1" in trust.why_untrusted("c.test")


def test_new_files_in_the_store_are_picked_up(tmp_path: Path) -> None:
    trust = Trust(node_config(tmp_path), clock=Clock())
    assert trust.node("c.test") is None
    store(tmp_path, "c.cert", make_cert())
    trust.use_store(read_store(trust.store_config))
    assert trust.node("c.test") is not None


def test_refused_store_certificates_are_explained(tmp_path: Path) -> None:
    store(tmp_path, "c.cert", make_cert(jurisdiction="KZ"))
    trust = Trust(node_config(tmp_path), clock=Clock())
    assert trust.node("c.test") is None
    why = trust.why_untrusted("c.test")
    assert "c.cert:1" in why and "may not attest KZ" in why


def test_unknown_name_is_explained(tmp_path: Path) -> None:
    trust = Trust(node_config(tmp_path), clock=Clock())
    assert trust.why_untrusted("z.test") == (
        "z.test is not pinned in [[peers]] and no certificate names it"
    )


def test_learn_keeps_only_the_named_origins_valid_certificates(tmp_path: Path) -> None:
    trust = Trust(node_config(tmp_path), clock=Clock())
    good = make_cert()
    other = make_cert("d.test")
    refused = make_cert("c.test", jurisdiction="KZ")
    expired = make_cert(not_before=NOW - 3 * DAY_MS, not_after=NOW - DAY_MS)
    assert trust.learn([other, refused, expired, b"junk", good], name="c.test") == [good]
    assert trust.node("d.test") is None
    assert trust.learn([good], name="c.test") == []  # already known
    assert trust.take_unsaved() == [good]
    assert trust.take_unsaved() == []
    assert trust.learned_blobs() == [good]


def test_learned_certificates_per_name_are_bounded(tmp_path: Path) -> None:
    trust = Trust(node_config(tmp_path), clock=Clock())
    blobs = [make_cert(not_after=NOW + (i + 1) * DAY_MS) for i in range(MAX_LEARNED_PER_NAME + 2)]
    for blob in blobs:
        trust.learn([blob])
    assert len(trust.learned_blobs()) == MAX_LEARNED_PER_NAME
    assert set(trust.learned_blobs()) == set(blobs[2:])  # the shortest-lived made way
    node = trust.node("c.test")
    assert node is not None and node.not_after == NOW + len(blobs) * DAY_MS


def test_a_reloaded_trust_keeps_what_was_learned(tmp_path: Path) -> None:
    config = node_config(tmp_path)
    old = Trust(config, clock=Clock())
    old.learn([make_cert()])
    new = Trust(config, clock=Clock(), learned=old.learned_blobs())
    assert new.node("c.test") is not None
    assert new.take_unsaved() == []  # already persisted by whoever learned it


def test_own_certificates_are_served_as_base64_lines(tmp_path: Path) -> None:
    assert Trust(node_config(tmp_path), clock=Clock()).own_certificate_lines == []
    blob = make_cert("a.test")
    (tmp_path / "node.cert").write_text(encode_line(blob) + "\n")
    config = parse_config(
        '[node]\nname = "a.test"\njurisdiction = "RU"\nlisten = "127.0.0.1:0"\n'
        'key_file = "node.key"\ncertificates = ["node.cert"]\n',
        tmp_path / "node.toml",
    )
    trust = Trust(config, clock=Clock())
    assert trust.own_certificates == (blob,)
    assert trust.own_certificate_lines == [encode_line(blob)]


# --- certificates as data, read at load and by the store watcher ------------------------


def test_lookups_read_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store(tmp_path, "c.cert", make_cert())
    trust = Trust(node_config(tmp_path), clock=Clock())

    def no_io(*args: object, **kwargs: object) -> None:
        raise AssertionError("a lookup touched the disk")

    for name in ("read_text", "glob", "is_file", "exists", "stat"):
        monkeypatch.setattr(Path, name, no_io)
    monkeypatch.setattr(os, "stat", no_io)
    monotonic = time.monotonic() + 3600.0  # long past any rescan interval
    monkeypatch.setattr(time, "monotonic", lambda: monotonic)
    assert trust.node("c.test") is not None
    assert trust.why_untrusted("d.test").startswith("d.test is not pinned")
    assert trust.names() == ["c.test"]


def test_trust_takes_its_certificates_as_data(tmp_path: Path) -> None:
    blob, revoked = make_cert(), make_cert("d.test")
    files = StoreFiles(
        (CertFile("c.cert", f"{encode_line(blob)}\n{encode_line(revoked)}\n"),),
        revoked_path=tmp_path / "revoked.txt",
        revoked_text=fp(revoked) + "\n",
    )
    own = [(tmp_path / "node.cert", encode_line(blob) + "\n")]
    trust = Trust(node_config(tmp_path), clock=Clock(), store=files, own=own)
    assert not (tmp_path / "certs").exists()
    assert trust.certified("c.test") is not None
    assert trust.certified("d.test") is None and "revoked" in trust.why_untrusted("d.test")
    assert trust.own_certificates == (blob,)


def test_a_cert_file_that_cannot_be_read_counts_for_nothing(tmp_path: Path) -> None:
    files = StoreFiles((CertFile("c.cert", error="permission denied"),))
    trust = Trust(node_config(tmp_path), clock=Clock(), store=files, own=[])
    assert trust.names() == []


def test_a_dropped_in_certificate_waits_for_the_watcher(tmp_path: Path) -> None:
    trust = Trust(node_config(tmp_path), clock=Clock())
    store(tmp_path, "c.cert", make_cert())
    assert trust.node("c.test") is None  # no rescan on the request path
    files = read_store_if_changed(trust.store_config, trust.store_signature)
    assert files is not None
    trust.use_store(files)
    assert trust.node("c.test") is not None
    assert read_store_if_changed(trust.store_config, trust.store_signature) is None


async def test_watch_store_picks_up_a_new_certificate_without_a_reload(tmp_path: Path) -> None:
    trust = Trust(node_config(tmp_path), clock=Clock())
    stop = asyncio.Event()
    watcher = asyncio.create_task(watch_store(lambda: trust, stop.is_set, interval_s=0.01))
    store(tmp_path, "c.cert", make_cert())
    for _ in range(500):
        if trust.node("c.test") is not None:
            break
        await asyncio.sleep(0.01)
    stop.set()
    await asyncio.wait_for(watcher, 5)
    assert trust.node("c.test") is not None


async def test_watch_store_drops_files_read_for_a_trust_swapped_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = Trust(node_config(tmp_path), clock=Clock())
    current = [old]
    stop = asyncio.Event()
    real = certfiles.read_store_if_changed

    def swap_while_reading(config: TrustConfig, last: Signature | None) -> StoreFiles | None:
        current[0] = Trust(node_config(tmp_path), clock=Clock())  # a reload meanwhile
        stop.set()
        return real(config, last)

    monkeypatch.setattr(certfiles, "read_store_if_changed", swap_while_reading)
    store(tmp_path, "c.cert", make_cert())
    await asyncio.wait_for(watch_store(lambda: current[0], stop.is_set, interval_s=0.01), 5)
    assert current[0] is not old
    assert old.node("c.test") is None


def test_seal_keys_come_from_the_pin_else_from_the_certificate(tmp_path: Path) -> None:
    from relay.protocol.sealing import CLASSIC, seal_secret

    certified = seal_secret(CLASSIC, bytes(range(1, 33))).public.string
    pinned = seal_secret(CLASSIC, bytes(range(2, 34))).public.string
    store(tmp_path, "c.cert", make_cert(seal_keys=(certified,)))
    trust = Trust(node_config(tmp_path), clock=Clock())
    node = trust.node("c.test")
    assert node is not None and node.seal_keys == (certified,)
    pin = f'[[peers]]\nname = "c.test"\njurisdiction = "RU"\nkeys = ["{PINNED_KEY}"]\n'
    pin += f'seal_keys = ["{pinned}"]\n'
    node = Trust(node_config(tmp_path, pin), clock=Clock()).node("c.test")
    assert node is not None and node.seal_keys == (pinned,)
