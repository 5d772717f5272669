"""relay.protocol.attempt: each envelope's outcome of an attempt, as a table."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from relay.errors import RelayError
from relay.protocol.attempt import outcomes
from relay.protocol.outbound import (
    DEFERRED,
    MISSING,
    Answer,
    Decision,
    GiveUp,
    HttpRefusal,
    NoResult,
    Retry,
    Settle,
    SignedResult,
    Split,
)


@dataclass(frozen=True)
class Row:
    rid: int
    id: bytes
    origin: str = "a.test"
    kind: str = "message"
    wire_size: int = 100


A, B, C = Row(1, b"\x01" * 16), Row(2, b"\x02" * 16), Row(3, b"\x03" * 16)
RETRY = Retry("HTTP 503 busy: try later", 1, 50, 1050)

CASES: list[tuple[str, Answer, Decision[Row], list[tuple[str, str, str]]]] = [
    (
        "signed result: accepted, duplicate, refused with its code",
        SignedResult({A.id: "accepted", B.id: "duplicate", C.id: "rejected:residency"}),
        Settle((A, B), ((C, "residency"),), (), None),
        [("accepted", "", ""), ("duplicate", "", ""), ("rejected", "residency", "")],
    ),
    (
        "missing from a signed result: a retry with the planner's error",
        SignedResult({A.id: "accepted"}),
        Settle((A,), (), (B, C), Retry(MISSING, 1, 50, 1050)),
        [("accepted", "", ""), ("retry", "", MISSING), ("retry", "", MISSING)],
    ),
    (
        "missing with Retry-After: deferred",
        SignedResult({A.id: "accepted"}, "30"),
        Settle((A,), (), (B,), None, 31_000),
        [("accepted", "", ""), ("deferred", "", DEFERRED)],
    ),
    (
        "no connection: unreachable",
        NoResult("ClientConnectorError: Cannot connect to host 127.0.0.1:9"),
        Retry("ClientConnectorError: Cannot connect to host 127.0.0.1:9", 1, 50, 1050),
        [("unreachable", "", "ClientConnectorError: Cannot connect to host 127.0.0.1:9")] * 2,
    ),
    (
        "an answer that is no result (a redirect): retry",
        NoResult("HTTP 302 redirect to 'x' not followed", 302),
        Retry("HTTP 302 redirect to 'x' not followed", 1, 50, 1050),
        [("retry", "", "HTTP 302 redirect to 'x' not followed")] * 2,
    ),
    (
        "an HTTP refusal: retry with its code",
        HttpRefusal(503, "busy", "try later"),
        RETRY,
        [("retry", "busy", RETRY.error)] * 2,
    ),
    (
        "too large for the peer: split",
        HttpRefusal(413, "too_large", "body over 1000 bytes"),
        Split(1, "HTTP 413 too_large: body over 1000 bytes"),
        [("split", "too_large", "HTTP 413 too_large: body over 1000 bytes")] * 2,
    ),
]


@pytest.mark.parametrize(("name", "answer", "decision", "want"), CASES, ids=[c[0] for c in CASES])
def test_outcomes(
    name: str, answer: Answer, decision: Decision[Row], want: list[tuple[str, str, str]]
) -> None:
    items = [A, B, C][: len(want)]
    got = outcomes(items, answer, decision)
    assert [o.item for o in got] == items  # one each, in batch order
    assert [(o.outcome, o.code, o.error) for o in got] == want


def test_a_give_up_rejects_the_one_envelope_sent() -> None:
    error = "HTTP 413 too_large: body over 1000 bytes"
    (got,) = outcomes([A], HttpRefusal(413, "too_large", "x"), GiveUp(A, "too_large", error))
    assert (got.item, got.outcome, got.code, got.error) == (A, "rejected", "too_large", error)


def test_a_settle_without_a_signed_result_is_a_bug_not_an_outcome() -> None:
    with pytest.raises(RelayError, match="Settle decision on a NoResult"):
        outcomes([A], NoResult("x"), Settle((A,), (), (), None))
