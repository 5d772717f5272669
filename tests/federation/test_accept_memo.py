"""relay.federation.inbound.AcceptMemo: one accept decision per (residency, trace) in a batch."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import cast

from relay.federation.inbound import AcceptMemo
from relay.node.state import NodeState
from relay.policy.residency import Policy, check_accept

KZ = Policy(
    jurisdiction="KZ",
    default_residency=frozenset({"KZ"}),
    allowed_residency=frozenset({"KZ", "RU"}),
    export_to=frozenset({"KZ", "RU"}),
    import_from=frozenset({"KZ", "RU"}),
)


@dataclass
class FakeTrust:
    places: dict[str, str]
    asked: list[str] = field(default_factory=list)

    def jurisdiction(self, name: str) -> str | None:
        self.asked.append(name)
        return self.places.get(name)


@dataclass
class FakeState:
    policy: Policy
    trust: FakeTrust


def state_of(policy: Policy, trust: FakeTrust) -> NodeState:
    return cast(NodeState, FakeState(policy, trust))


def test_the_same_question_is_answered_once_per_batch() -> None:
    trust = FakeTrust({"a.test": "RU", "b.test": "KZ"})
    st = state_of(KZ, trust)
    memo = AcceptMemo()
    first = memo.accept(st, ("KZ", "RU"), ("a.test",))
    assert first.allowed
    assert memo.accept(st, ("KZ", "RU"), ("a.test",)) is first
    assert trust.asked == ["a.test"]
    # another set, another trace: asked again, each its own decision
    other = memo.accept(st, ("KZ",), ("a.test",))
    assert not other.allowed  # a.test is in RU, outside {KZ}
    via = memo.accept(st, ("KZ", "RU"), ("a.test", "b.test"))
    assert via == check_accept(KZ, ("KZ", "RU"), holders=[("a.test", "RU"), ("b.test", "KZ")])
    assert trust.asked == ["a.test", "a.test", "a.test", "b.test"]


def test_a_replaced_policy_or_trust_is_asked_afresh() -> None:
    trust = FakeTrust({"a.test": "RU"})
    st = FakeState(KZ, trust)
    memo = AcceptMemo()
    assert memo.accept(cast(NodeState, st), ("KZ", "RU"), ("a.test",)).allowed
    st.policy = replace(KZ, import_from=frozenset({"KZ"}))  # a reload: RU no longer imported
    assert not memo.accept(cast(NodeState, st), ("KZ", "RU"), ("a.test",)).allowed
    st.trust = FakeTrust({"a.test": "KZ"})
    assert memo.accept(cast(NodeState, st), ("KZ", "RU"), ("a.test",)).allowed
