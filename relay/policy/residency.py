"""Residency decisions (DESIGN §7). Pure: no I/O, no clock, no asyncio.

Invariants:
- Every decision is a `Decision(allowed, outcome, rule, reason, residency)`:
  outcome "deny" is never allowed; "audit" is a would-be denial let through
  because the policy's mode is "audit" (rule and reason kept); "allow" carries
  rule "" or, from `stamp`, the id of the first limit rule that narrowed the
  set. `residency` is always a sorted tuple of codes.
- Unknown means deny: a node whose jurisdiction is not trusted (None here:
  neither pinned nor certified), or is not an ISO code, is never inside any
  set.
- A residency code that is not in this node's ISO list is kept but never
  matched, since every jurisdiction compared with it is an ISO code.
- This node's own jurisdiction counts as inside `export_to` and `import_from`:
  those lists govern what crosses the border, not delivery inside it.
- An empty residency set is refused even in audit mode: an envelope cannot
  carry one (DESIGN §4).

Built-in checks have stable rule ids, listed in BUILTIN_RULES; config must
refuse user rule ids that start with "builtin:".
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

from relay.errors import BadRequest
from relay.protocol.iso3166 import is_country

Effect = Literal["deny", "limit"]
Mode = Literal["enforce", "audit"]
Outcome = Literal["allow", "deny", "audit"]


@dataclass(frozen=True, slots=True)
class Rule:
    """One `[[policy.rules]]` entry. A condition left as None matches anything;
    a tuple matches when the value is one of its members."""

    id: str
    effect: Effect
    senders: tuple[str, ...] | None = None  # mailbox names at this node
    dest_nodes: tuple[str, ...] | None = None
    dest_jurisdictions: tuple[str, ...] | None = None
    ctypes: tuple[str, ...] | None = None
    residency: frozenset[str] = frozenset()  # for effect == "limit": expanded codes


@dataclass(frozen=True, slots=True)
class Policy:
    """The policy in force at one node, groups already expanded to codes."""

    jurisdiction: str
    mode: Mode = "enforce"
    default_residency: frozenset[str] = frozenset()
    allowed_residency: frozenset[str] = frozenset()
    export_to: frozenset[str] = frozenset()
    import_from: frozenset[str] = frozenset()
    groups: dict[str, frozenset[str]] = field(default_factory=dict)
    rules: tuple[Rule, ...] = ()


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    outcome: Outcome
    rule: str
    reason: str
    residency: tuple[str, ...] = ()


# Stable ids of the built-in checks.
RULE_EMPTY = "builtin:empty_residency"  # stamp: the requested/default set is empty
RULE_ALLOWED = "builtin:allowed_residency"  # stamp: nothing left after allowed_residency
RULE_OWN = "builtin:own_jurisdiction"  # this node's jurisdiction is outside the set
RULE_UNKNOWN = "builtin:unknown_jurisdiction"  # a node with no trusted jurisdiction
RULE_DEST = "builtin:dest_jurisdiction"  # submit: destination outside the set
RULE_HOP = "builtin:hop_jurisdiction"  # submit: a planned hop outside the set
RULE_TRACE = "builtin:trace_jurisdiction"  # accept: a trace node outside the set
RULE_PEER = "builtin:peer_jurisdiction"  # forward: the next hop outside the set
RULE_EXPORT = "builtin:export_to"  # submit/forward: jurisdiction not in export_to
RULE_IMPORT = "builtin:import_from"  # accept: sending node not in import_from
BUILTIN_RULES = frozenset(
    {
        RULE_EMPTY,
        RULE_ALLOWED,
        RULE_OWN,
        RULE_UNKNOWN,
        RULE_DEST,
        RULE_HOP,
        RULE_TRACE,
        RULE_PEER,
        RULE_EXPORT,
        RULE_IMPORT,
    }
)


def expand(names: Iterable[str], groups: Mapping[str, frozenset[str]]) -> frozenset[str]:
    """Codes and group names -> codes. A name is a group if `groups` has it,
    else it must be an ISO 3166-1 alpha-2 code (exact case); otherwise
    BadRequest naming it."""
    codes: set[str] = set()
    for name in names:
        if name in groups:
            codes |= groups[name]
        elif is_country(name):
            codes.add(name)
        else:
            raise BadRequest(
                f"unknown residency {name!r}: neither an uppercase ISO 3166-1 alpha-2 "
                "code nor a group of this node"
            )
    return frozenset(codes)


def policy_hash(p: Policy) -> str:
    """16 hex chars of sha256 over a canonical JSON encoding of the policy.

    Sets are sorted; rules keep their order (the first matching rule names a
    decision); a condition left as None differs from an empty tuple.
    """

    def cond(values: tuple[str, ...] | None) -> list[str] | None:
        return None if values is None else sorted(values)

    doc = {
        "v": 1,
        "jurisdiction": p.jurisdiction,
        "mode": p.mode,
        "default_residency": sorted(p.default_residency),
        "allowed_residency": sorted(p.allowed_residency),
        "export_to": sorted(p.export_to),
        "import_from": sorted(p.import_from),
        "groups": {name: sorted(codes) for name, codes in p.groups.items()},
        "rules": [
            {
                "id": r.id,
                "effect": r.effect,
                "senders": cond(r.senders),
                "dest_nodes": cond(r.dest_nodes),
                "dest_jurisdictions": cond(r.dest_jurisdictions),
                "ctypes": cond(r.ctypes),
                "residency": sorted(r.residency),
            }
            for r in p.rules
        ],
    }
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()[:16]


def rule_matches(
    rule: Rule, *, sender: str, dest_node: str, dest_jurisdiction: str | None, ctype: str
) -> bool:
    """True if every condition of `rule` holds.

    `sender` is the mailbox name at this node. A `dest_nodes` entry `*.x.y`
    matches any name ending in `.x.y`. `ctypes` entries compare with the
    media type without parameters, case-insensitively; `type/*` matches
    any subtype. An unknown destination jurisdiction matches no
    `dest_jurisdictions` condition.
    """
    if rule.senders is not None and sender not in rule.senders:
        return False
    if rule.dest_nodes is not None and not any(
        _node_matches(pattern, dest_node) for pattern in rule.dest_nodes
    ):
        return False
    if rule.dest_jurisdictions is not None and dest_jurisdiction not in rule.dest_jurisdictions:
        return False
    return rule.ctypes is None or any(_ctype_matches(pattern, ctype) for pattern in rule.ctypes)


def stamp(
    p: Policy,
    requested: Sequence[str] | None,
    *,
    sender: str,
    dest_node: str,
    dest_jurisdiction: str | None,
    ctype: str,
) -> Decision:
    """The residency set an origin stamps on a new message, or why it cannot.

    `requested` (codes or groups; None means `default_residency`) is
    intersected with `allowed_residency`, then narrowed by every matching
    limit rule in order. Any matching deny rule refuses first. In audit mode a
    step that would refuse is recorded in the decision and skipped.
    """
    matching = [
        r
        for r in p.rules
        if rule_matches(
            r, sender=sender, dest_node=dest_node, dest_jurisdiction=dest_jurisdiction, ctype=ctype
        )
    ]
    would_deny: Decision | None = None

    deny = next((r for r in matching if r.effect == "deny"), None)
    if deny is not None:
        d = _refuse(
            p, deny.id, f"rule {deny.id!r} denies mail from {sender} to {dest_node} ({ctype})"
        )
        if not d.allowed:
            return d
        would_deny = d

    source = "the default residency" if requested is None else "the requested residency"
    wanted = p.default_residency if requested is None else expand(requested, p.groups)
    if not wanted:
        return Decision(
            False, "deny", RULE_EMPTY, f"{source} is empty, so no node may store the message"
        )

    current = wanted & p.allowed_residency
    if not current:
        d = _refuse(
            p,
            RULE_ALLOWED,
            f"none of {source} {_fmt(wanted)} is in allowed_residency {_fmt(p.allowed_residency)}",
        )
        if not d.allowed:
            return d
        would_deny = would_deny or d
        current = wanted

    limiting = ""
    for r in matching:
        if r.effect != "limit" or current <= r.residency:
            continue
        narrowed = current & r.residency
        if not narrowed:
            d = _refuse(
                p,
                r.id,
                f"rule {r.id!r} limits residency to {_fmt(r.residency)}, "
                f"which leaves nothing of {_fmt(current)}",
            )
            if not d.allowed:
                return d
            would_deny = would_deny or d
            continue
        current = narrowed
        limiting = limiting or r.id

    residency = tuple(sorted(current))
    if would_deny is not None:
        return replace(would_deny, residency=residency)
    reason = f"residency {_fmt(current)}" + (f", narrowed by rule {limiting!r}" if limiting else "")
    return Decision(True, "allow", limiting, reason, residency)


def check_submit(
    p: Policy,
    residency: Sequence[str],
    *,
    dest_node: str,
    dest_jurisdiction: str | None,
    hops: Sequence[tuple[str, str | None]] = (),
) -> Decision:
    """Submit point: this node, the destination and every planned hop must be
    inside the set, and the destination's and hops' jurisdictions inside
    `export_to`. Jurisdictions are the trusted ones (None: unknown)."""
    s = frozenset(residency)

    def faults() -> Iterator[tuple[str, str]]:
        yield from _own_fault(p, s)
        yield from _node_faults(p, s, "destination node", dest_node, dest_jurisdiction, RULE_DEST)
        for node, jurisdiction in hops:
            yield from _node_faults(p, s, "planned hop", node, jurisdiction, RULE_HOP)

    return _decide(p, s, faults())


def check_accept(
    p: Policy, residency: Sequence[str], *, holders: Sequence[tuple[str, str | None]]
) -> Decision:
    """Accept point: this node and every holder must be inside the set.

    `holders` are the trace's nodes in order with their trusted jurisdictions
    (None: unknown), origin first; the last one is the immediate sender, whose
    jurisdiction must also be inside `import_from`.
    """
    if not holders:
        raise ValueError("holders must name at least the sending node")
    s = frozenset(residency)

    def faults() -> Iterator[tuple[str, str]]:
        yield from _own_fault(p, s)
        for node, jurisdiction in holders:
            if jurisdiction is None or not is_country(jurisdiction):
                yield RULE_UNKNOWN, _unknown("trace node", node)
            elif not _inside(jurisdiction, s):
                yield RULE_TRACE, _outside("trace node", node, jurisdiction, s)
        node, jurisdiction = holders[-1]
        if jurisdiction is not None and not _within(p, p.import_from, jurisdiction):
            yield (
                RULE_IMPORT,
                f"sending node {node} is in {jurisdiction}, which is not in import_from "
                f"{_fmt(p.import_from)}",
            )

    return _decide(p, s, faults())


def check_forward(
    p: Policy, residency: Sequence[str], *, peer: str, peer_jurisdiction: str | None
) -> Decision:
    """Forward point (and re-check): the peer's trusted jurisdiction must be
    inside the set and inside `export_to`."""
    s = frozenset(residency)
    return _decide(p, s, _node_faults(p, s, "peer", peer, peer_jurisdiction, RULE_PEER))


# --- helpers ---------------------------------------------------------------------


def _fmt(codes: Iterable[str]) -> str:
    return "{" + ", ".join(sorted(codes)) + "}"


def _refuse(p: Policy, rule: str, reason: str, residency: tuple[str, ...] = ()) -> Decision:
    if p.mode == "audit":
        return Decision(True, "audit", rule, reason, residency)
    return Decision(False, "deny", rule, reason, residency)


def _decide(p: Policy, s: frozenset[str], faults: Iterator[tuple[str, str]]) -> Decision:
    residency = tuple(sorted(s))
    fault = next(faults, None)
    if fault is not None:
        return _refuse(p, fault[0], fault[1], residency)
    return Decision(True, "allow", "", f"inside residency {_fmt(s)}", residency)


def _inside(jurisdiction: str, s: frozenset[str]) -> bool:
    """Codes outside the ISO list are never matched, whatever the set holds."""
    return is_country(jurisdiction) and jurisdiction in s


def _within(p: Policy, border_list: frozenset[str], jurisdiction: str) -> bool:
    """export_to / import_from membership; the own jurisdiction always counts."""
    return jurisdiction == p.jurisdiction or jurisdiction in border_list


def _unknown(role: str, node: str) -> str:
    return (
        f"{role} {node} has no trusted jurisdiction (not pinned in config and no valid "
        "certificate), and an unknown jurisdiction is denied"
    )


def _outside(role: str, node: str, jurisdiction: str, s: frozenset[str]) -> str:
    return f"{role} {node} is in {jurisdiction}, outside the residency set {_fmt(s)}"


def _own_fault(p: Policy, s: frozenset[str]) -> Iterator[tuple[str, str]]:
    if not _inside(p.jurisdiction, s):
        yield (
            RULE_OWN,
            f"this node's jurisdiction {p.jurisdiction} is outside the residency set {_fmt(s)}",
        )


def _node_faults(
    p: Policy, s: frozenset[str], role: str, node: str, jurisdiction: str | None, rule: str
) -> Iterator[tuple[str, str]]:
    if jurisdiction is None or not is_country(jurisdiction):
        yield RULE_UNKNOWN, _unknown(role, node)
    elif not _inside(jurisdiction, s):
        yield rule, _outside(role, node, jurisdiction, s)
    elif not _within(p, p.export_to, jurisdiction):
        yield (
            RULE_EXPORT,
            f"{role} {node} is in {jurisdiction}, which is not in export_to {_fmt(p.export_to)}",
        )


def _node_matches(pattern: str, node: str) -> bool:
    if pattern.startswith("*."):
        return node.endswith(pattern[1:])
    return node == pattern


def _ctype_matches(pattern: str, ctype: str) -> bool:
    essence = ctype.partition(";")[0].strip().lower()
    pattern = pattern.lower()
    if pattern.endswith("/*"):
        return essence.startswith(pattern[:-1])
    return essence == pattern
