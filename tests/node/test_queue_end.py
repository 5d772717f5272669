"""relay.node.queue_end: the one way a queued envelope ends undelivered."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from relay.node.erasure import path_nodes
from relay.node.queue_end import Ending, end_queued
from relay.protocol.erasure import decode_answer, encode_answer
from relay.storage.backends import open_storage
from relay.storage.erasure import StoredAnswer
from relay.storage.interface import Storage, WriteTx
from relay.storage.records import DecisionRecord, Queued, Recipient
from tests.protocol.test_erasure import _env
from tests.storage.contract import HERE, T0, envelope, erasure_request, new, put


@pytest.fixture
async def storage(tmp_path: Path) -> AsyncIterator[Storage]:
    s = await open_storage(tmp_path / "relay.db")
    try:
        yield s
    finally:
        await s.close()


async def test_origin_status_relayed_receipt_decision_and_log(
    storage: Storage, caplog: pytest.LogCaptureFixture
) -> None:
    mine = envelope(origin=HERE, to=["x@far.test"], dest="far.test")
    relayed = envelope(origin="o.test", to=["y@far.test"], dest="far.test")
    rids = await put(
        storage, [new(mine, hop="far.test", from_peer=None), new(relayed, hop="far.test")]
    )

    async def recipients(tx: WriteTx) -> None:
        await tx.add_recipients(
            [Recipient(mine.header.id, "x@far.test", rids[0], "alice", "queued", T0)]
        )

    await storage.write(recipients)
    denial = DecisionRecord(
        T0 + 1, "recheck", relayed.header.id, "far.test", "deny", "r1", "no", "h"
    )

    async def end(tx: WriteTx) -> list[Queued]:
        items = await tx.queued(rids)
        endings = [
            Ending(items[0], "expired", "expires", "expires passed before delivery"),
            Ending(items[1], "rejected", "residency", "no", denial),
        ]
        await end_queued(tx, HERE, endings, T0 + 1, by="test")
        return items

    with caplog.at_level(logging.WARNING, logger="relay.queue"):
        await storage.write(end)

    assert await storage.queue_length() == 0
    statuses = await storage.recipient_statuses(mine.header.id, "alice")
    assert [(s.status, s.reason) for s in statuses] == [("expired", "expires")]
    pending = await storage.write(lambda tx: tx.pending_receipts(10))
    assert [(p.origin, p.id, p.status, p.reason, p.recipients) for p in pending] == [
        ("o.test", relayed.header.id, "rejected", "residency", ("y@far.test",))
    ]
    assert await storage.decisions(None, None, 10) == [denial]
    ended = [r for r in caplog.records if r.getMessage() == "envelope_ended"]
    assert len(ended) == 2


async def test_a_receipt_never_gets_a_receipt(storage: Storage) -> None:
    (rid,) = await put(
        storage,
        [new(envelope(origin="o.test", dest="far.test", to=["p@far.test"]), hop="far.test")],
    )

    async def end(tx: WriteTx) -> None:
        (item,) = await tx.queued([rid])
        receipt = replace(item, kind="receipt")
        await end_queued(tx, HERE, [Ending(receipt, "expired", "expires")], T0, by="test")

    await storage.write(end)
    assert await storage.queue_length() == 0
    assert await storage.write(lambda tx: tx.pending_receipts(10)) == []
    await storage.write(lambda tx: end_queued(tx, HERE, [], T0, by="test"))  # nothing to end


async def test_an_erasure_request_that_ends_is_recorded_for_the_origins_status(
    storage: Storage,
) -> None:
    request = erasure_request(HERE, b"\x07" * 16, ident=b"\x08" * 16)
    (rid,) = await put(storage, [new(request, hop="old.test", from_peer=None)])

    async def end(tx: WriteTx) -> None:
        (item,) = await tx.queued([rid])
        await end_queued(tx, HERE, [Ending(item, "rejected", "malformed")], T0 + 1, by="peer")

    await storage.write(end)
    (d,) = await storage.decisions(request.header.id, None, 10)
    assert (d.point, d.peer, d.outcome, d.reason) == ("erase", "old.test", "rejected", "malformed")
    # the origin's status names the hop as refusing it, with the code
    assert path_nodes("old.test", None, False, T0 + 1000, T0 + 2, "", (d.outcome, d.reason)) == [
        {"node": "old.test", "status": "refused", "detail": "malformed"}
    ]
    assert path_nodes("old.test", None, False, T0 + 1000, T0 + 2, "") == [
        {"node": "old.test", "status": "pending", "detail": ""}
    ]
    assert path_nodes("old.test", None, False, T0 + 1000, T0 + 1000, "")[0]["status"] == (
        "unreachable"
    )


async def test_a_refusal_two_hops_away_stays_at_the_relay_that_met_it(
    storage: Storage, caplog: pytest.LogCaptureFixture
) -> None:
    """docs/erasure.md, Limits: c.test took a.test's request and answered naming
    b.test; b.test refused the request c.test sent on. The protocol carries no
    refusal in an answer (a node answers only a request it took, protocol.md §20),
    so c.test records and logs it, and a.test shows b.test pending, then
    unreachable once the request expired."""
    request = erasure_request("a.test", b"\x07" * 16, dest="b.test")
    header = request.header
    (rid,) = await put(storage, [new(request, hop="b.test")])

    async def end(tx: WriteTx) -> None:
        (item,) = await tx.queued([rid])
        await end_queued(tx, HERE, [Ending(item, "rejected", "residency")], T0 + 1, by="peer")

    with caplog.at_level(logging.WARNING, logger="relay.queue"):
        await storage.write(end)
    (d,) = await storage.decisions(header.id, None, 10)  # at c.test: the hop and the code
    assert (d.point, d.peer, d.outcome, d.reason) == ("erase", "b.test", "rejected", "residency")
    (logged,) = [dict(getattr(r, "relay_fields", {})) for r in caplog.records]
    assert (logged["peer"], logged["status"], logged["reason"]) == (
        "b.test",
        "rejected",
        "residency",
    )

    # at a.test: c.test's answer names b.test, with no answer of b.test's nested
    answer = replace(decode_answer(_env("answer_c_to_a")[2]), downstream=())
    kept = StoredAnswer(header.id, "c.test", T0, b"", b"", encode_answer(answer))
    shown = [
        (n["node"], n["status"]) for n in path_nodes("c.test", kept, False, T0 + 1000, T0 + 5, "")
    ]
    assert shown == [("c.test", "erased"), ("b.test", "pending")]
    late = path_nodes("c.test", kept, False, T0 + 1000, T0 + 1000, "")
    assert [(n["node"], n["status"]) for n in late] == [
        ("c.test", "erased"),
        ("b.test", "unreachable"),
    ]
