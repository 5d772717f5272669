"""`relay decisions`, `relay rules explain`, `relay purge`: residency and retention for admins.

Invariants:
- `decisions`, `rules explain` and `purge --dry-run` never write: the first
  and last read the database on a read-only connection (safe while the node
  runs), `rules explain` reads only node.toml.
- `purge` without --dry-run writes the database itself, so it refuses while
  the node holds the database lock: a running node purges by itself.
- `rules explain` decides with the same pure functions as the submit point
  (`stamp`, `check_submit`) and exits like `relay send` would: 0 allowed,
  3 refused by policy.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from relay.config.files import load_config
from relay.config.model import Config
from relay.config.values import parse_duration_ms
from relay.errors import BadRequest, MalformedError, RelayError
from relay.node.opening import open_node_readonly, sqlite_file
from relay.node.retention import RETENTION_SCHEMA, Due, Preview, preview, purge
from relay.policy.certs import format_ms
from relay.policy.residency import Decision, Policy, check_submit, policy_hash, rule_matches, stamp
from relay.policy.routing import next_hop
from relay.policy.trust import Trust
from relay.protocol.names import split_address
from relay.storage.backends import open_readonly_storage, open_storage
from relay.storage.interface import DatabaseLocked

EXIT_REFUSED = 3
CERTIFICATES_SCHEMA = 4  # the store migration that added learned certificates
TEXT_CTYPE = "text/plain; charset=utf-8"
RULE_UNKNOWN_DEST = "builtin:unknown_destination"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add decisions, rules explain and purge to the `relay` parser."""
    p = sub.add_parser("decisions", help="list residency decisions (read-only)")
    p.add_argument("dir", type=Path, metavar="DIR", help="node directory (or its node.toml)")
    p.add_argument("--envelope", type=_envelope_id, metavar="ID", help="only this envelope")
    p.add_argument(
        "--outcome",
        choices=("deny", "audit", "allow"),
        help="only this outcome; allows are kept with the stored envelopes",
    )
    p.add_argument("--limit", type=_positive, default=100, help="the latest N (default 100)")
    p.add_argument("--json", action="store_true", help="JSON Lines, one decision a line")
    p.set_defaults(func=cmd_decisions)

    rules = sub.add_parser("rules", help="residency rules").add_subparsers(
        metavar="ACTION", required=True
    )
    p = rules.add_parser(
        "explain", help="what the policy would decide for a message, without sending it"
    )
    p.add_argument("dir", type=Path, metavar="DIR", help="node directory (or its node.toml)")
    p.add_argument("--from", dest="sender", required=True, metavar="MAILBOX", help="sender")
    p.add_argument(
        "--to",
        nargs="+",
        action="extend",
        required=True,
        metavar="ADDR",
        help="recipients (--to A B, or --to A --to B)",
    )
    p.add_argument("--residency", help="comma-separated country codes or groups, e.g. RU,KZ")
    p.add_argument("--ctype", default=TEXT_CTYPE, help="content type (default text/plain)")
    p.add_argument("--json", action="store_true", help="print the explanation as JSON")
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("purge", help="delete content and metadata past their retention")
    p.add_argument("dir", type=Path, metavar="DIR", help="node directory (or its node.toml)")
    p.add_argument(
        "--dry-run", action="store_true", help="show what would go (read-only, safe while running)"
    )
    p.add_argument(
        "--as-of",
        type=_as_of,
        metavar="WHEN",
        help="with --dry-run: as if it were WHEN (ISO date/time in UTC, or +DURATION like +30d)",
    )
    p.add_argument("--limit", type=_positive, default=100, help="envelopes listed per section")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_purge)


# --- argument types ----------------------------------------------------------------


def _envelope_id(value: str) -> bytes:
    if not re.fullmatch(r"[0-9a-f]{32}", value):
        raise argparse.ArgumentTypeError(f"{value!r} is not an id (32 lowercase hex digits)")
    return bytes.fromhex(value)


def _positive(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if n < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return n


def _as_of(value: str) -> int:
    """Unix ms of an ISO 8601 date/time (UTC unless it says otherwise) or of now + DURATION."""
    if value.startswith("+"):
        try:
            return _now_ms() + parse_duration_ms(value[1:])
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{value!r} is neither an ISO date/time (2030-01-31, 2030-01-31T12:00) "
            "nor +DURATION (+30d)"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _say(message: str) -> None:
    print(message, file=sys.stderr)


# --- decisions ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Row:
    """One decision as listed."""

    at: int
    point: str
    outcome: str
    envelope: bytes | None
    peer: str
    rule: str
    reason: str
    policy_hash: str

    def as_json(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "time": format_ms(self.at),
            "point": self.point,
            "outcome": self.outcome,
            "envelope": self.envelope.hex() if self.envelope is not None else None,
            "peer": self.peer,
            "rule": self.rule,
            "reason": self.reason,
            "policy_hash": self.policy_hash,
        }

    def text(self) -> str:
        envelope = self.envelope.hex() if self.envelope is not None else "-"
        cols = (format_ms(self.at), self.point, self.outcome, envelope, self.peer, self.rule)
        return "  ".join(c or "-" for c in cols) + f"  {self.reason}"


async def read_decisions(
    config: Config, envelope: bytes | None, outcome: str | None, limit: int
) -> list[Row]:
    """The latest `limit` decisions, oldest first; allows come from stored envelopes."""
    reads = await open_node_readonly(config)
    try:
        if outcome == "allow":
            # Allows cost no row of their own: the envelope keeps rule id and policy hash.
            rows = [
                Row(
                    a.at,
                    a.point,
                    "allow",
                    a.envelope,
                    a.peer,
                    a.rule,
                    f"residency {a.residency}",
                    a.policy_hash,
                )
                for a in await reads.allows(envelope, limit)
            ]
        else:
            rows = [
                Row(d.at, d.point, d.outcome, d.envelope, d.peer, d.rule, d.reason, d.policy_hash)
                for d in await reads.decisions(envelope, outcome, limit)
            ]
    finally:
        await reads.close()
    return rows[::-1]


def cmd_decisions(args: argparse.Namespace) -> int:
    """Print decisions, one a line: time, point, outcome, envelope, peer, rule, reason."""
    config = load_config(args.dir)
    rows = asyncio.run(read_decisions(config, args.envelope, args.outcome, args.limit))
    for row in rows:
        print(json.dumps(row.as_json(), ensure_ascii=False) if args.json else row.text())
    if not rows and not args.json:
        _say("no decisions match")
    return 0


# --- rules explain -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Step:
    point: str  # "stamp" or "submit"
    decision: Decision

    def as_json(self) -> dict[str, Any]:
        d = self.decision
        return {
            "point": self.point,
            "outcome": d.outcome,
            "rule": d.rule,
            "reason": d.reason,
            "residency": list(d.residency),
        }


@dataclass(frozen=True, slots=True)
class Destination:
    """What the policy decides for the addresses at one node."""

    node: str
    addresses: tuple[str, ...]
    jurisdiction: str | None
    via: tuple[str, str | None] | None = None  # a [[routes]] hop and its jurisdiction
    steps: tuple[Step, ...] = ()
    matching: tuple[dict[str, Any], ...] = ()
    refusal: tuple[str, str] | None = None  # (rule, reason)
    residency: tuple[str, ...] = ()

    def as_json(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "addresses": list(self.addresses),
            "jurisdiction": self.jurisdiction,
            "via": None if self.via is None else {"node": self.via[0], "jurisdiction": self.via[1]},
            "allowed": self.refusal is None,
            "rule": self.refusal[0] if self.refusal else "",
            "reason": self.refusal[1] if self.refusal else "",
            "residency": list(self.residency),
            "steps": [s.as_json() for s in self.steps],
            "matching_rules": list(self.matching),
        }


@dataclass(frozen=True, slots=True)
class Explanation:
    mode: str
    policy_hash: str
    destinations: tuple[Destination, ...] = field(default=())

    @property
    def allowed(self) -> bool:
        return all(d.refusal is None for d in self.destinations)


def explain(
    config: Config,
    trust: Trust,
    sender: str,
    to: Sequence[str],
    residency: Sequence[str] | None,
    ctype: str = TEXT_CTYPE,
) -> Explanation:
    """Decide, as the submit point would, for a message from mailbox `sender` to `to`.

    BadRequest for a bad address, an unknown local mailbox or an unknown
    residency name (as the API would answer 400).
    """
    policy = config.policy
    by_dest: dict[str, list[str]] = {}
    for addr in to:
        try:
            _, dest = split_address(addr)
        except MalformedError as e:
            raise BadRequest(e.detail) from None
        if addr not in by_dest.setdefault(dest, []):
            by_dest[dest].append(addr)
    out: list[Destination] = []
    for dest, addrs in by_dest.items():
        local = dest == config.node.name
        if local:
            for a in addrs:
                if config.mailbox(split_address(a)[0]) is None:
                    raise BadRequest(f"no mailbox {a} at this node")
        dest_jur = config.node.jurisdiction if local else trust.jurisdiction(dest)
        hop = dest if local else next_hop(config.routes, dest)
        hops = [] if hop == dest else [(hop, trust.jurisdiction(hop))]
        base = Destination(dest, tuple(addrs), dest_jur, hops[0] if hops else None)
        if not local and trust.node(dest) is None:
            out.append(
                replace(
                    base,
                    refusal=(
                        RULE_UNKNOWN_DEST,
                        f"{trust.why_untrusted(dest)}; nothing may be sent to a node whose "
                        "jurisdiction is unknown",
                    ),
                )
            )
            continue
        matching = tuple(
            {"id": r.id, "effect": r.effect, "residency": sorted(r.residency)}
            for r in policy.rules
            if rule_matches(
                r, sender=sender, dest_node=dest, dest_jurisdiction=dest_jur, ctype=ctype
            )
        )
        stamped = stamp(
            policy,
            residency,
            sender=sender,
            dest_node=dest,
            dest_jurisdiction=dest_jur,
            ctype=ctype,
        )
        steps = [Step("stamp", stamped)]
        refusal: tuple[str, str] | None = None
        if not stamped.allowed:
            refusal = (stamped.rule, stamped.reason)
        else:
            checked = check_submit(
                policy, stamped.residency, dest_node=dest, dest_jurisdiction=dest_jur, hops=hops
            )
            steps.append(Step("submit", checked))
            if not checked.allowed:
                refusal = (checked.rule, checked.reason)
        out.append(
            replace(
                base,
                steps=tuple(steps),
                matching=matching,
                refusal=refusal,
                residency=stamped.residency,
            )
        )
    return Explanation(policy.mode, policy_hash(policy), tuple(out))


def _fmt(codes: Iterable[str], groups: Mapping[str, frozenset[str]]) -> str:
    """Codes as a set, written with the config's group names wherever a whole group fits."""
    full = frozenset(codes)
    left = set(full)
    names: list[str] = []
    for name, members in sorted(groups.items(), key=lambda g: (-len(g[1]), g[0])):
        if members and members <= full and members & left:
            names.append(name)
            left -= members
    return "{" + ", ".join([*names, *sorted(left)]) + "}"


def _policy_line(p: Policy) -> str:
    g = p.groups
    return (
        f"policy: mode {p.mode}; default_residency {_fmt(p.default_residency, g)}; "
        f"allowed_residency {_fmt(p.allowed_residency, g)}; export_to {_fmt(p.export_to, g)}; "
        f"import_from {_fmt(p.import_from, g)}; {len(p.rules)} rule(s); hash {policy_hash(p)}"
    )


def cmd_explain(args: argparse.Namespace) -> int:
    """Print what the policy decides for a message, without sending it; exit 3 if refused."""
    config = load_config(args.dir)
    sender: str = args.sender
    if "@" in sender:
        local, _, node = sender.rpartition("@")
        if node != config.node.name:
            _say(f"relay: --from must be a mailbox of this node ({config.node.name})")
            return 2
        sender = local
    if config.mailbox(sender) is None:
        _say(f"relay: no mailbox {sender!r} at {config.node.name}")
        return 2
    residency = None
    if args.residency is not None:
        residency = [c.strip() for c in args.residency.split(",") if c.strip()]
    learned = asyncio.run(_learned_certificates(config))
    trust = Trust(config, learned=learned)
    result = explain(config, trust, sender, args.to, residency, args.ctype)
    if args.json:
        doc = {
            "allowed": result.allowed,
            "mode": result.mode,
            "policy_hash": result.policy_hash,
            "destinations": [d.as_json() for d in result.destinations],
        }
        print(json.dumps(doc, ensure_ascii=False))
    else:
        print(_policy_line(config.policy))
        for d in result.destinations:
            _print_destination(d, config.policy.groups)
        if result.allowed:
            audited = [
                s.decision
                for d in result.destinations
                for s in d.steps
                if s.decision.outcome == "audit"
            ]
            note = f" (audit mode: would be refused by {audited[0].rule})" if audited else ""
            print(f"result: allowed{note}")
        else:
            first = next(d.refusal for d in result.destinations if d.refusal is not None)
            print(f"result: refused by {first[0]}: {first[1]}")
    return 0 if result.allowed else EXIT_REFUSED


async def _learned_certificates(config: Config) -> list[bytes]:
    """Certificates the node learned from others and keeps (as it loads them at start)."""
    path = config.storage.sqlite_path
    if path is not None and not path.is_file():
        return []
    reads = await open_node_readonly(config)
    try:
        if reads.schema_version < CERTIFICATES_SCHEMA:
            return []
        return await reads.certificates(_now_ms())
    finally:
        await reads.close()


def _print_destination(d: Destination, groups: Mapping[str, frozenset[str]]) -> None:
    where = d.jurisdiction or "unknown"
    print(f"to {', '.join(d.addresses)}: node {d.node}, trusted jurisdiction {where}")
    if d.via is not None:
        print(f"  via {d.via[0]} ([[routes]]), trusted jurisdiction {d.via[1] or 'unknown'}")
    for s in d.steps:
        rule = f" [{s.decision.rule}]" if s.decision.rule else ""
        print(f"  {s.point}: {s.decision.outcome}{rule}: {s.decision.reason}")
    if d.steps:
        if d.matching:
            for m in d.matching:
                limit = f" to {_fmt(m['residency'], groups)}" if m["effect"] == "limit" else ""
                print(f"  matching rule {m['id']}: {m['effect']}{limit}")
        else:
            print("  matching rules: none")
    if d.refusal is not None:
        print(f"  refused by {d.refusal[0]}")
    else:
        print(f"  allowed, residency {_fmt(d.residency, groups)}")


# --- purge -------------------------------------------------------------------------------


def cmd_purge(args: argparse.Namespace) -> int:
    """Show (--dry-run) or delete what is past its retention."""
    config = load_config(args.dir)
    db_path = sqlite_file(
        config, "relay purge", "the running node purges by itself at start and every 5 minutes"
    )
    if args.as_of is not None and not args.dry_run:
        _say("relay: --as-of only goes with --dry-run (a purge deletes only what is due now)")
        return 2
    if args.dry_run:
        now = args.as_of if args.as_of is not None else _now_ms()
        result = asyncio.run(_preview(db_path, config, now, args.limit))
        _print_preview(config, result, args.json)
        return 0
    if not db_path.is_file():
        _say(f"nothing to purge: no database at {db_path} yet")
        return 0
    try:
        counts = asyncio.run(_purge_offline(db_path, config))
    except DatabaseLocked:
        _say(
            f"relay: the node is running ({db_path} is locked); it purges by itself at start "
            "and every 5 minutes. Stop it to purge now; --dry-run is safe while it runs."
        )
        return 1
    if args.json:
        print(json.dumps({"purged": counts}))
    else:
        print(_counts_text(counts, "purged"))
    return 0


async def _preview(path: Path, config: Config, now: int, limit: int) -> Preview:
    reads = await open_readonly_storage(path)
    try:
        version = reads.schema_version
        if version < RETENTION_SCHEMA:
            raise RelayError(
                f"{path} has schema version {version}, older than retention needs "
                f"({RETENTION_SCHEMA}); start the node once (it migrates) and try again"
            )
        return await preview(reads, config.retention, now, limit)
    finally:
        await reads.close()


async def _purge_offline(path: Path, config: Config) -> dict[str, int]:
    store = await open_storage(path)
    try:
        counts = await purge(store, config.retention, config.node.name, _now_ms(), source="admin")
    finally:
        await store.close()
    return counts.as_dict()


def _counts_text(c: dict[str, int], verb: str) -> str:
    return (
        f"{verb}: content of {c['contents']} envelope(s), {c['payloads']} payload(s) "
        f"({c['payload_bytes']} bytes), {c['ended']} queued envelope(s) ended; "
        f"metadata of {c['envelopes']} envelope(s) ({c['inbox']} inbox, "
        f"{c['recipients']} recipient rows), {c['decisions']} decision(s)"
    )


def _print_preview(config: Config, p: Preview, as_json: bool) -> None:
    r = config.retention
    if as_json:
        doc = {
            "dry_run": True,
            "at": p.cut.now,
            "retention": {
                "content_min_days": r.content_min_days,
                "content_max_days": r.content_max_days,
                "metadata_min_days": r.metadata_min_days,
                "metadata_max_days": r.metadata_max_days,
            },
            "would_purge": p.counts.as_dict(),
            "content": [_due_json(d) for d in p.content],
            "metadata": [_due_json(d) for d in p.metadata],
        }
        print(json.dumps(doc))
        return
    print(
        f"dry run as of {format_ms(p.cut.now)}: content kept"
        f" {r.content_min_days}..{r.content_max_days} days, metadata"
        f" {r.metadata_min_days}..{r.metadata_max_days} days; nothing is deleted"
    )
    print(_counts_text(p.counts.as_dict(), "would purge"))
    for title, items, total in (
        ("content", p.content, p.counts.contents),
        ("metadata", p.metadata, p.counts.envelopes),
    ):
        for d in items:
            queued = ", queued: would end expired (retention)" if d.queued else ""
            print(
                f"  {title}  {d.id.hex()}  {d.kind} from {d.origin}, received "
                f"{format_ms(d.received)}, expires {format_ms(d.expires)}: {d.why}{queued}"
            )
        if total > len(items):
            print(f"  {title}  ... and {total - len(items)} more")


def _due_json(d: Due) -> dict[str, Any]:
    return {
        "id": d.id.hex(),
        "origin": d.origin,
        "kind": d.kind,
        "received": d.received,
        "expires": d.expires,
        "why": d.why,
        "queued": d.queued,
    }
