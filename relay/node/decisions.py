"""The decision log's records, built from policy decisions in one way everywhere."""

from __future__ import annotations

from relay.policy.residency import Decision
from relay.storage.records import DecisionRecord


def refusal(rule: str, reason: str) -> Decision:
    """A denial that reached us as an error (rule and reason), as a Decision."""
    return Decision(allowed=False, outcome="deny", rule=rule, reason=reason)


def decision_record(
    point: str, d: Decision, *, at: int, envelope: bytes | None, peer: str, policy_hash: str
) -> DecisionRecord:
    """The decision-log record of `d`, taken at `point` about `envelope` going to `peer`."""
    return DecisionRecord(
        at=at,
        point=point,
        envelope=envelope,
        peer=peer,
        outcome=d.outcome,
        rule=d.rule,
        reason=d.reason,
        policy_hash=policy_hash,
    )
