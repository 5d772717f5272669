"""parse_config reads no file; load_config and validate_config check the files
node.toml names and report them like any other problem: FILE:LINE: key: reason,
in file order, together with the problems of the text itself."""

from __future__ import annotations

from pathlib import Path

import pytest

from relay.config.files import load_config, validate_config
from relay.config.keys import generate_key_file
from relay.config.parse import parse_config
from relay.errors import ConfigErrors
from relay.protocol.keystr import public_key_string

# Every [node] and [trust] key below names a file that does not exist; the
# retention line is a text problem, so one list must hold both kinds.
MISSING_FILES = """\
[node]
name = "a.test"
jurisdiction = "DE"
listen = "127.0.0.1:8701"
key_file = "missing.key"
tls_cert = "tls.pem"
certificates = ["node.cert"]

[retention]
content_min_days = 400

[trust]
certificates_dir = "no-certs"
revoked = "no-revoked.txt"
"""


def line_of(text: str, start: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if line.startswith(start))


def test_parse_config_reads_no_file(tmp_path: Path) -> None:
    text = MISSING_FILES.replace("content_min_days = 400", "content_min_days = 1")
    config = parse_config(text, tmp_path / "node.toml")
    assert config.node.key_file == tmp_path / "missing.key"
    assert config.node.certificates == (tmp_path / "node.cert",)
    assert config.trust.certificates_dir == tmp_path / "no-certs"


def test_load_config_reports_file_and_text_problems_in_file_order(tmp_path: Path) -> None:
    file = tmp_path / "node.toml"
    file.write_text(MISSING_FILES, encoding="utf-8")
    with pytest.raises(ConfigErrors) as info:
        load_config(tmp_path)
    found = [(e.line, e.key) for e in info.value.errors]
    assert found == [
        (line_of(MISSING_FILES, "key_file"), "node.key_file"),
        (line_of(MISSING_FILES, "tls_cert"), "node.tls_cert"),
        (line_of(MISSING_FILES, "certificates ="), "node.certificates"),
        (line_of(MISSING_FILES, "content_min_days"), "retention.content_min_days"),
        (line_of(MISSING_FILES, "certificates_dir"), "trust.certificates_dir"),
        (line_of(MISSING_FILES, "revoked"), "trust.revoked"),
    ]
    details = [e.reason for e in info.value.errors]
    assert details[0] == f"{tmp_path}/missing.key: no such key file (`relay init` creates one)"
    assert details[2] == f"no such certificate file: {tmp_path}/node.cert"
    assert details[4] == f"no such directory: {tmp_path}/no-certs"
    assert details[5] == f"no such file: {tmp_path}/no-revoked.txt"


def test_the_signing_key_is_checked_only_once_the_key_file_is_read(tmp_path: Path) -> None:
    signing = public_key_string(generate_key_file(tmp_path / "node.key").public_key())
    text = (
        '[node]\nname = "a.test"\njurisdiction = "DE"\nlisten = "127.0.0.1:8701"\n'
        f'key_file = "node.key"\nrevoked_keys = ["{signing}"]\n'
    )
    file = tmp_path / "node.toml"
    assert parse_config(text, file).node.revoked_keys == (signing,)
    with pytest.raises(ConfigErrors) as info:
        validate_config(text, file)
    [error] = info.value.errors
    assert (error.line, error.key) == (6, "node.revoked_keys")
    assert error.reason.startswith(f"{signing} is the signing key (key_file)")
