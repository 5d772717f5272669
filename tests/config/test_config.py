"""node.toml loading: a valid file becomes frozen dataclasses; every mistake is
reported as FILE:LINE: key: reason, all of them, in file order.

Bad configs mark the line each problem must be reported at with `#!`, so the
expected line numbers are computed from the text, not typed by hand.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

from relay.config.files import load_config
from relay.config.keys import generate_key_file
from relay.config.model import (
    Config,
    FederationConfig,
    LogConfig,
    Mailbox,
    NodeConfig,
    Peer,
    RetentionConfig,
    TrustConfig,
)
from relay.config.tomledit import TomlLocator
from relay.errors import ConfigErrors, MalformedError
from relay.policy.certs import encode_line
from relay.policy.residency import Policy, Rule
from relay.protocol.certificate import Certificate, sign_certificate
from relay.protocol.keystr import parse_public_key, private_key_from_seed, public_key_string

KEY_A = public_key_string(private_key_from_seed(bytes([1]) * 32).public_key())
KEY_B = public_key_string(private_key_from_seed(bytes([2]) * 32).public_key())
TOKEN_HASH = "ab" * 32

NODE = """\
[node]
name = "msk.example.ru"
jurisdiction = "RU"
listen = "127.0.0.1:8701"
key_file = "node.key"
"""


def write_node(directory: Path, text: str, key_mode: int = 0o600) -> Path:
    key = directory / "node.key"
    if not key.exists():
        generate_key_file(key)
    key.chmod(key_mode)
    file = directory / "node.toml"
    file.write_text(text, encoding="utf-8")
    return file


def marked_lines(text: str) -> list[int]:
    return [i for i, line in enumerate(text.splitlines(), start=1) if "#!" in line]


def problems(file: Path) -> list[str]:
    with pytest.raises(ConfigErrors) as info:
        load_config(file)
    return [e.detail for e in info.value.errors]


def malformed(key: str) -> str:
    with pytest.raises(MalformedError) as info:
        parse_public_key(key)
    return info.value.detail


# --- valid configs -------------------------------------------------------------

FULL = f"""\
# a full config: every table, every key
[node]
name = "msk.example.ru"
jurisdiction = "RU"
listen = "[::1]:8701"
public_url = "https://relay.example.ru/base/"
key_file = "keys/../node.key"
database = "data/relay.db"
max_body_bytes = 1048576
queue_lifetime = "2d"
certificates = ["node.cert"]
admin_token_sha256 = "{TOKEN_HASH}"

[policy]
mode = "audit"
default_residency = ["RU"]
allowed_residency = ["EAEU", "AM"]
export_to = ["EAEU"]
import_from = ["EAEU", "CIS"]

[policy.groups]
EAEU = ["AM", "BY", "KG", "KZ", "RU"]
CIS = ["EAEU", "UZ", "TJ"]

[[policy.rules]]
id = "no-health-abroad"
effect = "deny"
ctype = "application/fhir+json"
dest_jurisdiction = ["CIS"]

[[policy.rules]]
id = "alice-home"
effect = "limit"
sender = "alice"
dest_node = ["ala.example.kz", "fru.example.kg"]
residency = ["RU", "KZ"]

[retention]
content_min_days = 1
content_max_days = 30
metadata_min_days = 2
metadata_max_days = 60

[federation]
batch_envelopes = 100
batch_bytes = 65536
retry_min = "500ms"
retry_max = "10m"
request_timeout = "20s"
connect_timeout = "3s"
receipt_window = "0s"
delivery_results = false

[log]
format = "json"
level = "debug"

[[peers]]
name = "ala.example.kz"
url = "http://127.0.0.1:8702/"
jurisdiction = "KZ"
keys = [
    "{KEY_A}",  # current
    "{KEY_B}",  # retiring
]

[[peers]]
name = "fru.example.kg"
jurisdiction = "KG"
keys = ["{KEY_B}"]

[[mailboxes]]
name = "alice"
token_sha256 = "{TOKEN_HASH}"
webhook = "https://hooks.example.ru/alice"

[[mailboxes]]
name = "billing.bot+1"
token_sha256 = "{"cd" * 32}"
"""


def test_full_config_loads_to_expected_dataclasses(tmp_path: Path) -> None:
    own = Certificate("msk.example.ru", (KEY_A,), "RU", "https://relay.example.ru", 1, 2, "reg.ru")
    authority_key = private_key_from_seed(bytes([3]) * 32)
    (tmp_path / "node.cert").write_text(encode_line(sign_certificate(own, authority_key)) + "\n")
    (tmp_path / "keys").mkdir()
    file = write_node(tmp_path, FULL)
    eaeu = frozenset({"AM", "BY", "KG", "KZ", "RU"})
    cis = eaeu | {"UZ", "TJ"}
    expected = Config(
        path=file,
        node=NodeConfig(
            name="msk.example.ru",
            jurisdiction="RU",
            listen_host="::1",
            listen_port=8701,
            public_url="https://relay.example.ru/base",
            key_file=tmp_path / "keys/../node.key",
            database=tmp_path / "data/relay.db",
            max_body_bytes=1048576,
            queue_lifetime_ms=2 * 86_400_000,
            certificates=(tmp_path / "node.cert",),
            admin_token_sha256=TOKEN_HASH,
        ),
        policy=Policy(
            jurisdiction="RU",
            mode="audit",
            default_residency=frozenset({"RU"}),
            allowed_residency=eaeu,
            export_to=eaeu,
            import_from=cis,
            groups={"EAEU": eaeu, "CIS": cis},
            rules=(
                Rule(
                    id="no-health-abroad",
                    effect="deny",
                    ctypes=("application/fhir+json",),
                    dest_jurisdictions=tuple(sorted(cis)),
                ),
                Rule(
                    id="alice-home",
                    effect="limit",
                    senders=("alice",),
                    dest_nodes=("ala.example.kz", "fru.example.kg"),
                    residency=frozenset({"RU", "KZ"}),
                ),
            ),
        ),
        retention=RetentionConfig(1, 30, 2, 60),
        federation=FederationConfig(
            100, 65536, 500, 600_000, 20_000, 3000, 0, delivery_results=False
        ),
        peers=(
            Peer("ala.example.kz", "http://127.0.0.1:8702", "KZ", (KEY_A, KEY_B)),
            Peer("fru.example.kg", None, "KG", (KEY_B,)),
        ),
        mailboxes=(
            Mailbox("alice", TOKEN_HASH, "https://hooks.example.ru/alice"),
            Mailbox("billing.bot+1", "cd" * 32),
        ),
        log=LogConfig("json", "debug"),
        trust=TrustConfig(tmp_path / "certs", tmp_path / "revoked.txt"),
    )
    config = load_config(tmp_path)
    assert config == expected
    assert config.node.listen == "[::1]:8701"
    assert config.peer("fru.example.kg") == expected.peers[1]
    assert config.peer("nobody.example") is None
    assert config.mailbox("alice") == expected.mailboxes[0]
    assert config.mailbox("bob") is None


def test_minimal_config_gets_defaults(tmp_path: Path) -> None:
    file = write_node(tmp_path, NODE.replace("8701", "0"))
    config = load_config(file)
    home = frozenset({"RU"})
    assert config.path == file
    assert config.node == NodeConfig(
        name="msk.example.ru",
        jurisdiction="RU",
        listen_host="127.0.0.1",
        listen_port=0,
        public_url="http://127.0.0.1:0",
        key_file=tmp_path / "node.key",
        database=tmp_path / "relay.db",
    )
    assert config.node.max_body_bytes == 16 * 1024 * 1024
    assert config.node.queue_lifetime_ms == 5 * 86_400_000
    assert config.policy == Policy(
        jurisdiction="RU",
        mode="enforce",
        default_residency=home,
        allowed_residency=home,
        export_to=home,
        import_from=home,
    )
    assert config.retention == RetentionConfig(0, 365, 0, 1095)
    assert config.federation == FederationConfig()
    assert config.log == LogConfig("text", "info")
    assert config.peers == () and config.mailboxes == ()


def test_rule_dest_node_takes_a_wildcard_suffix(tmp_path: Path) -> None:
    text = NODE + '[[policy.rules]]\nid = "no-kz"\ndest_node = ["*.example.kz", "a.b"]\n'
    text += 'effect = "deny"\n'
    config = load_config(write_node(tmp_path, text))
    assert config.policy.rules[0].dest_nodes == ("*.example.kz", "a.b")


def test_empty_export_and_import_lists_are_allowed(tmp_path: Path) -> None:
    text = NODE + "[policy]\nexport_to = []\nimport_from = []\n"
    config = load_config(write_node(tmp_path, text))
    assert config.policy.export_to == frozenset() == config.policy.import_from
    assert config.policy.allowed_residency == frozenset({"RU"})


# --- bad configs -------------------------------------------------------------


@dataclass(frozen=True)
class Bad:
    text: str
    key: str
    reason: str  # "{dir}" stands for the node directory
    key_mode: int = 0o600


def node_with(old: str, new: str) -> str:
    assert old in NODE
    return NODE.replace(old, new)


def peer(name: str, *, extra: str = "", key: str = KEY_A, mark: str = "") -> str:
    return f'\n[[peers]]\nname = "{name}"{mark}\njurisdiction = "KZ"\nkeys = ["{key}"]\n{extra}'


BAD = {
    "unknown key": Bad(NODE + 'colour = "blue" #!\n', "node.colour", "unknown key"),
    "metrics mailbox_labels not a boolean": Bad(
        NODE + '\n[metrics]\nmailbox_labels = "yes" #!\n',
        "metrics.mailbox_labels",
        "expected a boolean, got a string",
    ),
    "limits header_timeout too short": Bad(
        NODE + '\n[limits]\nheader_timeout = "10ms" #!\n',
        "limits.header_timeout",
        "duration '10ms' is too short (at least 100 ms)",
    ),
    "limits max_connections negative": Bad(
        NODE + "\n[limits]\nmax_connections = -1 #!\n",
        "limits.max_connections",
        "-1 is out of range 0..10000000",
    ),
    "unknown top-level key": Bad("colour = 1 #!\n" + NODE, "colour", "unknown key"),
    "unknown table": Bad(NODE + "\n[extras] #!\nx = 1\n", "extras", "unknown table [extras]"),
    "unknown sub-table": Bad(
        NODE + "\n[node.tls] #!\nx = 1\n", "node.tls", "unknown table [node.tls]"
    ),
    "tls_cert without tls_key": Bad(
        NODE + 'tls_cert = "c.pem" #!\n',
        "node.tls_cert",
        "tls_cert needs tls_key as well (HTTPS needs both)",
    ),
    "missing node table": Bad(
        '# empty #!\n[policy]\nmode = "audit"\n', "node", "missing [node] table"
    ),
    "missing required key": Bad(
        node_with("[node]", "[node] #!").replace('listen = "127.0.0.1:8701"\n', ""),
        "node.listen",
        "missing (required)",
    ),
    "bad country code": Bad(
        node_with('"RU"', '"XX" #!'), "node.jurisdiction", "bad country code 'XX'"
    ),
    "lowercase country code": Bad(
        node_with('"RU"', '"ru" #!'),
        "node.jurisdiction",
        "bad country code 'ru' (codes are uppercase: 'RU')",
    ),
    "bad country code in a list": Bad(
        NODE + '[policy]\nallowed_residency = ["RU", "QQ"] #!\n',
        "policy.allowed_residency",
        "bad country code 'QQ'",
    ),
    "bad node name": Bad(
        node_with('"msk.example.ru"', '"Msk.example.ru" #!'),
        "node.name",
        "bad node name 'Msk.example.ru': use lowercase labels of a-z, 0-9 and '-' separated "
        "by '.', no empty label, no '-' at a label's ends",
    ),
    "empty label in node name": Bad(
        node_with('"msk.example.ru"', '"msk..ru" #!'),
        "node.name",
        "bad node name 'msk..ru': use lowercase labels of a-z, 0-9 and '-' separated "
        "by '.', no empty label, no '-' at a label's ends",
    ),
    "duplicate peer": Bad(
        NODE + peer("ala.example.kz") + peer("ala.example.kz", key=KEY_B, mark=" #!"),
        "peers[1].name",
        "duplicate peer 'ala.example.kz' (first at line 8)",
    ),
    "peer with own name": Bad(
        NODE + peer("msk.example.ru", mark=" #!"),
        "peers[0].name",
        "peer 'msk.example.ru' has this node's own name",
    ),
    "malformed public key": Bad(
        NODE + peer("ala.example.kz", key='ed25519:AAAA"] #!["x'),
        "peers[0].keys",
        "{malformed:ed25519:AAAA}",
    ),
    "peer without keys": Bad(
        NODE + '\n[[peers]]\nname = "ala.example.kz"\njurisdiction = "KZ"\nkeys = [] #!\n',
        "peers[0].keys",
        "a peer needs at least one key",
    ),
    "bad peer url": Bad(
        NODE + peer("ala.example.kz", extra='url = "ftp://ala.example.kz" #!\n'),
        "peers[0].url",
        "bad URL 'ftp://ala.example.kz': must start with http:// or https://",
    ),
    "url without host": Bad(
        NODE + 'public_url = "http://" #!\n', "node.public_url", "bad URL 'http://': no host"
    ),
    "missing key file": Bad(
        node_with('"node.key"', '"missing.key" #!'),
        "node.key_file",
        "{dir}/missing.key: no such key file (`relay init` creates one)",
    ),
    "key file 0644": Bad(
        node_with('"node.key"', '"node.key" #!'),
        "node.key_file",
        "{dir}/node.key: key file is accessible by group or others (mode 0644); "
        "run: chmod 600 {dir}/node.key",
        key_mode=0o644,
    ),
    "retention min > max": Bad(
        NODE + "[retention]\ncontent_min_days = 400 #!\ncontent_max_days = 365\n",
        "retention.content_min_days",
        "content_min_days (400) is greater than content_max_days (365)",
    ),
    "metadata retention min > default max": Bad(
        NODE + "[retention]\nmetadata_min_days = 2000 #!\n",
        "retention.metadata_min_days",
        "metadata_min_days (2000) is greater than metadata_max_days (1095)",
    ),
    "bad duration": Bad(
        NODE + 'queue_lifetime = "5 days" #!\n',
        "node.queue_lifetime",
        "bad duration '5 days': use a whole number and a unit ms, s, m, h or d",
    ),
    "duration as a number": Bad(
        NODE + "queue_lifetime = 5 #!\n",
        "node.queue_lifetime",
        'expected a duration string such as "30s", "5m", "1h" or "5d"',
    ),
    "retry_min > retry_max": Bad(
        NODE + '[federation]\nretry_min = "2h" #!\n',
        "federation.retry_min",
        "retry_min is longer than retry_max",
    ),
    "bad listen": Bad(
        node_with('"127.0.0.1:8701"', '"127.0.0.1" #!'),
        "node.listen",
        "bad listen address '127.0.0.1': use HOST:PORT or [IPV6]:PORT",
    ),
    "listen port too big": Bad(
        node_with('"127.0.0.1:8701"', '"127.0.0.1:70000" #!'),
        "node.listen",
        "bad listen address '127.0.0.1:70000': port over 65535",
    ),
    "listen bad ipv6": Bad(
        node_with('"127.0.0.1:8701"', '"[::g]:8701" #!'),
        "node.listen",
        "bad listen address '[::g]:8701': not an IPv6 address",
    ),
    "wrong type": Bad(
        NODE + 'max_body_bytes = "big" #!\n',
        "node.max_body_bytes",
        "expected an integer, got a string",
    ),
    "boolean is not an integer": Bad(
        NODE + "max_body_bytes = true #!\n",
        "node.max_body_bytes",
        "expected an integer, got a boolean",
    ),
    "out of range": Bad(
        NODE + "max_body_bytes = 10 #!\n",
        "node.max_body_bytes",
        "10 is out of range 1024..2147483648",
    ),
    "mode value": Bad(
        NODE + '[policy]\nmode = "strict" #!\n',
        "policy.mode",
        'bad value \'strict\': use "enforce" or "audit"',
    ),
    "group cycle": Bad(
        NODE + '[policy.groups]\nNORTH = ["RU", "SOUTH"] #!\nSOUTH = ["KZ", "NORTH"]\n',
        "policy.groups.NORTH",
        "group cycle: NORTH -> SOUTH -> NORTH",
    ),
    "unknown group": Bad(
        NODE + '[policy]\ndefault_residency = ["RU"]\nallowed_residency = ["EAEU"] #!\n',
        "policy.allowed_residency",
        "unknown group 'EAEU'",
    ),
    "unknown name inside a group": Bad(
        NODE + '[policy.groups]\nEAEU = ["RU", "KZ", "BELARUS"] #!\n',
        "policy.groups.EAEU",
        "unknown group 'BELARUS'",
    ),
    "group named like a country": Bad(
        NODE + '[policy.groups]\nDE = ["DE", "AT"] #!\n',
        "policy.groups.DE",
        "group name 'DE' is a country code",
    ),
    "default outside allowed": Bad(
        NODE + '[policy]\ndefault_residency = ["RU", "KZ"] #!\nallowed_residency = ["RU"]\n',
        "policy.default_residency",
        "KZ not in allowed_residency",
    ),
    "duplicate rule id": Bad(
        NODE + '\n[[policy.rules]]\nid = "r1"\neffect = "deny"\n'
        '\n[[policy.rules]]\nid = "r1" #!\neffect = "deny"\nctype = "text/plain"\n',
        "policy.rules[1].id",
        "duplicate rule id 'r1' (first at line 8)",
    ),
    "limit rule without residency": Bad(
        NODE + '\n[[policy.rules]] #!\nid = "r1"\neffect = "limit"\n',
        "policy.rules[0].residency",
        'missing (required for effect = "limit")',
    ),
    "deny rule with residency": Bad(
        NODE + '\n[[policy.rules]]\nid = "r1"\neffect = "deny"\nresidency = ["RU"] #!\n',
        "policy.rules[0].residency",
        'only a rule with effect = "limit" has a residency',
    ),
    "rule effect": Bad(
        NODE + '\n[[policy.rules]]\nid = "r1"\neffect = "allow" #!\n',
        "policy.rules[0].effect",
        'bad value \'allow\': use "deny" or "limit"',
    ),
    "rule sender without mailbox": Bad(
        NODE + '\n[[policy.rules]]\nid = "r1"\neffect = "deny"\nsender = "bob" #!\n',
        "policy.rules[0].sender",
        "no mailbox 'bob' here",
    ),
    "duplicate mailbox": Bad(
        NODE + f'[[mailboxes]]\nname = "alice"\ntoken_sha256 = "{TOKEN_HASH}"\n'
        f'[[mailboxes]]\nname = "alice" #!\ntoken_sha256 = "{TOKEN_HASH}"\n',
        "mailboxes[1].name",
        "duplicate mailbox 'alice' (first at line 7)",
    ),
    "bad mailbox name": Bad(
        NODE + f'[[mailboxes]]\nname = "Alice" #!\ntoken_sha256 = "{TOKEN_HASH}"\n',
        "mailboxes[0].name",
        "bad mailbox name 'Alice': use 1..64 of a-z 0-9 . _ + -, not starting with '.'",
    ),
    "mailbox name starting with a dot (not addressable on the wire)": Bad(
        NODE + f'[[mailboxes]]\nname = ".alice" #!\ntoken_sha256 = "{TOKEN_HASH}"\n',
        "mailboxes[0].name",
        "bad mailbox name '.alice': use 1..64 of a-z 0-9 . _ + -, not starting with '.'",
    ),
    "reserved mailbox name": Bad(
        NODE + f'[[mailboxes]]\nname = "postmaster" #!\ntoken_sha256 = "{TOKEN_HASH}"\n',
        "mailboxes[0].name",
        "mailbox name 'postmaster' is reserved for receipts",
    ),
    "bad token hash": Bad(
        NODE + '[[mailboxes]]\nname = "alice"\ntoken_sha256 = "ABC" #!\n',
        "mailboxes[0].token_sha256",
        "expected 64 lowercase hex digits (a SHA-256)",
    ),
    "log format": Bad(
        NODE + '[log]\nformat = "xml" #!\n', "log.format", 'bad value \'xml\': use "text" or "json"'
    ),
    "locator skips multi-line values": Bad(
        NODE
        + 'certificates = [\n  # colour = 1\n]\n[[policy.rules]]\nid = "r1"\neffect = "deny"\n'
        + 'ctype = """\ncolour = 1\n[fake]"""\ncolour = 1 #!\n',
        "policy.rules[0].colour",
        "unknown key",
    ),
}


@pytest.mark.parametrize("case", BAD.values(), ids=BAD.keys())
def test_bad_config_reports_file_line_key_reason(tmp_path: Path, case: Bad) -> None:
    file = write_node(tmp_path, case.text, case.key_mode)
    (line,) = marked_lines(case.text)
    reason = case.reason.replace("{dir}", str(tmp_path))
    if reason.startswith("{malformed:"):
        reason = malformed(reason.removeprefix("{malformed:").removesuffix("}"))
    assert problems(file) == [f"{file}:{line}: {case.key}: {reason}"]


def test_syntax_error_names_the_line(tmp_path: Path) -> None:
    file = write_node(tmp_path, NODE + "colour =\n")
    (only,) = problems(file)
    assert only.startswith(f"{file}:6: (syntax): Invalid value")


def test_missing_file(tmp_path: Path) -> None:
    assert problems(tmp_path) == [
        f"{tmp_path}/node.toml: no such file, so {tmp_path} is not a node directory;"
        " `relay init DIR --name NAME --jurisdiction CC` creates a node directory"
    ]


def test_several_errors_reported_together_in_file_order(tmp_path: Path) -> None:
    text = textwrap.dedent(
        f"""\
        [node]
        name = "msk.example.ru"
        jurisdiction = "XX" #!
        listen = "127.0.0.1:8701"
        key_file = "node.key"
        queue_lifetime = "forever" #!

        [[peers]]
        name = "ala.example.kz"
        jurisdiction = "KZ"
        keys = ["ed25519:nope"] #!

        [[mailboxes]]
        name = "ALICE" #!
        token_sha256 = "{TOKEN_HASH}"

        [policy]
        mode = "loud" #!
        [policy.groups]
        EAEU = ["AM", "ZZ"] #!

        [retention]
        content_min_days = 9 #!
        content_max_days = 8
        [surprise] #!
        """
    )
    file = write_node(tmp_path, text)
    found = problems(file)
    lines = [int(p.split(":")[1]) for p in found]
    assert lines == marked_lines(text)
    keys = [p.split(": ")[1] for p in found]
    assert keys == [
        "node.jurisdiction",
        "node.queue_lifetime",
        "peers[0].keys",
        "mailboxes[0].name",
        "policy.mode",
        "policy.groups.EAEU",
        "retention.content_min_days",
        "surprise",
    ]


def test_key_file_path_is_relative_to_the_config(tmp_path: Path) -> None:
    (tmp_path / "keys").mkdir()
    generate_key_file(tmp_path / "keys" / "main.key")
    nested = tmp_path / "etc"
    nested.mkdir()
    text = node_with('"node.key"', '"../keys/main.key"')
    (nested / "node.toml").write_text(text)
    config = load_config(nested / "node.toml")
    assert config.node.key_file == nested / "../keys/main.key"
    assert config.node.key_file.is_absolute()


# --- the line locator ----------------------------------------------------------


def test_locator_finds_keys_in_tables_arrays_and_dotted_keys() -> None:
    text = textwrap.dedent(
        """\
        top = 1
        [a]
        "quoted key" = 'it''s'
        b.c = { d = 1 }
        s = '''
        [not_a_table]
        x = 1'''
        [[arr]]
        k = 1
        [[arr]]
        k = [
          2,
        ]
        [arr.sub]
        m = 3
        [a.deep]
        z = 4
        """
    )
    loc = TomlLocator(text)
    assert loc.line(("top",)) == 1
    assert loc.line(("a",)) == 2
    assert loc.line(("a", "quoted key")) == 3
    assert loc.line(("a", "b", "c")) == 4
    assert loc.line(("a", "b", "c", "d")) == 4  # inside an inline table: its key's line
    assert loc.line(("a", "s")) == 5
    assert loc.line(("not_a_table",)) == 1  # text in a string is not a table
    assert loc.line(("arr", 0, "k")) == 9
    assert loc.line(("arr", 1)) == 10
    assert loc.line(("arr", 1, "k")) == 11
    assert loc.line(("arr", 1, "sub", "m")) == 15
    assert loc.line(("a", "deep", "z")) == 17
    assert loc.line(("a", "missing")) == 2
    assert loc.line(("arr", 1, "missing")) == 10


def test_connection_limits_and_metrics_labels_load(tmp_path: Path) -> None:
    text = (
        NODE
        + '\n[limits]\nmax_connections = 20\nheader_timeout = "2s"\nbody_timeout = "1m"\n'
        + 'idle_timeout = "500ms"\n\n[metrics]\nmailbox_labels = true\n'
    )
    config = load_config(write_node(tmp_path, text))
    limits = config.limits
    assert (limits.max_connections, limits.header_timeout_ms) == (20, 2_000)
    assert (limits.body_timeout_ms, limits.idle_timeout_ms) == (60_000, 500)
    assert config.metrics.mailbox_labels is True
    assert load_config(write_node(tmp_path, NODE)).metrics.mailbox_labels is False


def test_inbox_page_and_mailbox_quota_load_and_refuse_bad_values(tmp_path: Path) -> None:
    text = (
        NODE
        + "\n[limits]\ninbox_page_bytes = 65536\nmailbox_unread_bytes = 0\n"
        + "peer_bytes_per_s = 0\nunauthenticated_body_bytes = 0\n"
        + "principal_write_share = 10\nclient_body_bytes = 2048\n"
    )
    limits = load_config(write_node(tmp_path, text)).limits
    assert (limits.inbox_page_bytes, limits.mailbox_unread_bytes) == (65536, 0)
    assert (limits.peer_bytes_per_s, limits.unauthenticated_body_bytes) == (0, 0)
    assert (limits.principal_write_share, limits.client_body_bytes) == (10, 2048)
    default = load_config(write_node(tmp_path, NODE)).limits
    assert (default.inbox_page_bytes, default.mailbox_unread_bytes) == (8 * 2**20, 2**30)
    assert (default.peer_bytes_per_s, default.unauthenticated_body_bytes) == (64 * 2**20, 2**18)
    for bad in (
        "inbox_page_bytes = 10",
        "mailbox_unread_bytes = -1",
        "peer_bytes_per_s = -5",
        "unauthenticated_body_bytes = -1",
        "principal_write_share = 0",
        "principal_write_share = 101",
        "client_body_bytes = 10",
    ):
        with pytest.raises(ConfigErrors, match=bad.split()[0]):
            load_config(write_node(tmp_path, NODE + f"\n[limits]\n{bad}\n"))
