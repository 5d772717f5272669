"""`relay audit`: export the tamper-evident log, verify it offline, prove entries,
check that a later tree head extends an earlier one (docs/audit.md).

Invariants:
- `export`, `prove` and `heads` only read (a read-only open, safe beside a
  running node). `verify` and `consistency --bundle` read files only: no node,
  no network, nothing but the installed package.
- `verify` exits 0 only when every signature, hash and proof checked out; each
  problem is printed as `problem CODE: detail` and the exit code is 1.
- Heads travel between commands as one base64 line each (the [head bytes,
  signature] array), the form `relay audit heads` prints.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import json
import sys
from datetime import UTC, datetime
from pathlib import Path

from relay.cli.main import parse_time
from relay.config.files import load_config
from relay.errors import MalformedError, NotFound, ProofFailed, UsageError
from relay.node.opening import open_node_readonly
from relay.protocol import auditcheck
from relay.protocol.audit import CONFIG, decode_entry, decode_signed_head
from relay.protocol.bundle import Bundle, decode_bundle, encode_bundle
from relay.protocol.keystr import parse_public_key
from relay.protocol.merkle import (
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    root,
    verify_inclusion,
)
from relay.storage.audit import PROOF_CONSISTENT, PROOF_FORKED, WitnessedHead
from relay.storage.interface import ReadOnlyStorage

NEVER = 2**63 - 1


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `relay audit` and its commands."""
    top = sub.add_parser("audit", help="the tamper-evident audit log (docs/audit.md)")
    cmds = top.add_subparsers(dest="audit_command", required=True, metavar="COMMAND")

    p = cmds.add_parser("export", help="write a self-contained bundle of the log to stdout")
    p.add_argument("dir", type=Path, help="the node directory")
    p.add_argument(
        "--from",
        dest="since",
        type=parse_time,
        default="0",
        help="ISO time or unix ms (default: all)",
    )
    p.add_argument(
        "--to", dest="until", type=parse_time, default=str(NEVER), help="ISO time or unix ms"
    )
    p.add_argument("--out", type=Path, help="write to this file instead of stdout")
    p.set_defaults(func=cmd_export)

    p = cmds.add_parser("verify", help="check a bundle offline and answer questions")
    p.add_argument("bundle", type=Path)
    p.add_argument(
        "--key",
        action="append",
        required=True,
        help="the node's public key (ed25519:...), from its operator; repeatable",
    )
    p.add_argument(
        "--witness",
        action="append",
        type=Path,
        default=[],
        help="a file of heads kept earlier (`relay audit heads` lines); repeatable",
    )
    p.add_argument("--message", help="where was this envelope (hex id) stored, on whose word")
    p.add_argument("--rule", help="every decision, store and forward under this rule")
    p.add_argument(
        "--residency", action="store_true", help="was anything stored outside its residency set"
    )
    p.set_defaults(func=cmd_verify)

    p = cmds.add_parser("prove", help="print an inclusion proof for entries")
    p.add_argument("dir", type=Path)
    p.add_argument("id", help="an entry's seq, or an envelope id (32 hex digits)")
    p.set_defaults(func=cmd_prove)

    p = cmds.add_parser("consistency", help="check that NEW_HEAD extends OLD_HEAD")
    p.add_argument("old", type=Path, help="a file holding the earlier head")
    p.add_argument("new", type=Path, help="a file holding the later head")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--dir", type=Path, help="take the proof from this node's log")
    src.add_argument("--bundle", type=Path, help="take the proof from this bundle (offline)")
    p.add_argument("--key", help="also check both heads' signatures under this key")
    p.set_defaults(func=cmd_consistency)

    p = cmds.add_parser("heads", help="print signed tree heads, one base64 line each")
    p.add_argument("dir", type=Path)
    p.add_argument("--peer", help="the heads this node saw from PEER instead of its own")
    p.add_argument("--latest", action="store_true", help="only the latest")
    p.set_defaults(func=cmd_heads)


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")[:-4] + "Z"


# --- export ---------------------------------------------------------------------------


async def export_bundle(reads: ReadOnlyStorage, node: str, since: int, until: int) -> Bundle:
    """A bundle of the entries written `since` <= at <= `until`, with every head."""
    heads = await reads.tree_heads()
    covered = max((h.size for h in heads), default=0)
    first, end = await reads.audit_span(since, until)
    if first == end:
        first = end = min(covered, await reads.audit_size())
    rows = await reads.audit_entries(first, end)
    before = await reads.audit_leaves(0, first)
    after = await reads.audit_leaves(end, max(covered, end))
    context = await reads.audit_last(CONFIG, first)
    ids: set[bytes] = set()
    for r in rows:
        e = decode_entry(r.entry)
        for key in ("envelope", "receipt"):
            if key == "receipt" and e.text("via") == "result":
                continue  # a batch id: its proof is the `result` entry, not an envelope
            if len(e.blob(key)) == 16:
                ids.add(e.blob(key))
    return Bundle(
        node=node,
        since=since,
        until=until,
        first=first,
        entries=tuple(r.entry for r in rows),
        before=tuple(before),
        after=tuple(after),
        context=(context.entry,) if context is not None else (),
        heads=tuple(h.wire for h in heads),
        envelopes=tuple(await reads.audit_envelopes(sorted(ids))),
    )


def cmd_export(args: argparse.Namespace) -> int:
    config = load_config(args.dir)
    since, until = args.since, args.until

    async def run() -> Bundle:
        reads = await open_node_readonly(config)
        try:
            return await export_bundle(reads, config.node.name, since, until)
        finally:
            await reads.close()

    bundle = asyncio.run(run())
    data = encode_bundle(bundle)
    if args.out is not None:
        args.out.write_bytes(data)
    elif sys.stdout.isatty():
        raise UsageError("the bundle is binary: redirect stdout to a file, or give --out FILE")
    else:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    print(
        f"exported {len(bundle.entries)} entries (seq {bundle.first}.."
        f"{bundle.first + len(bundle.entries) - 1}), {len(bundle.heads)} heads, "
        f"{len(bundle.envelopes)} envelopes of {bundle.node}",
        file=sys.stderr,
    )
    return 0


# --- verify ---------------------------------------------------------------------------


def read_heads(path: Path) -> list[bytes]:
    """The heads in a file of base64 lines (blank lines and # comments skipped)."""
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            out.append(base64.b64decode(line, validate=True))
        except binascii.Error:
            raise MalformedError(f"{path}:{n}: not a base64 head line") from None
    return out


def _one_head(path: Path) -> bytes:
    heads = read_heads(path)
    if len(heads) != 1:
        raise UsageError(f"{path}: expected one head, found {len(heads)}")
    return heads[0]


def cmd_verify(args: argparse.Namespace) -> int:
    for k in args.key:
        try:  # a typo in the trust anchor is a usage error, said at once
            parse_public_key(k)
        except MalformedError as err:
            raise UsageError(f"--key: {err.detail}") from None
    bundle = decode_bundle(args.bundle.read_bytes())
    witnessed = [(str(p), h) for p in args.witness for h in read_heads(p)]
    report = auditcheck.verify(bundle, args.key, witnessed)
    for note in report.notes:
        print(f"note: {note}", file=sys.stderr)
    for pr in report.problems:
        print(f"problem {pr.code}: {pr.detail}")
    if not report.ok:
        print(f"NOT VERIFIED: {len(report.problems)} problem(s) in {args.bundle}")
        return 1
    latest = report.heads[-1].head
    seqs = f"seq {bundle.first}..{bundle.first + len(bundle.entries) - 1}"
    print(
        f"verified: {len(bundle.entries)} entries ({seqs}) of {bundle.node}, "
        f"{len(report.heads)} signed heads, {len(witnessed)} witnessed heads, "
        f"{len(report.headers)} envelopes; latest head size {latest.size} "
        f"root {latest.root.hex()} at {_iso(latest.at)}"
    )
    if args.message:
        try:
            ident = bytes.fromhex(args.message)
        except ValueError:
            raise UsageError(f"--message {args.message!r} is not a hex id") from None
        lines = auditcheck.where(report, ident)
        print(f"message {args.message}:" if lines else f"message {args.message}: not in the log")
        for line in lines:
            print(f"  {line}")
    if args.rule:
        found = auditcheck.under_rule(report, args.rule)
        print(f"rule {args.rule}: {len(found)} entries")
        for entry in found:
            shown = json.dumps(_show(entry.fields))
            print(f"  seq {entry.seq} {_iso(entry.at)} {entry.kind} {shown}")
    if args.residency:
        answer = auditcheck.outside_residency(report)
        checked = (
            f"{answer.stored} stored, {answer.forwarded} forwarded and {answer.receipts} "
            f"receipted copies checked under the head of size {latest.size}"
        )
        if answer.outside:
            print(f"stored outside the residency set: YES, {len(answer.outside)}; {checked}")
            for line in answer.outside:
                print(f"  {line}")
            return 1
        print(f"stored outside the residency set: no; {checked}")
    return 0


def _show(fields: object) -> object:
    if isinstance(fields, dict):
        return {k: _show(v) for k, v in fields.items()}
    if isinstance(fields, bytes):
        return fields.hex()
    if isinstance(fields, tuple):
        return [_show(v) for v in fields]
    return fields


# --- prove, consistency, heads --------------------------------------------------------


def cmd_prove(args: argparse.Namespace) -> int:
    config = load_config(args.dir)

    async def run() -> list[dict[str, object]]:
        reads = await open_node_readonly(config)
        try:
            heads = await reads.tree_heads()
            if not heads:
                raise NotFound("the node has signed no tree head yet")
            head = decode_signed_head(heads[-1].wire)
            if args.id.isdigit():
                seqs = [int(args.id)]
            else:
                try:
                    seqs = await reads.audit_seqs(bytes.fromhex(args.id))
                except ValueError:
                    raise UsageError(f"{args.id!r} is neither a seq nor a hex id") from None
            leaves = await reads.audit_leaves(0, head.head.size)
            out = []
            for seq in seqs:
                if seq >= head.head.size:
                    raise NotFound(
                        f"entry {seq} is not under the latest head yet (size {len(leaves)})"
                    )
                (row,) = await reads.audit_entries(seq, seq + 1)
                proof = inclusion_proof(seq, leaves)
                verify_inclusion(seq, len(leaves), leaf_hash(row.entry), proof, head.head.root)
                out.append(
                    {
                        "seq": seq,
                        "entry": base64.b64encode(row.entry).decode(),
                        "leaf": leaf_hash(row.entry).hex(),
                        "size": head.head.size,
                        "root": head.head.root.hex(),
                        "proof": [h.hex() for h in proof],
                        "head": base64.b64encode(heads[-1].wire).decode(),
                    }
                )
            if not out:
                raise NotFound(f"no entry is about {args.id}")
            return out
        finally:
            await reads.close()

    for item in asyncio.run(run()):
        print(json.dumps(item))
    return 0


def cmd_consistency(args: argparse.Namespace) -> int:
    old = decode_signed_head(_one_head(args.old))
    new = decode_signed_head(_one_head(args.new))
    if args.bundle is not None:
        b = decode_bundle(args.bundle.read_bytes())
        leaves = [*b.before, *(leaf_hash(e) for e in b.entries), *b.after]
    else:
        config = load_config(args.dir)

        async def run() -> list[bytes]:
            reads = await open_node_readonly(config)
            try:
                return await reads.audit_leaves(0, new.head.size)
            finally:
                await reads.close()

        leaves = asyncio.run(run())
    if len(leaves) < new.head.size:
        raise ProofFailed(f"the log holds {len(leaves)} entries, fewer than the later head's")
    if root(leaves[: new.head.size]) != new.head.root:
        raise ProofFailed(f"the log does not match the later head (size {new.head.size})")
    proof = consistency_proof(min(old.head.size, new.head.size), leaves[: new.head.size])
    pub = parse_public_key(args.key) if args.key else None
    auditcheck.check_consistency(old, new, proof, pub)
    print(
        f"consistent: the head of size {new.head.size} ({_iso(new.head.at)}) extends "
        f"the head of size {old.head.size} ({_iso(old.head.at)})"
    )
    return 0


def cmd_heads(args: argparse.Namespace) -> int:
    config = load_config(args.dir)

    async def run() -> list[tuple[bytes, str]]:
        reads = await open_node_readonly(config)
        try:
            if args.peer:
                return [(w.wire, _proven(w)) for w in await reads.witnessed_heads(args.peer)]
            return [(h.wire, "") for h in await reads.tree_heads()]
        finally:
            await reads.close()

    heads = asyncio.run(run())
    if args.latest:
        heads = heads[-1:]
    for wire, proven in heads:
        h = decode_signed_head(wire).head
        print(f"# {h.node} size {h.size} at {_iso(h.at)} root {h.root.hex()}{proven}")
        print(base64.b64encode(wire).decode())
    return 0


def _proven(w: WitnessedHead) -> str:
    """What the peer's consistency proof showed about a head it sent (protocol.md §19)."""
    if w.proof == PROOF_CONSISTENT:
        return f"; proven to extend size {w.proof_from}"
    if w.proof == PROOF_FORKED:
        return f"; FORKED: its proof does not extend size {w.proof_from}"
    return ""
