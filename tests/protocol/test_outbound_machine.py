"""The sending side as tables: every class of answer, the backoff schedule, batch ids, trimming.

Rows are plain values; the dice are a function the test picks (`HIGH` always
draws the cap, `LOW` always 0), the clock a number.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.errors import RelayError
from relay.protocol.outbound import (
    BATCH_OVERHEAD,
    MAX_BATCH_RECEIPTS,
    MISSING,
    Answer,
    Decision,
    GiveUp,
    HttpRefusal,
    NoResult,
    Planner,
    Retry,
    Settle,
    SignedResult,
    Split,
    retry_after_ms,
)
from relay.protocol.receipt import MAX_BATCH_RECEIPT_ENTRIES, MAX_RECEIPT_ENTRIES

NOW = 1_700_000_000_000
RETRY_MIN, RETRY_MAX = 1000, 60_000


@dataclass(frozen=True)
class Row:
    rid: int
    origin: str = "a.test"
    wire_size: int = 100
    kind: str = "message"

    @property
    def id(self) -> bytes:
        return self.rid.to_bytes(16, "big")


def rows(*rids: int, size: int = 100) -> list[Row]:
    return [Row(r, wire_size=size) for r in rids]


def planner(**kw: int) -> Planner[Row]:
    args = {
        "batch_envelopes": 500,
        "batch_bytes": 4096,
        "retry_min_ms": RETRY_MIN,
        "retry_max_ms": RETRY_MAX,
    }
    return Planner(**(args | kw))


def HIGH(lo: float, hi: float) -> float:
    return hi


def LOW(lo: float, hi: float) -> float:
    return lo


def none(origin: str) -> int:
    return 0


class Ids:
    """Fresh batch ids, counted."""

    def __init__(self) -> None:
        self.n = 0

    def __call__(self) -> bytes:
        self.n += 1
        return self.n.to_bytes(16, "big")


def show(d: Decision[Row]) -> str:
    """A decision as one short line for the tables."""
    match d:
        case Settle():
            parts = [f"settle delivered {[r.rid for r in d.delivered]}"]
            if d.rejected:
                parts.append(f"rejected {[(r.rid, c) for r, c in d.rejected]}")
            if d.missing:
                parts.append(f"missing {[r.rid for r in d.missing]}")
            if d.retry is not None:
                parts.append(show(d.retry))
            if d.defer_until:
                parts.append(f"deferred {d.defer_until - NOW}")
            return " ".join(parts)
        case Split():
            return f"split {d.limit}" + (" reread" if d.reread_limits else "")
        case GiveUp():
            return f"give up {d.item.rid} {d.code}" + (" reread" if d.reread_limits else "")
        case Retry():
            return f"retry {d.failures} wait {d.wait_ms}" + (" reread" if d.reread_limits else "")
    raise AssertionError(d)


def decide(n: int, answer: Answer, *, failures: int = 0, draw: Callable[..., float] = LOW) -> str:
    p = planner()
    p.plan(rows(*range(1, n + 1)), none, Ids())
    return show(p.answer(answer, failures=failures, now_ms=NOW, draw=draw))


def ok(**results: str) -> SignedResult:
    return SignedResult({int(k[1:]).to_bytes(16, "big"): v for k, v in results.items()})


IN_30S = format_datetime(datetime.fromtimestamp(NOW / 1000 + 30, UTC), usegmt=True)
AGO = format_datetime(datetime.fromtimestamp(NOW / 1000 - 30, UTC), usegmt=True)

ANSWER_CASES: list[tuple[str, int, Answer, str]] = [
    ("200 all accepted", 2, ok(r1="accepted", r2="accepted"), "settle delivered [1, 2]"),
    (
        "200 duplicate counts as delivered, a rejection ends one",
        2,
        ok(r1="duplicate", r2="rejected:unknown_mailbox"),
        "settle delivered [1] rejected [(2, 'unknown_mailbox')]",
    ),
    (
        "200 an id missing stays queued and counts as a failure",
        2,
        ok(r1="accepted"),
        "settle delivered [1] missing [2] retry 1 wait 10",
    ),
    ("200 nothing listed", 1, ok(), "settle delivered [] missing [1] retry 1 wait 10"),
    (
        "200 with Retry-After: only the missing ids wait, the peer is not failing",
        2,
        SignedResult({(1).to_bytes(16, "big"): "accepted"}, retry_after="30"),
        "settle delivered [1] missing [2] deferred 30000",
    ),
    (
        "200 with Retry-After over retry_max: they wait retry_max",
        1,
        SignedResult({}, retry_after="999999"),
        f"settle delivered [] missing [1] deferred {RETRY_MAX}",
    ),
    (
        "200 with Retry-After and nothing missing: settled",
        1,
        SignedResult({(1).to_bytes(16, "big"): "accepted"}, retry_after="30"),
        "settle delivered [1]",
    ),
    (
        "200 ids of another batch are ignored",
        1,
        ok(r9="accepted"),
        "settle delivered [] missing [1] retry 1 wait 10",
    ),
    ("400 malformed, several: halve", 5, HttpRefusal(400, "malformed"), "split 2"),
    ("400 malformed, two: halve to one", 2, HttpRefusal(400, "malformed"), "split 1"),
    (
        "413 too_large, several: halve, reread limits",
        4,
        HttpRefusal(413, "too_large"),
        "split 2 reread",
    ),
    ("400 too_large splits too", 2, HttpRefusal(400, "too_large"), "split 1"),
    ("413 malformed splits too", 2, HttpRefusal(413, "malformed"), "split 1 reread"),
    ("400 malformed, one: give it up", 1, HttpRefusal(400, "malformed"), "give up 1 malformed"),
    (
        "413 too_large, one: give it up",
        1,
        HttpRefusal(413, "too_large"),
        "give up 1 too_large reread",
    ),
    ("413 without its code: retry", 2, HttpRefusal(413), "retry 1 wait 10 reread"),
    ("400 digest_mismatch: retry", 2, HttpRefusal(400, "digest_mismatch"), "retry 1 wait 10"),
    ("400 clock_skew: retry", 1, HttpRefusal(400, "clock_skew"), "retry 1 wait 10"),
    ("400 replay: retry", 1, HttpRefusal(400, "replay"), "retry 1 wait 10"),
    ("400 wrong_destination: retry", 1, HttpRefusal(400, "wrong_destination"), "retry 1 wait 10"),
    ("400 not JSON: retry", 2, HttpRefusal(400, "", "<html>"), "retry 1 wait 10"),
    ("401 unknown_sender: retry", 1, HttpRefusal(401, "unknown_sender"), "retry 1 wait 10"),
    ("401 bad_signature: retry", 1, HttpRefusal(401, "bad_signature"), "retry 1 wait 10"),
    ("403: retry", 1, HttpRefusal(403, "forbidden"), "retry 1 wait 10"),
    ("404: retry", 1, HttpRefusal(404), "retry 1 wait 10"),
    (
        "429 with Retry-After: wait at least that",
        1,
        HttpRefusal(429, "rate_limited", retry_after="5"),
        "retry 1 wait 5000",
    ),
    ("429 without Retry-After", 1, HttpRefusal(429, "rate_limited"), "retry 1 wait 10"),
    (
        "503 busy with Retry-After",
        1,
        HttpRefusal(503, "busy", retry_after="2"),
        "retry 1 wait 2000",
    ),
    (
        "503 Retry-After as a date",
        1,
        HttpRefusal(503, "store", retry_after=IN_30S),
        "retry 1 wait 30000",
    ),
    (
        "503 Retry-After in the past",
        1,
        HttpRefusal(503, "store", retry_after=AGO),
        "retry 1 wait 10",
    ),
    (
        "503 Retry-After capped at retry_max",
        1,
        HttpRefusal(503, retry_after="86400"),
        "retry 1 wait 60000",
    ),
    (
        "503 Retry-After garbled: ignored",
        1,
        HttpRefusal(503, retry_after="soon"),
        "retry 1 wait 10",
    ),
    ("500 Retry-After is not honoured", 1, HttpRefusal(500, retry_after="5"), "retry 1 wait 10"),
    ("500", 2, HttpRefusal(500, "internal", "boom"), "retry 1 wait 10"),
    ("502", 1, HttpRefusal(502), "retry 1 wait 10"),
    ("301 is a failure, never followed", 1, HttpRefusal(301), "retry 1 wait 10"),
    ("302", 1, HttpRefusal(302), "retry 1 wait 10"),
    ("307 with Retry-After", 1, HttpRefusal(307, retry_after="5"), "retry 1 wait 10"),
    ("308", 2, HttpRefusal(308), "retry 1 wait 10"),
    ("connection refused", 2, NoResult("ClientConnectorError: refused"), "retry 1 wait 10"),
    ("timeout", 1, NoResult("TimeoutError"), "retry 1 wait 10"),
    ("result signed by another key", 1, NoResult("result signature: bad", 200), "retry 1 wait 10"),
    (
        "result for another nonce",
        1,
        NoResult("signed result is for another batch or nonce", 200),
        "retry 1 wait 10",
    ),
    (
        "413 answer over the size cap",
        1,
        NoResult("the answer is over 16 bytes", 413),
        "retry 1 wait 10 reread",
    ),
    ("no URL for the peer", 1, NoResult("cannot deliver to b.test: no url"), "retry 1 wait 10"),
]


@pytest.mark.parametrize(
    ("n", "answer", "expected"), [c[1:] for c in ANSWER_CASES], ids=[c[0] for c in ANSWER_CASES]
)
def test_every_answer_class(n: int, answer: Answer, expected: str) -> None:
    assert decide(n, answer) == expected


def test_errors_are_what_the_peer_said() -> None:
    p = planner()
    p.plan(rows(1), none, Ids())
    d = p.answer(HttpRefusal(500, "internal", "boom"), failures=0, now_ms=NOW, draw=LOW)
    assert isinstance(d, Retry) and d.error == "HTTP 500 internal: boom"
    p.plan(rows(1), none, Ids())
    d = p.answer(ok(), failures=0, now_ms=NOW, draw=LOW)
    assert isinstance(d, Settle) and d.retry is not None and d.retry.error == MISSING


# --- backoff ------------------------------------------------------------------------------

BACKOFF_CASES: list[tuple[str, int, Callable[..., float], int]] = [
    ("first failure, full cap", 0, HIGH, 1000),
    ("second failure doubles", 1, HIGH, 2000),
    ("sixth failure", 5, HIGH, 32_000),
    ("seventh reaches retry_max", 6, HIGH, 60_000),
    ("hundredth stays at retry_max", 99, HIGH, 60_000),
    ("jitter at its low end: 10 ms floor", 3, LOW, 10),
    ("jitter half way", 2, lambda lo, hi: hi / 2, 2000),
    ("a fraction of a ms rounds down", 0, lambda lo, hi: 10.9, 10),
    ("jitter just over the floor", 0, lambda lo, hi: 11.7, 11),
]


@pytest.mark.parametrize(
    ("failures", "draw", "wait"), [c[1:] for c in BACKOFF_CASES], ids=[c[0] for c in BACKOFF_CASES]
)
def test_backoff_schedule(failures: int, draw: Callable[..., float], wait: int) -> None:
    r = planner().backoff("e", failures, NOW, draw)
    assert (r.failures, r.wait_ms, r.next_try) == (failures + 1, wait, NOW + wait)


def test_retry_after_is_a_lower_bound_not_the_wait() -> None:
    p = planner()
    p.plan(rows(1), none, Ids())
    d = p.answer(HttpRefusal(429, retry_after="1"), failures=4, now_ms=NOW, draw=HIGH)
    assert isinstance(d, Retry) and d.wait_ms == 16_000  # the backoff was longer already


def test_the_dice_are_asked_for_zero_to_the_cap() -> None:
    asked: list[tuple[float, float]] = []

    def draw(lo: float, hi: float) -> float:
        asked.append((lo, hi))
        return lo

    planner().backoff("e", 2, NOW, draw)
    assert asked == [(0, 4000)]


@pytest.mark.parametrize(
    ("value", "ms"),
    [
        (None, None),
        ("0", 0),
        (" 7 ", 7000),
        ("-1", None),
        ("1.5", None),
        ("٣", None),
        ("", None),
        (IN_30S, 30_000),
        (AGO, 0),
        ("Thu, 01 Jan 2099 00:00:00", None),  # no zone
        ("yesterday", None),
    ],
)
def test_retry_after_header(value: str | None, ms: int | None) -> None:
    assert retry_after_ms(value, NOW) == ms


# --- batch ids ----------------------------------------------------------------------------

FAIL = HttpRefusal(500)
SPLIT = HttpRefusal(400, "malformed")

# (name, [(rows sent, answer to it)], the attempts whose id is new)
ID_CASES: list[tuple[str, list[tuple[list[int], Answer]], list[bool]]] = [
    ("a failure, then the same rows: same id", [([1, 2], FAIL), ([1, 2], FAIL)], [True, False]),
    ("three failures in a row", [([1], FAIL), ([1], FAIL), ([1], FAIL)], [True, False, False]),
    ("a row more: new id", [([1, 2], FAIL), ([1, 2, 3], FAIL)], [True, True]),
    ("the head expired: new id", [([1, 2], FAIL), ([2], FAIL)], [True, True]),
    ("same rows, other order: new id", [([1, 2], FAIL), ([2, 1], FAIL)], [True, True]),
    ("after a signed result: new id", [([1], ok(r1="accepted")), ([1], FAIL)], [True, True]),
    ("after missing ids: new id", [([1], ok()), ([1], FAIL)], [True, True]),
    ("after a split: new id", [([1, 2], SPLIT), ([1], FAIL)], [True, True]),
    ("after a give-up: new id", [([1], SPLIT), ([2], FAIL)], [True, True]),
    ("a connection error keeps it", [([1], NoResult("reset")), ([1], FAIL)], [True, False]),
    ("a 429 keeps it", [([1], HttpRefusal(429, retry_after="1")), ([1], FAIL)], [True, False]),
]


@pytest.mark.parametrize(
    ("attempts", "fresh"), [c[1:] for c in ID_CASES], ids=[c[0] for c in ID_CASES]
)
def test_batch_id_reuse(attempts: list[tuple[list[int], Answer]], fresh: list[bool]) -> None:
    p, ids = planner(), Ids()
    got: list[bool] = []
    for sent, answer in attempts:
        before = ids.n
        send = p.plan(rows(*sent), none, ids)
        got.append(ids.n > before)
        assert send.reused == (ids.n == before)
        p.answer(answer, failures=0, now_ms=NOW, draw=LOW)
    assert got == fresh


# --- trimming and the fetch limit ---------------------------------------------------------

TRIM_CASES: list[tuple[str, list[Row], dict[str, int], int | None, list[int]]] = [
    ("all fit", rows(1, 2, 3), {}, None, [1, 2, 3]),
    (
        "the byte budget ends the batch",
        rows(1, 2, 3, 4, 5, size=1000),
        {},
        None,
        [1, 2, 3, 4],  # 64 + 4 * 1000 <= 4096 < 64 + 5 * 1000
    ),
    ("exactly the budget", rows(1, 2, size=(4096 - BATCH_OVERHEAD) // 2), {}, None, [1, 2]),
    ("one byte over", rows(1, 2, size=(4096 - BATCH_OVERHEAD) // 2 + 1), {}, None, [1]),
    ("one row alone is sent however large", rows(1, 2, size=10_000), {}, None, [1]),
    ("the peer's limit is lower", rows(1, 2, 3, size=1000), {}, 2100, [1, 2]),
    (
        "the peer's limit higher changes nothing",
        rows(1, 2, 3, 4, 5, size=1000),
        {},
        9000,
        [1, 2, 3, 4],
    ),
    (
        "certificates count once per origin",
        [Row(1, "a.test", 1000), Row(2, "a.test", 1000), Row(3, "b.test", 1000)],
        {"a.test": 900, "b.test": 900},
        None,
        [1, 2],  # 64 + 1900 + 1000 + 1900 > 4096
    ),
    (
        "an origin without certificates adds nothing",
        [Row(1, "a.test", 1000), Row(2, "a.test", 1000), Row(3, "b.test", 1000)],
        {"a.test": 900},
        None,
        [1, 2, 3],
    ),
]


@pytest.mark.parametrize(
    ("given", "certs", "peer_max", "sent"),
    [c[1:] for c in TRIM_CASES],
    ids=[c[0] for c in TRIM_CASES],
)
def test_trim(
    given: list[Row], certs: dict[str, int], peer_max: int | None, sent: list[int]
) -> None:
    p = planner()
    p.peer_max_body = peer_max
    send = p.plan(given, lambda origin: certs.get(origin, 0), Ids())
    assert [r.rid for r in send.items] == sent


def test_the_fetch_limit_halves_on_split_and_comes_back() -> None:
    p, ids = planner(batch_envelopes=8), Ids()
    assert p.fetch_limit == 8
    p.plan(rows(*range(1, 9)), none, ids)
    assert isinstance(p.answer(SPLIT, failures=0, now_ms=NOW, draw=LOW), Split)
    assert p.fetch_limit == 4
    assert len(p.plan(rows(*range(1, 9)), none, ids).items) == 4  # more given, four sent
    p.answer(FAIL, failures=0, now_ms=NOW, draw=LOW)
    assert p.fetch_limit == 4  # a failure keeps the split size
    p.plan(rows(1), none, ids)
    assert isinstance(p.answer(SPLIT, failures=0, now_ms=NOW, draw=LOW), GiveUp)
    assert p.fetch_limit == 8
    p.plan(rows(1, 2), none, ids)
    p.answer(SPLIT, failures=0, now_ms=NOW, draw=LOW)
    assert p.fetch_limit == 1
    p.plan(rows(1), none, ids)
    p.answer(ok(r1="accepted"), failures=0, now_ms=NOW, draw=LOW)
    assert p.fetch_limit == 8


def test_misuse_is_refused() -> None:
    with pytest.raises(RelayError, match="nothing to send"):
        planner().plan([], none, Ids())
    with pytest.raises(RelayError, match="no batch was planned"):
        planner().answer(FAIL, failures=0, now_ms=NOW, draw=LOW)
    p = planner()
    p.plan(rows(1), none, Ids())
    p.answer(ok(r1="accepted"), failures=0, now_ms=NOW, draw=LOW)
    with pytest.raises(RelayError, match="no batch was planned"):
        p.answer(FAIL, failures=0, now_ms=NOW, draw=LOW)
    with pytest.raises(RelayError, match="retry_min"):
        planner(retry_min_ms=5, retry_max_ms=4)


# --- properties ---------------------------------------------------------------------------


@given(
    st.lists(st.booleans(), min_size=1, max_size=40),
    st.integers(1, 16),
    st.lists(st.integers(50, 2000), min_size=40, max_size=40),
)
def test_splitting_never_loses_or_duplicates_an_envelope(
    poison: list[bool], batch_envelopes: int, sizes: list[int]
) -> None:
    """A peer refusing any batch with a poisoned envelope as malformed: every good envelope
    is delivered once, every poisoned one given up once, and nothing else happens."""
    queue = [Row(i, wire_size=sizes[i]) for i in range(len(poison))]
    bad = {r.rid for r in queue if poison[r.rid]}
    p, ids = planner(batch_envelopes=batch_envelopes, batch_bytes=3000), Ids()
    delivered: list[int] = []
    given_up: list[int] = []
    for _ in range(10 * len(queue) + 10):
        if not queue:
            break
        send = p.plan(queue[: p.fetch_limit], none, ids)
        sent = [r.rid for r in send.items]
        assert sent == [r.rid for r in queue[: len(sent)]]
        if bad & set(sent):
            answer: Answer = SPLIT
        else:
            answer = SignedResult({r.id: "accepted" for r in send.items})
        d = p.answer(answer, failures=0, now_ms=NOW, draw=LOW)
        if isinstance(d, Settle):
            assert not d.missing and not d.rejected
            done = [r.rid for r in d.delivered]
            delivered += done
            queue = [r for r in queue if r.rid not in done]
        elif isinstance(d, GiveUp):
            given_up.append(d.item.rid)
            queue = [r for r in queue if r.rid != d.item.rid]
        else:
            assert isinstance(d, Split) and 1 <= d.limit < len(sent)
    assert queue == []
    assert sorted(delivered + given_up) == list(range(len(poison)))
    assert set(given_up) == bad


@given(
    st.lists(
        st.tuples(
            st.lists(st.integers(0, 4), min_size=1, max_size=4, unique=True),
            st.sampled_from(["fail", "ok", "split", "missing"]),
        ),
        min_size=1,
        max_size=12,
    )
)
def test_the_batch_id_is_reused_iff_the_failed_batch_is_sent_again(
    attempts: list[tuple[list[int], str]],
) -> None:
    p, ids = planner(), Ids()
    previous: tuple[bytes, list[int], str] | None = None
    for rids, kind in attempts:
        send = p.plan(rows(*rids), none, ids)
        sent = [r.rid for r in send.items]  # after a split, fewer than given
        again = previous is not None and previous[2] == "fail" and previous[1] == sent
        assert send.reused == again
        assert (previous is not None and send.batch_id == previous[0]) == again
        answers: dict[str, Answer] = {
            "fail": FAIL,
            "ok": SignedResult({r.id: "accepted" for r in send.items}),
            "split": SPLIT,
            "missing": SignedResult({}),
        }
        p.answer(answers[kind], failures=0, now_ms=NOW, draw=LOW)
        previous = (send.batch_id, sent, kind)


@pytest.mark.parametrize(
    ("kinds", "sent"),
    [
        (["receipt"] * (MAX_BATCH_RECEIPTS + 5), MAX_BATCH_RECEIPTS),
        (["message"] * 3 + ["receipt"] * (MAX_BATCH_RECEIPTS + 1), 3 + MAX_BATCH_RECEIPTS),
        (["receipt", "message"] * (MAX_BATCH_RECEIPTS + 1), 2 * MAX_BATCH_RECEIPTS),
        (["message"] * 40, 40),
    ],
)
def test_trim_stops_before_the_receivers_receipt_cap(kinds: list[str], sent: int) -> None:
    """However full each receipt is, a batch never passes the receiver's per-batch cap."""
    p = planner(batch_bytes=10_000_000)
    out = p.trim([Row(i, kind=k) for i, k in enumerate(kinds)], lambda o: 0)
    assert len(out) == sent
    assert [r.rid for r in out] == list(range(sent))
    worst = sum(1 for r in out if r.kind == "receipt") * MAX_RECEIPT_ENTRIES
    assert worst <= MAX_BATCH_RECEIPT_ENTRIES


@given(
    st.lists(st.tuples(st.integers(1, 3000), st.sampled_from("abc")), min_size=1, max_size=30),
    st.integers(1024, 8192),
    st.dictionaries(st.sampled_from("abc"), st.integers(0, 500)),
)
def test_trim_is_the_longest_prefix_within_the_budget(
    spec: list[tuple[int, str]], budget: int, certs: dict[str, int]
) -> None:
    given_rows = [Row(i, origin, size) for i, (size, origin) in enumerate(spec)]
    p = planner(batch_bytes=budget)
    out = p.trim(given_rows, lambda o: certs.get(o, 0))

    def cost(n: int) -> int:
        seen: set[str] = set()
        total = BATCH_OVERHEAD
        for r in given_rows[:n]:
            total += r.wire_size + (0 if r.origin in seen else certs.get(r.origin, 0))
            seen.add(r.origin)
        return total

    assert list(out) == given_rows[: len(out)] and out
    assert len(out) == 1 or cost(len(out)) <= budget
    assert len(out) == len(given_rows) or cost(len(out) + 1) > budget


def test_new_settings_apply_at_once_and_the_fetch_limit_at_its_next_reset() -> None:
    p, ids = planner(batch_envelopes=8), Ids()
    p.plan(rows(*range(1, 9)), none, ids)
    p.answer(SPLIT, failures=0, now_ms=NOW, draw=LOW)
    p.tune(batch_envelopes=100, batch_bytes=1024, retry_min_ms=5, retry_max_ms=50)
    assert p.fetch_limit == 4
    assert [r.rid for r in p.plan(rows(1, 2, 3, size=400), none, ids).items] == [1, 2]
    d = p.answer(ok(r1="accepted", r2="accepted"), failures=0, now_ms=NOW, draw=LOW)
    assert isinstance(d, Settle) and p.fetch_limit == 100
    assert p.backoff("e", 9, NOW, HIGH).wait_ms == 50
    with pytest.raises(RelayError, match="batch_envelopes 0"):
        p.tune(batch_envelopes=0, batch_bytes=1024, retry_min_ms=5, retry_max_ms=50)
