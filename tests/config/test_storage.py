"""The `[storage]` table: url (sqlite:PATH or postgresql://...) and password_file.

Bad configs mark the line each problem must be reported at with `#!`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from relay.config.files import load_config, read_password_file
from relay.config.keys import generate_key_file
from relay.config.model import StorageConfig
from relay.errors import ConfigErrors

NODE = """\
[node]
name = "msk.example.ru"
jurisdiction = "RU"
listen = "127.0.0.1:8701"
key_file = "node.key"
"""


def write(directory: Path, text: str) -> Path:
    generate_key_file(directory / "node.key")
    file = directory / "node.toml"
    file.write_text(text, encoding="utf-8")
    return file


def problems(file: Path) -> list[str]:
    with pytest.raises(ConfigErrors) as info:
        load_config(file)
    return [e.detail for e in info.value.errors]


def marked(text: str) -> int:
    (line,) = [i for i, ln in enumerate(text.splitlines(), start=1) if "#!" in ln]
    return line


def test_default_is_the_sqlite_file_in_the_node_directory(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, NODE))
    db = tmp_path / "relay.db"
    assert config.storage == StorageConfig(f"sqlite:{db}", sqlite_path=db)
    assert (config.storage.backend, config.storage.target) == ("sqlite", db)
    assert config.node.database == db


def test_node_database_is_still_the_default_file(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, NODE + 'database = "data/x.db"\n'))
    assert config.storage.target == tmp_path / "data/x.db"


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("sqlite:relay2.db", "relay2.db"),
        ("sqlite:data/r.db", "data/r.db"),
        ("sqlite:/abs/r.db", "/abs/r.db"),
    ],
)
def test_sqlite_url_relative_to_the_node_directory(tmp_path: Path, url: str, path: str) -> None:
    config = load_config(write(tmp_path, NODE + f'[storage]\nurl = "{url}"\n'))
    expected = tmp_path / path
    assert config.storage == StorageConfig(url, sqlite_path=expected)
    assert config.node.database == expected  # the SQLite tools read the same file


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://relay@db.example.ru/relay",
        "postgres://relay@127.0.0.1:5433/relay",
        "postgresql://127.0.0.1:5432/test",
        "postgresql://relay@[::1]/relay?schema=node_a",
        "postgresql://relay@db/relay?schema=a1&sslmode=verify-full",
    ],
)
def test_postgresql_url(tmp_path: Path, url: str) -> None:
    config = load_config(write(tmp_path, NODE + f'[storage]\nurl = "{url}"\n'))
    assert config.storage == StorageConfig(url)
    assert (config.storage.backend, config.storage.target) == ("postgresql", url)


def test_password_file_mode_0600_is_taken(tmp_path: Path) -> None:
    secret = tmp_path / "db.password"
    secret.write_text("s3cret\n")
    secret.chmod(0o600)
    text = NODE + '[storage]\nurl = "postgresql://relay@db/relay"\npassword_file = "db.password"\n'
    config = load_config(write(tmp_path, text))
    assert config.storage.password_file == secret
    assert read_password_file(secret) == "s3cret"


@pytest.mark.parametrize(
    ("storage", "reason"),
    [
        (
            'url = "postgresql://relay:hunter2@db/relay"  #!',
            "storage.url: storage url 'postgresql://relay:***@db/relay' holds a password: "
            "node.toml is world-readable",
        ),
        (
            'url = "postgresql://relay@db/relay?password=hunter2"  #!',
            "holds a password",
        ),
        ('url = "mysql://relay@db/relay"  #!', "use sqlite:PATH or postgresql://USER@HOST/DBNAME"),
        ('url = "relay.db"  #!', "use sqlite:PATH"),
        ('url = "sqlite:"  #!', "no path"),
        ('url = "sqlite:///var/relay.db"  #!', "write sqlite:PATH"),
        ('url = "postgresql:///relay"  #!', "no host"),
        ('url = "postgresql://relay@db"  #!', "name one database"),
        ('url = "postgresql://relay@db:0/relay"  #!', "port 0"),
        ('url = "postgresql://relay@db:99999/relay"  #!', "bad storage url"),
        ('url = "postgresql://relay@db/relay?schema=Bad-Name"  #!', "not a lowercase SQL"),
        ('url = "postgresql://relay@db/relay?sslmode=maybe"  #!', "sslmode 'maybe'"),
        ('url = "postgresql://relay@db/relay?pool=9"  #!', "unknown parameter 'pool'"),
        ('url = "postgresql://relay@db/relay?schema=a&schema=b"  #!', "schema given twice"),
        ("url = 5  #!", "expected a string, got an integer"),
        ('url = "sqlite:r.db"\npassword_file = "pw"  #!', "SQLite has no password"),
        ('password_file = "pw"  #!', "only together with a postgresql:// url"),
        ('url = "postgresql://relay@db/relay"\npool = 4  #!', "storage.pool: unknown key"),
    ],
)
def test_bad_storage_is_refused_at_its_line(tmp_path: Path, storage: str, reason: str) -> None:
    text = NODE + "[storage]\n" + storage + "\n"
    found = problems(write(tmp_path, text))
    assert len(found) == 1
    assert found[0].startswith(f"{tmp_path / 'node.toml'}:{marked(text)}: ")
    assert reason in found[0]
    assert "hunter2" not in found[0]


def test_node_database_and_storage_url_together_are_refused(tmp_path: Path) -> None:
    text = NODE + 'database = "a.db"\n[storage]\nurl = "sqlite:b.db"  #!\n'
    (found,) = problems(write(tmp_path, text))
    assert f":{marked(text)}: storage.url: [node] database is set too" in found


@pytest.mark.parametrize(
    ("content", "mode", "reason"),
    [
        ("pw\n", 0o640, "accessible by group or others (mode 0640); run: chmod 600"),
        ("pw\n", 0o604, "accessible by group or others (mode 0604)"),
        ("", 0o600, "expected the password on one line"),
        ("a\nb\n", 0o600, "expected the password on one line"),
        (None, 0, "no such password file"),
    ],
)
def test_bad_password_file_is_refused(
    tmp_path: Path, content: str | None, mode: int, reason: str
) -> None:
    if content is not None:
        (tmp_path / "pw").write_text(content)
        (tmp_path / "pw").chmod(mode)
    text = NODE + '[storage]\nurl = "postgresql://relay@db/relay"\npassword_file = "pw"  #!\n'
    (found,) = problems(write(tmp_path, text))
    assert f":{marked(text)}: storage.password_file: " in found
    assert reason in found


def test_password_file_that_is_a_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "pw").mkdir()
    with pytest.raises(ValueError, match="not a regular file"):
        read_password_file(tmp_path / "pw")
