"""Receipts that name many envelopes (docs/security.md finding 5).

A batch of receipts listing ids this node never sent must cost one set-wise
lookup and one log line per receipt, change no status, and stop at
MAX_BATCH_RECEIPT_ENTRIES entries per batch.
"""

from __future__ import annotations

import logging
import os

import pytest

from relay.protocol.batch import BatchItem
from relay.protocol.envelope import peek_id
from relay.protocol.receipt import (
    MAX_BATCH_RECEIPT_ENTRIES,
    MAX_RECEIPT_ENTRIES,
)
from tests.federation.conftest import Harness, Identity

FULL_RECEIPTS_PER_BATCH = MAX_BATCH_RECEIPT_ENTRIES // MAX_RECEIPT_ENTRIES


@pytest.fixture
def max_body_bytes() -> int:
    return 1024 * 1024  # room for a batch of full receipts


def unknown_ids_receipt(
    h: Harness,
    entries: int = MAX_RECEIPT_ENTRIES,
    *,
    writer: Identity | None = None,
    also: tuple[bytes, ...] = (),
) -> BatchItem:
    """A `delivered` receipt listing `entries` ids this node never sent, then `also`."""
    ids = [os.urandom(16) for _ in range(entries - len(also))] + list(also)
    return h.receipt(writer or h.a, [(i, ("carol@a.test",)) for i in ids])


def relay_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name.startswith("relay")]


def fields(record: logging.LogRecord) -> dict[str, object]:
    return dict(getattr(record, "relay_fields", {}))


async def test_a_flood_of_unknown_ids_logs_one_line_per_receipt_and_changes_nothing(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    h = harness
    msg_id = await h.submit(["carol@a.test"])
    before = await h.status(msg_id)
    # x.test is not on the message's path: its entry for it is ignored too.
    off_path = unknown_ids_receipt(h, writer=h.x, also=(bytes.fromhex(msg_id),))
    items = [unknown_ids_receipt(h) for _ in range(FULL_RECEIPTS_PER_BATCH - 1)] + [off_path]
    caplog.set_level(logging.DEBUG, logger="relay")
    caplog.clear()

    result = await h.send(items)

    assert set(result.results.values()) == {"accepted"}
    records = relay_records(caplog)
    applied = [fields(r) for r in records if r.getMessage() == "receipt_applied"]
    counts = [
        (f["peer"], f["entries"], f["applied"], f["ignored_unknown"], f["ignored_off_path"])
        for f in applied
    ]
    full = MAX_RECEIPT_ENTRIES
    assert sorted(counts) == sorted(
        [("a.test", full, 0, full, 0)] * (len(items) - 1) + [("x.test", full, 0, full - 1, 1)]
    )
    assert len(records) <= len(items) + 5, [r.getMessage() for r in records]
    assert await h.status(msg_id) == before


async def test_receipt_entries_over_the_batch_cap_are_refused(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    h = harness
    fit = [unknown_ids_receipt(h) for _ in range(FULL_RECEIPTS_PER_BATCH - 1)]
    small = unknown_ids_receipt(h, MAX_RECEIPT_ENTRIES - 1)
    over, last = unknown_ids_receipt(h, 2), unknown_ids_receipt(h, 1)
    caplog.set_level(logging.INFO, logger="relay")

    result = await h.send([*fit, small, over, last])

    ids = [peek_id(it.header_bytes) for it in (*fit, small, over, last)]
    assert [result.results[i] for i in ids] == ["accepted"] * (len(fit) + 1) + [
        "rejected:malformed",
        "accepted",
    ]
    assert not await h.stored(h.a.name, ids[-2])
    [refused] = [fields(r) for r in caplog.records if r.getMessage() == "envelope_refused"]
    assert (refused["envelope"], refused["code"]) == (ids[-2], "malformed")
    assert f"more than {MAX_BATCH_RECEIPT_ENTRIES} entries" in str(refused["detail"])
