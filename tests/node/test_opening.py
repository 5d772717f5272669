"""relay.node.opening: every command reaches the storage `[storage] url` names."""

from __future__ import annotations

from pathlib import Path

import pytest

from relay.cli import main as cli
from relay.config.files import load_config
from relay.config.storage import PASSWORD_ENV
from relay.errors import StoreError
from relay.node.opening import sqlite_file, storage_password

PG_URL = "postgresql://relay@127.0.0.1/relay"


def make_node(directory: Path, storage: str) -> Path:
    assert (
        cli.main(["init", str(directory), "--name", "msk.example.ru", "--jurisdiction", "RU"]) == 0
    )
    toml = directory / "node.toml"
    text = toml.read_text().replace('database = "relay.db"\n', "")
    toml.write_text(text + f"\n[storage]\n{storage}\n")
    return directory


def test_sqlite_url_is_the_file_every_command_uses(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    node = make_node(tmp_path / "n", 'url = "sqlite:data/n.db"')
    (node / "data").mkdir()
    config = load_config(node)
    assert sqlite_file(config, "relay backup", "-") == node / "data/n.db"
    capsys.readouterr()
    assert cli.main(["backup", str(node), str(tmp_path / "copy.db")]) == 1
    assert f"no database at {node / 'data/n.db'}" in capsys.readouterr().err


def test_backup_of_a_postgresql_node_points_at_pg_dump(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    node = make_node(tmp_path / "n", f'url = "{PG_URL}"')
    capsys.readouterr()
    assert cli.main(["backup", str(node), str(tmp_path / "copy.db")]) == 1
    err = capsys.readouterr().err
    assert "`relay backup` works on a SQLite node's database file" in err
    assert PG_URL in err and "pg_dump" in err and "docs/backup.md" in err
    assert not (tmp_path / "copy.db").exists()
    assert cli.main(["restore", str(node), str(tmp_path / "copy.db")]) == 1
    assert "pg_restore" in capsys.readouterr().err


def test_password_file_wins_over_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    node = make_node(tmp_path / "n", f'url = "{PG_URL}"\npassword_file = "pw"')
    (node / "pw").write_text("from-file\n")
    (node / "pw").chmod(0o600)
    monkeypatch.setenv(PASSWORD_ENV, "from-env")
    config = load_config(node)
    assert storage_password(config.storage, config.path) == "from-file"
    (node / "pw").chmod(0o644)  # loosened after the config was checked: refused at open
    with pytest.raises(StoreError, match=r"password_file in .*node\.toml.*chmod 600"):
        storage_password(config.storage, config.path)


def test_password_from_the_environment_or_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = load_config(make_node(tmp_path / "n", f'url = "{PG_URL}"'))
    monkeypatch.setenv(PASSWORD_ENV, "from-env")
    assert storage_password(config.storage, config.path) == "from-env"
    monkeypatch.delenv(PASSWORD_ENV)
    assert storage_password(config.storage, config.path) is None
