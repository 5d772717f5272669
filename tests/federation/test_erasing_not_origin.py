"""relay.federation.erasing.take: a request naming another origin's message is refused.

An erasure request from origin O for an envelope id this node holds only as
another origin's copy is `not_origin` (docs/erasure.md): O may erase its own
messages, never P's, even under the same id. Both backends, through `take`
inside a write job, with the node reduced to its name (the refusal needs no
more of it).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import cast

from relay.federation import erasing
from relay.node.state import NodeState
from relay.storage.interface import Storage, WriteTx
from relay.storage.records import NewEnvelope
from tests.storage.conftest import backend, storage, target
from tests.storage.contract import T0, envelope, erasure_request, new, put

__all__ = ["backend", "storage", "target"]  # the storage contract's fixtures, both backends

HERE = "here.test"


async def test_a_request_for_another_origins_copy_is_refused_and_erases_nothing(
    storage: Storage,
) -> None:
    mine = envelope(origin="p.test")
    await put(storage, [new(mine, mailboxes=["bob"])])
    state = cast(NodeState, SimpleNamespace(name=HERE))
    item = new(erasure_request("o.test", mine.header.id), hop="far.test", from_peer="o.test")

    async def job(tx: WriteTx) -> tuple[list[NewEnvelope], dict[bytes, str]]:
        return await erasing.take(state, tx, [item], "o.test", T0 + 1)

    stored, refused = await storage.write(job)
    assert stored == [] and list(refused.values()) == ["not_origin"]
    assert await storage.erasure_records([("p.test", mine.header.id)]) == {}
    (kept,) = await storage.inbox("bob", 0, 10)
    assert kept.payload == b"hello"
