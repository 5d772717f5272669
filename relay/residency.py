"""Residency decisions (DESIGN §7). Pure: no I/O, no clock, no asyncio.

INTERFACE STUB: the dataclasses below are fixed; the functions are filled in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

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
