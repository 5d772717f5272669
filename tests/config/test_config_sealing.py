"""node.toml keys for sealed payloads: `[node] seal_key_file`, `retired_seal_key_files`,
`revoked_seal_keys`, `[[peers]] seal_keys`, `[federation] seal`; each mistake is
FILE:LINE: key: reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from relay.config.files import load_config
from relay.config.keys import KeyFileError
from relay.config.model import RetiredSealKey
from relay.config.sealkeys import generate_seal_key_file, load_seal_key
from relay.protocol.sealing import CLASSIC, HYBRID
from tests.config.test_config import KEY_A, NODE, marked_lines, problems, write_node


def seal_file(directory: Path, name: str = "node.seal", suite: str = HYBRID) -> str:
    return generate_seal_key_file(directory / name, suite).public.string


def test_seal_keys_load(tmp_path: Path) -> None:
    current = seal_file(tmp_path)
    retired = seal_file(tmp_path, "old.seal", CLASSIC)
    seal_file(tmp_path, "older.seal", CLASSIC)
    peer_key = seal_file(tmp_path, "peer.seal", CLASSIC)
    revoked = seal_file(tmp_path, "gone.seal", CLASSIC)
    text = NODE + (
        'seal_key_file = "node.seal"\n'
        'retired_seal_key_files = ["old.seal",\n'
        ' {file = "older.seal", valid_until = 2030-01-31T12:00:00Z}]\n'
        f'revoked_seal_keys = ["{revoked}"]\n'
        '[federation]\nseal = "required"\n'
        f'[[peers]]\nname = "b.test"\njurisdiction = "RU"\nkeys = ["{KEY_A}"]\n'
        f'seal_keys = ["{peer_key}"]\n'
    )
    config = load_config(write_node(tmp_path, text))
    assert config.node.seal_key_file == tmp_path / "node.seal"
    assert config.node.retired_seal_keys == (
        RetiredSealKey(tmp_path / "old.seal"),  # retired before grace periods: until revoked
        RetiredSealKey(tmp_path / "older.seal", 1_896_091_200_000),
    )
    assert config.node.revoked_seal_keys == (revoked,)
    assert config.federation.seal == "required"
    assert config.peers[0].seal_keys == (peer_key,)
    assert load_seal_key(tmp_path / "node.seal").public.string == current
    assert load_seal_key(tmp_path / "old.seal").public.string == retired


def test_defaults_seal_when_a_key_is_pinned(tmp_path: Path) -> None:
    config = load_config(write_node(tmp_path, NODE))
    assert config.federation.seal == "preferred"
    assert config.node.seal_key_file is None and config.node.retired_seal_keys == ()


BAD = [
    ('seal_key_file = "missing.seal" #!\n', "node.seal_key_file", "no such key file"),
    ('seal_key_file = "node.key" #!\n', "node.seal_key_file", "not a seal key file"),
    ('revoked_seal_keys = ["x25519:AAAA"] #!\n', "node.revoked_seal_keys", "expected 32 bytes"),
    (
        'seal_key_file = "node.seal"\nretired_seal_key_files = ["node.seal"] #!\n',
        "node.retired_seal_key_files",
        "is also the seal_key_file",
    ),
    (
        'seal_key_file = "node.seal"\nretired_seal_key_files = [{file = "node.seal"}] #!\n',
        "node.retired_seal_key_files",
        "retired_seal_key_files[0]: valid_until: expected a date-time with a UTC offset",
    ),
    (
        "retired_seal_key_files = [{file = 'old.seal', valid_until = 2030-01-31T12:00:00}] #!\n",
        "node.retired_seal_key_files",
        "valid_until: expected a date-time with a UTC offset",
    ),
    (
        "retired_seal_key_files = [{file = 'old.seal', valid_until = 2030-01-31T12:00:00Z,"
        " until = 1}] #!\n",
        "node.retired_seal_key_files",
        "retired_seal_key_files[0]: unknown key 'until'",
    ),
    (
        "retired_seal_key_files = [{valid_until = 2030-01-31T12:00:00Z}] #!\n",
        "node.retired_seal_key_files",
        "file: expected a path string",
    ),
    (
        "retired_seal_key_files = [3] #!\n",
        "node.retired_seal_key_files",
        "expected {file = ..., valid_until = ...} or a path",
    ),
    (
        "retired_seal_key_files = [{file = 'missing.seal', valid_until = 2030-01-31T12:00:00Z}]"
        " #!\n",
        "node.retired_seal_key_files",
        "no such key file",
    ),
    ('[federation]\nseal = "always" #!\n', "federation.seal", "'required', 'preferred', 'off'"),
    (
        f'[[peers]]\nname = "b.test"\njurisdiction = "RU"\nkeys = ["{KEY_A}"]\n'
        'seal_keys = ["ed25519:x"] #!\n',
        "peers[0].seal_keys",
        "must start with one of",
    ),
]


@pytest.mark.parametrize(("extra", "key", "why"), BAD, ids=[b[1] + " " + b[2] for b in BAD])
def test_bad_seal_config_names_file_line_and_key(
    tmp_path: Path, extra: str, key: str, why: str
) -> None:
    seal_file(tmp_path)
    text = NODE + extra
    file = write_node(tmp_path, text)
    (line,) = marked_lines(text)
    got = problems(file)
    assert len(got) == 1, got
    assert got[0].startswith(f"{file}:{line}:"), got
    assert why in got[0] and f" {key}: " in got[0], got


def test_a_revoked_current_seal_key_is_refused(tmp_path: Path) -> None:
    key = seal_file(tmp_path)
    file = write_node(
        tmp_path, NODE + f'seal_key_file = "node.seal"\nrevoked_seal_keys = ["{key}"]\n'
    )
    (got,) = problems(file)
    assert "holds a revoked seal key" in got


def test_a_bad_secret_is_never_echoed(tmp_path: Path) -> None:
    (tmp_path / "node.seal").write_text("x25519-secret:" + "Q" * 42 + "\n")
    (tmp_path / "node.seal").chmod(0o600)
    (got,) = problems(write_node(tmp_path, NODE + 'seal_key_file = "node.seal"\n'))
    assert "QQQQ" not in got and "expected 32 bytes" in got


def test_a_seal_key_file_others_can_read_is_refused(tmp_path: Path) -> None:
    seal_file(tmp_path)
    (tmp_path / "node.seal").chmod(0o640)
    with pytest.raises(KeyFileError, match="accessible by group or others"):
        load_seal_key(tmp_path / "node.seal")
    (got,) = problems(write_node(tmp_path, NODE + 'seal_key_file = "node.seal"\n'))
    assert "chmod 600" in got
