"""Erasure by ids through the admin API's one limit (relay.node.queueops.MAX_IDS).

The admin's erasure by ids and the queue's actions read their ids alike: 1 to
10,000, one message past that. Erasure used to stop at 1,000 with a sentence
of its own, after parse_ids had taken up to 10,000.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from relay.errors import BadRequest
from relay.node import erasure, queueops
from tests.federation.conftest import lone_node
from tests.storage.contract import envelope, new, put


def test_one_limit_and_one_message_for_the_admin_apis_id_lists() -> None:
    ids = [os.urandom(16).hex() for _ in range(queueops.MAX_IDS + 1)]
    assert len(queueops.parse_ids(ids[:-1])) == queueops.MAX_IDS
    with pytest.raises(BadRequest) as e:
        queueops.parse_ids(ids)
    assert e.value.detail == "at most 10000 ids at once"
    with pytest.raises(BadRequest, match="non-empty list"):
        queueops.parse_ids([])


async def test_the_admin_erases_by_more_than_a_thousand_ids(tmp_path: Path) -> None:
    async with lone_node(tmp_path) as state:
        env = envelope(origin=state.name, to=["x@far.test"], dest="far.test")
        await put(state.store, [new(env, hop="far.test", from_peer=None)])
        absent = [os.urandom(16).hex() for _ in range(1_500)]
        ids = queueops.parse_ids([*absent[:700], env.header.id.hex(), *absent[700:]])
        result = await erasure.erase_for_admin(state, ids, "a court order")
    assert [(r.id, r.status) for r in result.records] == [(env.header.id, "erased")]
    assert result.unknown == tuple(absent)
