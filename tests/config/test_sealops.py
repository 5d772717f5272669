"""`relay init` seal keys, `relay seal init|show|rotate|revoke`, `relay peer add --seal-key`
(relay.config.sealops, relay.cli.seal; docs/sealing.md)."""

from __future__ import annotations

import json
import re
import stat
from pathlib import Path

import pytest

from relay.cli import main as cli
from relay.config.files import load_config
from relay.config.sealkeys import load_seal_key
from relay.config.sealops import seal_init, seal_revoke, seal_rotate
from relay.errors import BadRequest, NotFound
from relay.policy.certs import decode_line
from relay.protocol.certificate import open_certificate
from relay.protocol.sealing import CLASSIC, HYBRID, parse_seal_key


def init(tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str = "a.test") -> str:
    directory = tmp_path / name
    assert cli.main(["init", str(directory), "--name", name, "--jurisdiction", "RU"]) == 0
    line: str = capsys.readouterr().out.strip()
    return line


def test_init_makes_a_seal_key_and_prints_it_in_the_peer_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    line = init(tmp_path, capsys)
    config = load_config(tmp_path / "a.test")
    seal_file = tmp_path / "a.test" / "node.seal"
    assert config.node.seal_key_file == seal_file
    assert stat.S_IMODE(seal_file.stat().st_mode) == 0o600
    key = load_seal_key(seal_file)
    assert key.suite == HYBRID
    assert line.endswith(f"--seal-key {key.public.string}")
    # the line works as printed on another node: the peer is pinned with its seal key
    init(tmp_path, capsys, "b.test")
    words = line.split()[4:]
    assert cli.main(["peer", "add", str(tmp_path / "b.test"), *words]) == 0
    (peer,) = load_config(tmp_path / "b.test").peers
    assert peer.seal_keys == (key.public.string,)


def test_peer_update_replaces_seal_keys_and_refuses_a_bad_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    line = init(tmp_path, capsys)
    init(tmp_path, capsys, "b.test")
    b = str(tmp_path / "b.test")
    assert cli.main(["peer", "add", b, *line.split()[4:]]) == 0
    other = load_seal_key(tmp_path / "b.test" / "node.seal").public.string
    assert cli.main(["peer", "update", b, "--name", "a.test", "--seal-key", other]) == 0
    assert load_config(tmp_path / "b.test").peers[0].seal_keys == (other,)
    assert cli.main(["peer", "update", b, "--name", "a.test", "--seal-key", "x25519:AA"]) == 2
    assert "expected 32 bytes" in capsys.readouterr().err


def test_seal_init_is_the_migration_step_for_older_nodes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    init(tmp_path, capsys)
    directory = tmp_path / "a.test"
    toml = directory / "node.toml"
    toml.write_text(re.sub(r"(?m)^seal_key_file = .*\n", "", toml.read_text()))
    (directory / "node.seal").unlink()
    assert load_config(directory).node.seal_key_file is None
    change = seal_init(directory, CLASSIC)
    assert change.config.node.seal_key_file == directory / "node.seal"
    assert change.current.suite == CLASSIC
    with pytest.raises(BadRequest, match="already names seal_key_file"):
        seal_init(directory)
    assert cli.main(["seal", "show", str(directory)]) == 0
    assert capsys.readouterr().out.strip() == change.current.public.string


def test_rotate_retires_the_old_key_and_revoke_withdraws_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    init(tmp_path, capsys)
    directory = tmp_path / "a.test"
    first = load_seal_key(directory / "node.seal")
    rotated = seal_rotate(directory, CLASSIC)
    node = rotated.config.node
    assert rotated.old == first.public.string
    assert node.seal_key_file == rotated.file != directory / "node.seal"
    assert node.retired_seal_key_files == (directory / "node.seal",)
    assert cli.main(["seal", "show", str(directory), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    states = {k["key_id"]: k["state"] for k in shown["seal_keys"]}
    assert states == {rotated.current.public.key_id: "current", first.public.key_id: "retired"}

    revoked = seal_revoke(directory, first.public.key_id)
    node = revoked.config.node
    assert node.retired_seal_key_files == () and node.revoked_seal_keys == (first.public.string,)
    assert not (directory / "node.seal").exists()  # the private key of a revoked key is gone
    with pytest.raises(NotFound):
        seal_revoke(directory, first.public.key_id)

    # revoking the current key makes a new one first
    again = seal_revoke(directory, rotated.current.public.key_id)
    assert again.current.public.string != rotated.current.public.string
    assert again.config.node.seal_key_file == again.file
    assert set(again.config.node.revoked_seal_keys) == {
        first.public.string,
        rotated.current.public.string,
    }
    parse_seal_key(again.current.public.string)


def test_rotate_needs_a_seal_key_first(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    init(tmp_path, capsys)
    directory = tmp_path / "a.test"
    toml = directory / "node.toml"
    toml.write_text(re.sub(r"(?m)^seal_key_file = .*\n", "", toml.read_text()))
    with pytest.raises(BadRequest, match="relay seal init"):
        seal_rotate(directory)
    assert cli.main(["seal", "show", str(directory)]) == 1


def test_an_authority_puts_seal_keys_in_a_certificate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    line = init(tmp_path, capsys)
    node_key = line.split("--key ")[1].split()[0]
    seal_key = line.split("--seal-key ")[1].split()[0]
    auth = str(tmp_path / "auth")
    assert cli.main(["authority", "init", auth, "--name", "reg.test", "--jurisdictions", "RU"]) == 0
    capsys.readouterr()
    issue = ["authority", "issue", auth, "--node-name", "a.test", "--node-key", node_key]
    issue += ["--jurisdiction", "RU", "--url", "http://a.test", "--days", "30"]
    assert cli.main([*issue, "--node-seal-key", seal_key]) == 0
    cert, _, _ = open_certificate(decode_line(capsys.readouterr().out.strip()))
    assert cert.seal_keys == (seal_key,)
    assert cli.main([*issue, "--node-seal-key", "x25519:AA"]) == 2
    assert "expected 32 bytes" in capsys.readouterr().err
