"""relay.node.state: what NodeState takes from its caller."""

from __future__ import annotations

from pathlib import Path

import pytest

from relay.config.files import load_config
from relay.node.state import NodeState
from relay.storage.backends import open_storage
from tests.federation.conftest import lone_node, write_node_toml


async def test_the_fault_spec_is_passed_in_not_read_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RELAY_FAULT", "commit_delay_ms=5")
    key = write_node_toml(tmp_path, peers=[])
    config = load_config(tmp_path)
    storage = await open_storage(config.node.database)
    try:
        plain = NodeState(config, key, storage)
        assert plain.fault == "" and storage.before_commit is None
        held = NodeState(config, key, storage, fault_spec="commit_delay_ms=5")
        assert held.faults.commit_delay_ms == 5 and storage.before_commit is not None
    finally:
        await storage.close()


async def test_a_contact_wakes_only_a_sender_waiting_out_a_backoff(tmp_path: Path) -> None:
    async with lone_node(tmp_path) as state:
        woken: list[str] = []
        state.wake_hop = woken.append
        state.peer_contacted("b.test")  # not backing off: nothing to cut short
        assert woken == [] and state.backoff_over("b.test") is False
        state.waiting_out_backoff("b.test")
        state.peer_contacted("b.test")
        state.peer_contacted("b.test")  # one wake-up is enough
        assert woken == ["b.test"]
        assert state.backoff_over("b.test") is True
        assert state.backoff_over("b.test") is False  # the contact is used up
        state.peer_contacted("b.test")  # the sender no longer waits
        assert woken == ["b.test"]
