"""relay.node.trace: stored rows to a timeline, with tables of rows and no database."""

from __future__ import annotations

from relay.node.trace import Event, timeline
from relay.protocol.audit import encode_entry
from relay.protocol.receipt import Receipt, encode_receipt
from relay.storage.audit import delivered_event, receipt_event
from relay.storage.erasure import Erasure
from relay.storage.records import (
    AllowRecord,
    Attempt,
    DecisionRecord,
    TracedEnvelope,
    TracedInbox,
    TracedQueue,
    TracedReceipt,
    TracedRecipient,
    TracedStatement,
    TraceRows,
)

T = 1_700_000_000_000
MSG = b"\x01" * 16
OTHER = b"\x02" * 16


def env(
    ident: bytes = MSG, *, from_peer: str | None = None, content: bool = True
) -> TracedEnvelope:
    return TracedEnvelope(
        rid=1, id=ident, origin="a.test", kind="message", sender="alice@a.test",
        dest="b.test", created=T, expires=T + 1, received=T, size=12, residency="RU",
        from_peer=from_peer, rule_id="keep-home" if from_peer else "", has_content=content,
    )  # fmt: skip


def receipt(writer: str, ids: list[bytes], status: str = "delivered", reason: str = "") -> bytes:
    entries = tuple((i, ("bob@b.test",)) for i in ids)
    return encode_receipt(Receipt(status, reason, T, "RU", "enforce", entries))


def texts(events: list[Event]) -> list[tuple[str, str]]:
    return [(e.what, e.text) for e in events]


def test_origin_submitted_queued_denied_then_receipt_and_status() -> None:
    rows = TraceRows(
        envelopes=(env(),),
        recipients=(TracedRecipient("bob@b.test", 1, "alice", "delivered", "", T + 40),),
        queue=(TracedQueue(1, "b.test", T + 1, 2, "HTTP 503", True),),
        receipts=(
            TracedReceipt("b.test", "a.test", T + 30, receipt("b.test", [OTHER, MSG])),
            TracedReceipt("b.test", "a.test", T + 31, receipt("b.test", [OTHER])),  # not ours
            TracedReceipt("b.test", "a.test", T + 32, b"\xc1 not msgpack"),  # skipped
        ),
    )
    allows = [AllowRecord(T, "submit", MSG, "b.test", "builtin:default", "RU", "h")]
    decisions = [DecisionRecord(T + 2, "forward", MSG, "b.test", "audit", "r1", "would deny", "h")]
    assert texts(timeline("a.test", rows, decisions, allows)) == [
        ("submitted",
         "submitted by alice@a.test for b.test: 12 bytes, residency RU, rule builtin:default"),
        ("queued", "queued for b.test, on hold: 2 attempt(s) so far; last error: HTTP 503"),
        ("decision", "decision at forward: audit, rule r1 peer b.test: would deny"),
        ("receipt_received", "receipt from b.test: delivered for bob@b.test"),
        ("status", "bob@b.test: delivered"),
    ]  # fmt: skip


def test_destination_received_delivered_receipt_read_and_purged_content() -> None:
    rows = TraceRows(
        envelopes=(env(from_peer="a.test", content=False),),
        inbox=(TracedInbox(1, "bob", T + 1, T + 9),),
        receipts=(TracedReceipt("b.test", "a.test", T + 5, receipt("b.test", [MSG])),),
    )
    events = timeline("b.test", rows, [], [])
    assert texts(events) == [
        ("received",
         "received from a.test: alice@a.test to b.test, 12 bytes, residency RU, rule keep-home"),
        ("inbox_delivered", "in mailbox bob"),
        ("receipt_written", "receipt to a.test: delivered for bob@b.test"),
        ("inbox_read", "read and acknowledged by bob"),
        ("content_removed", "content no longer stored (retention or erasure)"),
    ]  # fmt: skip
    assert {e.envelope for e in events} == {MSG.hex()}
    assert events[-1].at == 0  # the database keeps no time for it: listed last


def test_nothing_stored_is_an_empty_timeline() -> None:
    assert timeline("a.test", TraceRows(), [], []) == []


def test_erasure_replaces_content_removed_and_outlives_the_rows() -> None:
    rows = TraceRows(envelopes=(env(content=False),))
    erased = Erasure("a.test", MSG, "erased", T + 5, T + 6, 0, "sender", "alice", "GDPR art. 17")
    events = timeline("a.test", rows, [], [], [erased])
    assert texts(events)[-1] == ("erased", "content erased, asked by alice (sender): GDPR art. 17")
    assert "content_removed" not in [e.what for e in events]
    # the envelope's rows purged since: the record alone still tells
    assert texts(timeline("a.test", TraceRows(), [], [], [erased])) == [
        ("erased", "content erased, asked by alice (sender): GDPR art. 17")
    ]
    held = Erasure("a.test", MSG, "held", T + 5, 0, 1_700_086_400_000, "admin", "root", "")
    assert texts(timeline("a.test", TraceRows(), [], [], [held])) == [
        ("erasure_held",
         "erasure asked by root (admin); content held until 2023-11-15T22:13:20Z"
         " by a minimum retention"),
    ]  # fmt: skip
    # held, its content since removed by retention: that removal is still told
    assert "content_removed" in [e.what for e in timeline("a.test", rows, [], [], [held])]


def test_origin_shows_a_delivery_stated_by_the_destinations_signed_result() -> None:
    batch = b"\xbb" * 16
    stated = delivered_event(T + 30, MSG, batch, "b.test", "RU")
    receipted = receipt_event(T + 31, MSG, b"\xee" * 16, "b.test", "delivered", "", "RU")
    rows = TraceRows(
        envelopes=(env(),),
        recipients=(TracedRecipient("bob@b.test", 1, "alice", "delivered", "", T + 30),),
        statements=(
            TracedStatement(T + 30, encode_entry(7, T + 30, stated.kind, stated.fields)),
            # a receipt's entry: the receipt envelope itself is what trace shows for it
            TracedStatement(T + 31, encode_entry(8, T + 31, receipted.kind, receipted.fields)),
            TracedStatement(T + 32, b"\xc1 not an entry"),  # skipped
        ),
    )
    assert texts(timeline("a.test", rows, [], []))[1:] == [
        ("delivery_stated", f"b.test's signed batch result {'bb' * 16}: delivered in RU"),
        ("status", "bob@b.test: delivered"),
    ]


def test_each_attempt_is_listed_with_its_hop_and_outcome_in_time_order() -> None:
    error = "ClientConnectorError: Cannot connect to host 127.0.0.1:9"
    rows = TraceRows(
        envelopes=(env(),),
        recipients=(TracedRecipient("bob@b.test", 1, "alice", "sent", "", T + 90),),
        attempts=(
            Attempt(1, "b.test", T + 10, T + 13, "unreachable", "", error, 3),
            Attempt(1, "b.test", T + 40, T + 45, "retry", "busy", "HTTP 503 busy: later", 3),
            Attempt(1, "b.test", T + 80, T + 92, "accepted", "", "", 1),
            Attempt(9, "c.test", T + 81, T + 80, "rejected", "residency", "", 1),  # no envelope
        ),
    )
    events = timeline("a.test", rows, [], [])
    assert texts(events) == [
        ("submitted", "submitted by alice@a.test for b.test: 12 bytes, residency RU"),
        ("attempt", f"to b.test: unreachable: {error} (batch of 3, 3 ms)"),
        ("attempt", "to b.test: retry busy: HTTP 503 busy: later (batch of 3, 5 ms)"),
        ("attempt", "to b.test: accepted (batch of 1, 12 ms)"),
        ("attempt", "to c.test: rejected residency (batch of 1, 0 ms)"),
        ("status", "bob@b.test: sent"),
    ]
    assert [e.at for e in events if e.what == "attempt"] == [T + 10, T + 40, T + 80, T + 81]
    assert [e.envelope for e in events if e.what == "attempt"] == [MSG.hex()] * 3 + [""]
