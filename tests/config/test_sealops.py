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
from relay.config.model import DAY_MS, RetiredSealKey
from relay.config.sealkeys import load_seal_key
from relay.config.sealops import seal_init, seal_revoke, seal_rotate
from relay.errors import BadRequest, NotFound
from relay.protocol.sealing import CLASSIC, HYBRID, parse_seal_key

NOW = 1_900_000_000_000


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
    now = NOW
    rotated = seal_rotate(directory, CLASSIC, now_ms=now)
    node = rotated.config.node
    assert rotated.old == first.public.string
    assert node.seal_key_file == rotated.file != directory / "node.seal"
    # the default grace is the signing keys': twice the queue lifetime (5 days)
    until = now + 10 * DAY_MS
    assert node.retired_seal_keys == (RetiredSealKey(directory / "node.seal", until),)
    assert rotated.valid_until_ms == until
    assert cli.main(["seal", "show", str(directory), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    states = {k["key_id"]: (k["state"], k.get("valid_until")) for k in shown["seal_keys"]}
    assert states[rotated.current.public.key_id] == ("current", None)
    assert states[first.public.key_id] in (("retired", until), ("expired", until))

    revoked = seal_revoke(directory, first.public.key_id)
    node = revoked.config.node
    assert node.retired_seal_keys == () and node.revoked_seal_keys == (first.public.string,)
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
        seal_rotate(directory, now_ms=NOW)
    assert cli.main(["seal", "show", str(directory)]) == 1


def test_rotate_grace_expiry_and_show(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    init(tmp_path, capsys)
    directory = tmp_path / "a.test"
    with pytest.raises(BadRequest, match="shorter than the queue lifetime"):
        seal_rotate(directory, now_ms=NOW, grace_ms=DAY_MS)
    one = seal_rotate(directory, CLASSIC, now_ms=NOW, grace_ms=5 * DAY_MS + 1)
    assert one.valid_until_ms == NOW + 5 * DAY_MS + 1000  # rounded up to a whole second
    text = (directory / "node.toml").read_text()
    assert '{file = "node.seal", valid_until = ' in text
    # a second rotation after the first retired key expired drops it and its file
    later = NOW + 6 * DAY_MS
    two = seal_rotate(directory, CLASSIC, now_ms=later, grace_ms=5 * DAY_MS)
    assert two.dropped == (directory / "node.seal",) and not (directory / "node.seal").exists()
    assert [r.file for r in two.config.node.retired_seal_keys] == [one.file]
    # relay seal rotate --grace, and show prints each retired key's valid_until
    assert cli.main(["seal", "rotate", str(directory), "--grace", "1h"]) == 1
    assert "shorter than the queue lifetime" in capsys.readouterr().err
    assert cli.main(["seal", "rotate", str(directory), "--grace", "7d"]) == 0
    err = capsys.readouterr().err
    assert "opens mail sealed to it until 20" in err
    # a retired key past its valid_until (by the wall clock) shows as expired
    toml = directory / "node.toml"
    name = one.file.name
    toml.write_text(
        re.sub(
            rf'(file = "{name}", valid_until = )[^}}]*',
            r"\g<1>2001-01-01T00:00:00Z",
            toml.read_text(),
        )
    )
    assert cli.main(["seal", "show", str(directory)]) == 0
    shown = capsys.readouterr()
    current = load_config(directory).node.seal_key_file
    assert current is not None and shown.out.strip() == load_seal_key(current).public.string
    expired_line = f"expired seal key {one.current.public.key_id}: opened mail until 2001-01-01T"
    assert expired_line in shown.err
    assert f"retired seal key {two.current.public.key_id}: opens mail until 20" in shown.err
    assert cli.main(["seal", "show", str(directory), "--json"]) == 0
    states = [
        (k["state"], k.get("valid_until")) for k in json.loads(capsys.readouterr().out)["seal_keys"]
    ]
    assert states[:3] == [
        ("current", None),
        ("retired", states[1][1]),
        ("expired", 978_307_200_000),
    ]
