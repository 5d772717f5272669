"""The [policy] table of node.toml and the helpers every array of tables shares.

`_PolicyTables` is the part of relay.config.parse's `_Parser` that reads
[policy], its groups and rules; split out because it is a concept of its own.
Pure, like the parser.
"""

from __future__ import annotations

from collections.abc import Callable

from relay.config.table import _Report, _Table
from relay.config.tomledit import KeyPath
from relay.config.values import (
    _GROUP_NAME,
    _one_of,
    _rule_id_error,
    country_error,
    node_pattern_error,
)
from relay.policy.residency import Effect, Mode, Policy, Rule
from relay.protocol.iso3166 import is_country


class _PolicyTables:
    """Reads [policy]; reports problems rather than stopping at the first."""

    report: _Report
    jurisdiction: str

    def line(self, path: KeyPath) -> int:
        return self.report.locator.line(path)

    def first_use(
        self, t: _Table, key: str, value: str | None, what: str, first: dict[str, int]
    ) -> str | None:
        """`value` if no earlier table of this array used it, else None.

        A repeat is reported with the line of the first use; `first` maps each
        value seen so far to that line.
        """
        if value is None:
            return None
        if value in first:
            t.error(key, f"duplicate {what} {value!r} (first at line {first[value]})")
            return None
        first[value] = self.line((*t.path, key))
        return value

    # -- [policy] -------------------------------------------------------------

    def policy(self, t: _Table, mailbox_names: set[str]) -> Policy | None:
        mode_value = t.string("mode", check=_one_of("enforce", "audit"))
        mode: Mode = "audit" if mode_value == "audit" else "enforce"
        errors_before = len(self.report.errors)
        groups_t = t.table("groups")
        declared = set(groups_t.data) if groups_t else set()
        groups = self.groups(groups_t) if groups_t else {}
        own = frozenset({self.jurisdiction}) if self.jurisdiction else frozenset()

        def codes(key: str, default: frozenset[str], *, empty_ok: bool) -> frozenset[str]:
            names = t.strings(key)
            if names is None:
                return default
            if not names and not empty_ok:
                t.error(key, "must not be empty")
                return default
            return self.expand(names, groups, declared, t, key)

        default = codes("default_residency", own, empty_ok=False)
        allowed = codes("allowed_residency", default, empty_ok=False)
        outside = default - allowed
        if outside and len(self.report.errors) == errors_before:  # else a cascade
            t.error(
                "default_residency",
                f"{', '.join(sorted(outside))} not in allowed_residency",
            )
        export_to = codes("export_to", allowed, empty_ok=True)
        import_from = codes("import_from", allowed, empty_ok=True)
        rules = self.rules(t.tables("rules"), groups, declared, mailbox_names)
        t.done()
        return Policy(
            jurisdiction=self.jurisdiction,
            mode=mode,
            default_residency=default,
            allowed_residency=allowed,
            export_to=export_to,
            import_from=import_from,
            groups=groups,
            rules=rules,
        )

    def member_error(self, name: str) -> str:
        if len(name) == 2:
            return country_error(name) or ""
        if _GROUP_NAME.fullmatch(name):
            return f"unknown group {name!r}"
        return f"{name!r} is neither a country code nor a group name"

    def expand(
        self,
        names: list[str],
        groups: dict[str, frozenset[str]],
        declared: set[str],
        t: _Table,
        key: str,
    ) -> frozenset[str]:
        """Country codes and group names -> codes; bad names reported under `key`."""
        out: set[str] = set()
        for name in names:
            if name in groups:
                out |= groups[name]
            elif is_country(name):
                out.add(name)
            elif name not in declared:  # a declared but broken group is reported there
                t.error(key, self.member_error(name))
        return frozenset(out)

    def groups(self, t: _Table) -> dict[str, frozenset[str]]:
        raw: dict[str, list[str]] = {}
        for name in t.data:
            members = t.strings(name)
            if not _GROUP_NAME.fullmatch(name):
                t.error(name, f"bad group name {name!r}: use A-Z, 0-9 and _, 2..32 characters")
            elif is_country(name):
                t.error(name, f"group name {name!r} is a country code")
            elif members is not None and not members:
                t.error(name, "empty group")
            elif members is not None:
                raw[name] = members
        expanded: dict[str, frozenset[str]] = {}
        broken: set[str] = set(t.data) - set(raw)

        def visit(name: str, stack: list[str]) -> frozenset[str] | None:
            if name in expanded:
                return expanded[name]
            if name in broken:
                return None
            if name in stack:
                cycle = stack[stack.index(name) :]
                t.error(name, f"group cycle: {' -> '.join([*cycle, name])}")
                broken.update(cycle)
                return None
            stack.append(name)
            codes: set[str] = set()
            for member in raw[name]:
                if member in t.data:
                    codes |= visit(member, stack) or frozenset()
                elif is_country(member):
                    codes.add(member)
                else:
                    t.error(name, self.member_error(member))
            stack.pop()
            if name in broken:
                return None
            expanded[name] = frozenset(codes)
            return expanded[name]

        for name in raw:
            visit(name, [])
        return expanded

    def rules(
        self,
        tables: list[_Table],
        groups: dict[str, frozenset[str]],
        declared: set[str],
        mailbox_names: set[str],
    ) -> tuple[Rule, ...]:
        rules: list[Rule] = []
        first: dict[str, int] = {}
        for r in tables:
            rule_id = r.string("id", required=True, check=_rule_id_error)
            self.first_use(r, "id", rule_id, "rule id", first)
            effect_value = r.string("effect", required=True, check=_one_of("deny", "limit"))
            effect: Effect = "limit" if effect_value == "limit" else "deny"

            senders = _condition(
                r, "sender", lambda s: None if s in mailbox_names else f"no mailbox {s!r} here"
            )
            dest_nodes = _condition(r, "dest_node", node_pattern_error)
            ctypes = _condition(r, "ctype", lambda s: None if s.strip() else "empty content type")
            dest_j = None
            if (names := r.strings("dest_jurisdiction", single=True)) is not None:
                if not names:
                    r.error("dest_jurisdiction", "empty list matches nothing")
                codes = self.expand(names, groups, declared, r, "dest_jurisdiction")
                dest_j = tuple(sorted(codes))
            residency: frozenset[str] = frozenset()
            names = r.strings("residency")
            if effect_value == "limit" and names is None:
                r.error("residency", 'missing (required for effect = "limit")')
            elif effect_value == "deny" and names is not None:
                r.error("residency", 'only a rule with effect = "limit" has a residency')
            elif names is not None:
                if not names:
                    r.error("residency", "must not be empty")
                residency = self.expand(names, groups, declared, r, "residency")
            r.done()
            if rule_id is not None:
                rules.append(Rule(rule_id, effect, senders, dest_nodes, dest_j, ctypes, residency))
        return tuple(rules)


def _condition(r: _Table, key: str, check: Callable[[str], str | None]) -> tuple[str, ...] | None:
    """A rule condition: one string or a list of them, each passing `check`."""
    values = r.strings(key, single=True)
    if values is None:
        return None
    if not values:
        r.error(key, "empty list matches nothing")
    for value in values:
        if (reason := check(value)) is not None:
            r.error(key, reason)
    return tuple(values)
