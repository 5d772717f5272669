"""What one delivery attempt came to for each envelope of its batch (no I/O).

The sender records these as the rows of the `attempts` table; `relay trace`
lists them. Outcomes:

- accepted, duplicate: the peer's signed result took the envelope;
- rejected: the signed result refused it (`code` is the peer's item code),
  or the peer refused a batch of this one envelope for good (a give-up);
- deferred: left out of a signed result that came with Retry-After (the
  peer's mailbox is full); it waits, the peer is not failing;
- retry: the peer answered but not with a usable result for it (an HTTP
  refusal, a redirect, a result that does not verify, or left out of a
  result without Retry-After); `code` is the refusal's code, if any;
- unreachable: no HTTP answer at all (connection refused, timeout, no URL);
- split: the batch was too large for the peer; it is sent again in a
  smaller batch at once.

Invariants: every envelope of the batch gets exactly one outcome, in batch
order; `error` is empty exactly for accepted, duplicate and a signed
refusal.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic

from relay.errors import RelayError
from relay.protocol.outbound import (
    DEFERRED,
    Answer,
    Decision,
    GiveUp,
    HttpRefusal,
    NoResult,
    Q,
    Retry,
    Settle,
    SignedResult,
    Split,
)


@dataclass(frozen=True, slots=True)
class Outcome(Generic[Q]):
    """One envelope's part in an attempt."""

    item: Q
    outcome: str
    code: str = ""
    error: str = ""


def outcomes(items: Sequence[Q], answer: Answer, decision: Decision[Q]) -> list[Outcome[Q]]:
    """The outcome of each of `items` (the batch sent) after `answer` and the
    planner's `decision` on it."""
    if isinstance(decision, Settle) and isinstance(answer, SignedResult):
        refused = {it.rid: code for it, code in decision.rejected}
        out: list[Outcome[Q]] = []
        for it in items:
            result = answer.results.get(it.id)
            if it.rid in refused:
                out.append(Outcome(it, "rejected", refused[it.rid]))
            elif result is not None:
                out.append(Outcome(it, result))
            elif decision.defer_until:
                out.append(Outcome(it, "deferred", error=DEFERRED))
            else:
                error = decision.retry.error if decision.retry is not None else ""
                out.append(Outcome(it, "retry", error=error))
        return out
    code = answer.code if isinstance(answer, HttpRefusal) else ""
    if isinstance(decision, GiveUp):
        return [
            Outcome(it, "rejected", decision.code, decision.error)
            if it.rid == decision.item.rid
            else Outcome(it, "retry", code, decision.error)
            for it in items
        ]
    if isinstance(decision, Split):
        return [Outcome(it, "split", code, decision.error) for it in items]
    if isinstance(decision, Retry):
        unreachable = isinstance(answer, NoResult) and answer.status == 0
        what = "unreachable" if unreachable else "retry"
        return [Outcome(it, what, code, decision.error) for it in items]
    raise RelayError(f"outcomes: a {type(decision).__name__} decision on a {type(answer).__name__}")
