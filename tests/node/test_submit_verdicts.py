"""relay.node.submit's memos: residency verdicts once per inputs per policy, addresses
split once."""

from __future__ import annotations

from typing import Any

import pytest

from relay.errors import BadRequest, MalformedError
from relay.node import submit
from relay.policy import residency
from relay.policy.residency import Policy
from relay.protocol.names import split_address

EU = frozenset({"DE", "FR", "NL"})


def policy(allowed: frozenset[str]) -> Policy:
    return Policy(
        jurisdiction="DE",
        default_residency=frozenset({"DE"}),
        allowed_residency=allowed,
        export_to=EU,
        groups={"EU": EU},
    )


@pytest.fixture
def stamps(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Every call of `stamp` the verdicts make."""
    calls: list[object] = []

    def counted(*args: Any, **kwargs: Any) -> residency.Decision:
        calls.append(args[1])
        return residency.stamp(*args, **kwargs)

    monkeypatch.setattr(submit, "stamp", counted)
    return calls


def verdicts(p: Policy, requested: list[str] | None, hops: list[tuple[str, str | None]]) -> Any:
    return submit.residency_verdicts(p, requested, "alice", "b.test", "FR", "text/plain", hops)


def test_the_same_inputs_under_one_policy_are_judged_once(stamps: list[object]) -> None:
    p = policy(EU)
    first = verdicts(p, ["EU"], [])
    assert first[0].allowed and first[1] is not None and first[1].allowed
    assert first[0].residency == ("DE", "FR", "NL")
    assert verdicts(p, ["EU"], []) == first and stamps == [["EU"]]
    verdicts(p, ["FR", "DE"], [])  # other inputs: judged on their own
    verdicts(p, ["EU"], [("r.test", "NL")])
    assert stamps == [["EU"], ["FR", "DE"], ["EU"]]


def test_a_reloaded_policy_judges_again(stamps: list[object]) -> None:
    assert verdicts(policy(EU), ["FR"], [])[0].allowed
    narrower = policy(frozenset({"DE"}))  # a reload builds a new Policy object
    stamped, checked = verdicts(narrower, ["FR"], [])
    assert not stamped.allowed and checked is None
    assert stamped.rule == residency.RULE_ALLOWED and len(stamps) == 2


def test_a_hop_outside_the_set_is_refused_by_check_submit() -> None:
    stamped, checked = verdicts(policy(EU), ["DE", "FR"], [("r.test", "NL")])
    assert stamped.allowed and checked is not None and not checked.allowed
    assert checked.rule == residency.RULE_HOP


def test_a_bad_request_is_raised_every_time(stamps: list[object]) -> None:
    p = policy(EU)
    for _ in range(2):
        with pytest.raises(BadRequest, match="unknown residency"):
            verdicts(p, ["Atlantis"], [])
    assert len(stamps) == 2


def test_an_address_is_split_as_split_address_does_and_a_bad_one_refused_each_time() -> None:
    for addr in ("bob@b.test", "bob@b.test", "carol+x@c.example"):
        assert submit.split(addr) == split_address(addr)
    for _ in range(2):
        with pytest.raises(MalformedError, match="invalid node name"):
            submit.split("bob@B.test")
