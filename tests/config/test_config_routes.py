"""node.toml for relaying and certificates: [[routes]], [relay], [[authorities]],
[trust] and [node] certificates; and the pure route/relay decisions of
relay.policy.routing.

Bad configs mark the line each problem must be reported at with `#!`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from relay.config.files import load_config
from relay.config.keys import generate_key_file
from relay.config.model import Authority, RelayConfig, Route, TrustConfig
from relay.errors import ConfigErrors
from relay.policy.certs import decode_line, encode_line, fingerprint
from relay.policy.routing import matches, next_hop, relay_allowed, route_for
from relay.protocol.certificate import Certificate, open_certificate, sign_certificate
from relay.protocol.keystr import private_key_from_seed, public_key_string

AUTHORITY = private_key_from_seed(bytes([7]) * 32)
AUTH_KEY = public_key_string(AUTHORITY.public_key())

NODE = """\
[node]
name = "msk.example.ru"
jurisdiction = "RU"
listen = "127.0.0.1:8701"
key_file = "node.key"
"""


def write(directory: Path, text: str) -> Path:
    key = directory / "node.key"
    if not key.exists():
        generate_key_file(key)
    file = directory / "node.toml"
    file.write_text(text, encoding="utf-8")
    return file


def problems(file: Path) -> list[str]:
    with pytest.raises(ConfigErrors) as info:
        load_config(file)
    return [e.detail for e in info.value.errors]


def cert_line(name: str) -> str:
    cert = Certificate(name, (AUTH_KEY,), "RU", "https://x.example", 1, 2, "reg.example.ru")
    return encode_line(sign_certificate(cert, AUTHORITY))


# --- valid ----------------------------------------------------------------------------


def test_everything_parses_into_frozen_values(tmp_path: Path) -> None:
    (tmp_path / "node.cert").write_text(cert_line("msk.example.ru") + "\n")
    (tmp_path / "trusted").mkdir()
    (tmp_path / "revoked.list").write_text(f"# none yet\n{'ab' * 32}\n")
    text = NODE + (
        'certificates = ["node.cert"]\n'
        "[policy]\n"
        'allowed_residency = ["EAEU"]\n'
        "[policy.groups]\n"
        'EAEU = ["AM", "BY", "KG", "KZ", "RU"]\n'
        "[[routes]]\n"
        'to = "*.example.kz"\n'
        'via = "gw.example.ru"\n'
        "[[routes]]\n"
        'to = "ala.example.kz"\n'
        'via = "other.example.ru"\n'
        "[relay]\n"
        'for_origins = ["spb.example.ru", "*.example.by", "spb.example.ru"]\n'
        'for_destinations = ["*.example.kz"]\n'
        "[[authorities]]\n"
        'name = "reg.example.ru"\n'
        f'key = "{AUTH_KEY}"\n'
        'jurisdictions = ["RU", "EAEU"]\n'
        "[trust]\n"
        'certificates_dir = "trusted"\n'
        'revoked = "revoked.list"\n'
    )
    config = load_config(write(tmp_path, text))
    assert config.routes == (
        Route("*.example.kz", "gw.example.ru"),
        Route("ala.example.kz", "other.example.ru"),
    )
    assert config.relay == RelayConfig(("spb.example.ru", "*.example.by"), ("*.example.kz",))
    assert config.authorities == (
        Authority("reg.example.ru", AUTH_KEY, frozenset({"AM", "BY", "KG", "KZ", "RU"})),
    )
    assert config.trust == TrustConfig(tmp_path / "trusted", tmp_path / "revoked.list")
    assert config.node.certificates == (tmp_path / "node.cert",)


def test_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, NODE))
    assert config.routes == () and config.authorities == ()
    assert config.relay == RelayConfig((), ())
    # the default store and list need not exist
    assert config.trust == TrustConfig(tmp_path / "certs", tmp_path / "revoked.txt")


def test_a_peer_may_omit_its_url(tmp_path: Path) -> None:
    text = (
        NODE + f'[[peers]]\nname = "ala.example.kz"\njurisdiction = "KZ"\nkeys = ["{AUTH_KEY}"]\n'
    )
    (peer,) = load_config(write(tmp_path, text)).peers
    assert peer.url is None


# --- bad ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bad:
    text: str
    key: str
    reason: str  # "{dir}" stands for the node directory


BAD = {
    "route without via": Bad(
        NODE + '[[routes]] #!\nto = "*.kz"\n', "routes[0].via", "missing (required)"
    ),
    "route with a bad pattern": Bad(
        NODE + '[[routes]]\nto = "*kz" #!\nvia = "gw.ru"\n',
        "routes[0].to",
        "bad node name '*kz': use lowercase labels of a-z, 0-9 and '-' separated by '.', "
        "no empty label, no '-' at a label's ends",
    ),
    "route via this node": Bad(
        NODE + '[[routes]]\nto = "*.kz"\nvia = "msk.example.ru" #!\n',
        "routes[0].via",
        "'msk.example.ru' is this node itself; a route must lead elsewhere",
    ),
    "route via its own destination": Bad(
        NODE + '[[routes]]\nto = "b.kz"\nvia = "b.kz" #!\n',
        "routes[0].via",
        "'b.kz' is the destination itself; without a route it is direct",
    ),
    "duplicate route": Bad(
        NODE + '[[routes]]\nto = "*.kz"\nvia = "a.ru"\n[[routes]]\nto = "*.kz" #!\nvia = "b.ru"\n',
        "routes[1].to",
        "a route to '*.kz' is already at line 7; the first match wins, so this one would "
        "never apply",
    ),
    "unknown route key": Bad(
        NODE + '[[routes]]\nto = "*.kz"\nvia = "a.ru"\nweight = 3 #!\n',
        "routes[0].weight",
        "unknown key",
    ),
    "relay list of a non-string": Bad(
        NODE + "[relay]\nfor_origins = [1] #!\n",
        "relay.for_origins",
        "expected an array of strings",
    ),
    "relay pattern": Bad(
        NODE + '[relay]\nfor_destinations = ["*"] #!\n',
        "relay.for_destinations",
        "bad node name '*': use lowercase labels of a-z, 0-9 and '-' separated by '.', "
        "no empty label, no '-' at a label's ends",
    ),
    "unknown relay key": Bad(NODE + "[relay]\nopen = true #!\n", "relay.open", "unknown key"),
    "authority without key": Bad(
        NODE + '[[authorities]] #!\nname = "reg.ru"\njurisdictions = ["RU"]\n',
        "authorities[0].key",
        "missing (required)",
    ),
    "authority with a bad key": Bad(
        NODE + '[[authorities]]\nname = "reg.ru"\nkey = "ed25519:abc" #!\njurisdictions = ["RU"]\n',
        "authorities[0].key",
        "public key 'ed25519:abc': base64 part must be 43 characters (32 bytes), got 3",
    ),
    "authority for nothing": Bad(
        NODE + f'[[authorities]]\nname = "reg.ru"\nkey = "{AUTH_KEY}"\njurisdictions = [] #!\n',
        "authorities[0].jurisdictions",
        "an authority must be trusted for at least one",
    ),
    "authority for a bad code": Bad(
        NODE + f'[[authorities]]\nname = "reg.ru"\nkey = "{AUTH_KEY}"\njurisdictions = ["XX"] #!\n',
        "authorities[0].jurisdictions",
        "bad country code 'XX'",
    ),
    "duplicate authority": Bad(
        NODE
        + f'[[authorities]]\nname = "reg.ru"\nkey = "{AUTH_KEY}"\njurisdictions = ["RU"]\n'
        + f'[[authorities]]\nname = "reg.ru" #!\nkey = "{AUTH_KEY}"\njurisdictions = ["BY"]\n',
        "authorities[1].name",
        "duplicate authority 'reg.ru' (first at line 7)",
    ),
    "missing certificates dir": Bad(
        NODE + '[trust]\ncertificates_dir = "nowhere" #!\n',
        "trust.certificates_dir",
        "no such directory: {dir}/nowhere",
    ),
    "missing revocation list": Bad(
        NODE + '[trust]\nrevoked = "gone.txt" #!\n',
        "trust.revoked",
        "no such file: {dir}/gone.txt",
    ),
    "unknown trust key": Bad(NODE + "[trust]\nfetch = true #!\n", "trust.fetch", "unknown key"),
    "own certificate missing": Bad(
        NODE + 'certificates = ["node.cert"] #!\n',
        "node.certificates",
        "no such certificate file: {dir}/node.cert",
    ),
}


@pytest.mark.parametrize("case", BAD.values(), ids=BAD.keys())
def test_bad_config_reports_file_line_key_reason(tmp_path: Path, case: Bad) -> None:
    file = write(tmp_path, case.text)
    (line,) = [i for i, ln in enumerate(case.text.splitlines(), start=1) if "#!" in ln]
    reason = case.reason.replace("{dir}", str(tmp_path))
    assert problems(file) == [f"{file}:{line}: {case.key}: {reason}"]


def test_bad_lines_of_the_revocation_list_are_named(tmp_path: Path) -> None:
    (tmp_path / "revoked.txt").write_text(f"{'ab' * 32}\n# fine\nDEADBEEF\n")
    file = write(tmp_path, NODE)
    (only,) = problems(file)
    assert only.startswith(f"{file}:1: trust.revoked: {tmp_path}/revoked.txt:3: neither a ")


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("", "expected one certificate line, found 0"),
        ("x\n", "certificate line is not standard base64"),
        (cert_line("other.example.ru") + "\n", "is for 'other.example.ru', not this node"),
        (cert_line("msk.example.ru") + "\n" + cert_line("msk.example.ru"), "found 2"),
    ],
    ids=["empty", "not base64", "another node's", "two lines"],
)
def test_own_certificate_must_be_this_nodes(tmp_path: Path, content: str, reason: str) -> None:
    (tmp_path / "node.cert").write_text(content)
    file = write(tmp_path, NODE + 'certificates = ["node.cert"]\n')
    (only,) = problems(file)
    assert only.startswith(f"{file}:6: node.certificates: {tmp_path}/node.cert: ")
    assert reason in only


def test_own_certificate_round_trips(tmp_path: Path) -> None:
    line = cert_line("msk.example.ru")
    (tmp_path / "node.cert").write_text(line + "\n")
    config = load_config(write(tmp_path, NODE + 'certificates = ["node.cert"]\n'))
    assert config.node.certificates == (tmp_path / "node.cert",)
    cert, cert_bytes, _ = open_certificate(decode_line(line))
    assert cert.name == "msk.example.ru" and len(fingerprint(cert_bytes)) == 64


# --- relay.policy.routing ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "name", "hit"),
    [
        ("b.example.kz", "b.example.kz", True),
        ("b.example.kz", "c.example.kz", False),
        ("*.example.kz", "b.example.kz", True),
        ("*.example.kz", "x.b.example.kz", True),
        ("*.example.kz", "example.kz", False),
        ("*.example.kz", "bexample.kz", False),
        ("*.kz", "b.example.kz", True),
    ],
)
def test_patterns(pattern: str, name: str, hit: bool) -> None:
    assert matches(pattern, name) is hit


ROUTES = (
    Route("special.example.kz", "gw2.example.ru"),
    Route("*.example.kz", "gw.example.ru"),
    Route("*.kz", "gw3.example.ru"),
)


@pytest.mark.parametrize(
    ("dest", "hop"),
    [
        ("special.example.kz", "gw2.example.ru"),  # first match wins
        ("b.example.kz", "gw.example.ru"),
        ("b.other.kz", "gw3.example.ru"),
        ("b.example.by", "b.example.by"),  # no match: direct
        ("gw.example.ru", "gw.example.ru"),  # a via itself is reached directly
    ],
)
def test_next_hop(dest: str, hop: str) -> None:
    assert next_hop(ROUTES, dest) == hop
    assert (route_for(ROUTES, dest) is None) is (hop == dest)


RELAY = RelayConfig(for_origins=("a.example.ru", "*.example.by"), for_destinations=("*.kz",))


@pytest.mark.parametrize(
    ("kind", "origin", "dest", "allowed"),
    [
        ("message", "a.example.ru", "b.example.de", True),  # origin listed
        ("message", "x.example.by", "b.example.de", True),  # origin pattern
        ("message", "z.example.de", "b.example.kz", True),  # destination pattern
        ("message", "z.example.de", "b.example.de", False),
        ("message", "b.example.de", "a.example.ru", False),  # a message *to* a served origin
        ("receipt", "b.example.de", "a.example.ru", True),  # ...but its receipt goes back
        ("receipt", "b.example.kz", "z.example.de", True),  # the receipt of a served destination
        ("receipt", "z.example.de", "b.example.de", False),
    ],
)
def test_relay_allowed(kind: str, origin: str, dest: str, allowed: bool) -> None:
    assert relay_allowed(RELAY, kind=kind, origin=origin, dest=dest) is allowed


def test_nothing_is_relayed_by_default() -> None:
    assert not relay_allowed(RelayConfig(), kind="message", origin="a.ru", dest="b.kz")
    assert not relay_allowed(RelayConfig(), kind="receipt", origin="a.ru", dest="b.kz")
