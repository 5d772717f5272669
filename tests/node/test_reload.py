"""relay.node.reload.merge: which new values a reload takes and which wait for a restart."""

from __future__ import annotations

from pathlib import Path

from relay.config.files import load_config
from relay.node.reload import merge
from tests.inprocess import write_node


def test_a_reload_keeps_mailbox_labels_and_idle_timeout_until_a_restart(tmp_path: Path) -> None:
    write_node(tmp_path, "n.test")
    old = load_config(tmp_path)
    write_node(
        tmp_path,
        "n.test",
        tables={
            "metrics": {"mailbox_labels": True},
            "limits": {"idle_timeout": "5s", "header_timeout": "3s"},
        },
    )
    new = load_config(tmp_path)
    merged, restart = merge(old, new)
    assert restart == ("metrics.mailbox_labels", "limits.idle_timeout")
    assert merged.metrics.mailbox_labels is False
    assert merged.limits.idle_timeout_ms == old.limits.idle_timeout_ms
    assert merged.limits.header_timeout_ms == 3_000  # taken at once, for new connections


def test_a_reload_keeps_the_storage_until_a_restart(tmp_path: Path) -> None:
    write_node(tmp_path, "n.test")
    old = load_config(tmp_path)
    toml = tmp_path / "node.toml"
    text = toml.read_text().replace('database = "relay.db"\n', "")
    toml.write_text(text + '\n[storage]\nurl = "postgresql://relay@db.example/relay"\n')
    new = load_config(tmp_path)
    merged, restart = merge(old, new)
    assert restart == ("storage.url",)
    assert merged.storage == old.storage
    assert merged.storage.backend == "sqlite"
