"""The `[metrics]` table and the webhook keys of `[[mailboxes]]`.

Bad configs mark the line each problem must be reported at with `#!`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from relay.config.files import load_config
from relay.config.keys import generate_key_file
from relay.config.model import Mailbox, MetricsConfig
from relay.errors import ConfigErrors

NODE = """\
[node]
name = "msk.example.ru"
jurisdiction = "RU"
listen = "127.0.0.1:8701"
key_file = "node.key"
"""
HASH = "ab" * 32
MAILBOX = f'[[mailboxes]]\nname = "alice"\ntoken_sha256 = "{HASH}"\n'


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


def test_no_metrics_table_means_no_listener_token_or_mailbox_labels(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, NODE)).metrics == MetricsConfig(None, 0, None, False)


def test_metrics_listen_and_token(tmp_path: Path) -> None:
    text = NODE + f'[metrics]\nlisten = "[::1]:9701"\ntoken_sha256 = "{HASH}"\n'
    assert load_config(write(tmp_path, text)).metrics == MetricsConfig("::1", 9701, HASH)


def test_metrics_token_alone(tmp_path: Path) -> None:
    text = NODE + f'[metrics]\ntoken_sha256 = "{HASH}"\n'
    assert load_config(write(tmp_path, text)).metrics == MetricsConfig(None, 0, HASH)


@pytest.mark.parametrize(
    ("body", "key", "reason"),
    [
        ('listen = "9701" #!', "metrics.listen", "bad listen address '9701'"),
        ('listen = "h:70000" #!', "metrics.listen", "port over 65535"),
        ("listen = 9701 #!", "metrics.listen", "expected a string, got an integer"),
        ('token_sha256 = "AB" #!', "metrics.token_sha256", "expected 64 lowercase hex digits"),
        ("path = '/m' #!", "metrics.path", "unknown key"),
    ],
)
def test_bad_metrics_table(tmp_path: Path, body: str, key: str, reason: str) -> None:
    text = NODE + "[metrics]\n" + body + "\n"
    file = write(tmp_path, text)
    (problem,) = problems(file)
    assert problem.startswith(f"{file}:{marked(text)}: {key}: "), problem
    assert reason in problem, problem


def test_webhook_jurisdiction_defaults_to_none_meaning_the_nodes(tmp_path: Path) -> None:
    text = NODE + MAILBOX + 'webhook = "https://hooks.example.ru/a"\n'
    (mb,) = load_config(write(tmp_path, text)).mailboxes
    assert mb == Mailbox("alice", HASH, "https://hooks.example.ru/a", None)


def test_webhook_jurisdiction(tmp_path: Path) -> None:
    text = NODE + MAILBOX + 'webhook = "https://h.example.kz/a"\nwebhook_jurisdiction = "KZ"\n'
    (mb,) = load_config(write(tmp_path, text)).mailboxes
    assert (mb.webhook, mb.webhook_jurisdiction) == ("https://h.example.kz/a", "KZ")


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ('webhook = "https://h/a"\nwebhook_jurisdiction = "kz" #!', "bad country code 'kz'"),
        ('webhook = "https://h/a"\nwebhook_jurisdiction = "XX" #!', "bad country code 'XX'"),
        ('webhook_jurisdiction = "KZ" #!', "set only together with webhook"),
    ],
)
def test_bad_webhook_jurisdiction(tmp_path: Path, body: str, reason: str) -> None:
    text = NODE + MAILBOX + body + "\n"
    file = write(tmp_path, text)
    (problem,) = problems(file)
    key = "mailboxes[0].webhook_jurisdiction"
    assert problem.startswith(f"{file}:{marked(text)}: {key}: "), problem
    assert reason in problem, problem
