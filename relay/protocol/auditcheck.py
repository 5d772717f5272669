"""Verifying an audit bundle and answering an auditor's questions from it. Pure.

Invariants:
- `verify` trusts only the keys it is given (the node's key, from the auditor,
  not from the bundle) and what those keys signed: a tree head signed by a
  trusted key vouches for every entry under it, so the keys a config entry
  under such a head names (rotations) become trusted too, and the peers'
  keys it pins are the ones their receipts and their signed batch results
  (`result` entries, delivery-v1) are checked with.
- Every check that fails becomes a Problem with a stable `code` and a detail
  naming the entry, head or envelope; nothing raises on a hostile bundle but
  MalformedError from decoding its outer shape.
- The answers (`where`, `under_rule`, `outside_residency`) read only entries
  that verified: a bundle with problems answers nothing (`Report.ok`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from relay.errors import MalformedError, ProofFailed, RelayError
from relay.protocol import ed25519
from relay.protocol.audit import (
    CONFIG,
    DECISION,
    FORWARDED,
    RECEIPT,
    RESULT,
    STORED,
    Entry,
    SignedHead,
    decode_entry,
    decode_signed_head,
    verify_head,
)
from relay.protocol.batch import RESULT_DOMAIN, Delivered, decode_result
from relay.protocol.bundle import Bundle
from relay.protocol.envelope import ENVELOPE_DOMAIN, Header, decode_header, header_digest
from relay.protocol.keystr import key_id, parse_public_key
from relay.protocol.merkle import leaf_hash, root, verify_consistency
from relay.protocol.receipt import Receipt, decode_receipt


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing that did not verify: `code` is stable, `detail` names where."""

    code: str
    detail: str


@dataclass(frozen=True, slots=True)
class Peer:
    """A pinned peer as a config entry names it."""

    name: str
    jurisdiction: str
    keys: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class SignedReceipt:
    """A receipt envelope whose signature verified under its writer's pinned key."""

    header: Header
    receipt: Receipt
    key: str


@dataclass(frozen=True, slots=True)
class SignedResult:
    """A peer's batch result kept in a `result` entry (delivery-v1, protocol.md §22),
    whose signature verified under the peer's pinned key."""

    peer: str
    delivered: Delivered
    key: str


@dataclass
class Report:
    """What `verify` found."""

    node: str
    size: int = 0  # entries in the tree the bundle rebuilds
    entries: list[Entry] = field(default_factory=list)
    heads: list[SignedHead] = field(default_factory=list)  # verified, by size
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    configs: list[Entry] = field(default_factory=list)  # context and range, by seq
    headers: dict[bytes, Header] = field(default_factory=dict)  # verified envelope headers
    receipts: dict[bytes, SignedReceipt] = field(default_factory=dict)  # by receipt id
    results: dict[tuple[str, bytes], SignedResult] = field(default_factory=dict)  # (peer, batch)

    @property
    def ok(self) -> bool:
        return not self.problems

    def problem(self, code: str, detail: str) -> None:
        self.problems.append(Problem(code, detail))

    def config_at(self, seq: int) -> Entry | None:
        """The config in force at entry `seq` (the last config entry before it)."""
        found = None
        for c in self.configs:
            if c.seq < seq:
                found = c
        return found


def peers_of(config: Entry) -> dict[str, Peer]:
    """The peers a config entry pins, by name."""
    out = {}
    for line in config.names("peers"):
        parts = line.split(" ")
        if len(parts) >= 2:
            out[parts[0]] = Peer(parts[0], parts[1], tuple(parts[2:]))
    return out


def _keys(strings: Iterable[str]) -> dict[str, Ed25519PublicKey]:
    out = {}
    for s in strings:
        try:
            out[key_id(s)] = parse_public_key(s)
        except RelayError:
            continue
    return out


def verify(
    bundle: Bundle, trusted: Sequence[str], witnessed: Sequence[tuple[str, bytes]] = ()
) -> Report:
    """Check every entry, head, witnessed head and envelope of `bundle`.

    `trusted` are the node's key strings the auditor got from the operator out of
    band; `witnessed` are (who, signed head bytes) pairs of this node's heads that
    peers or the auditor kept earlier.
    """
    r = Report(node=bundle.node)
    _entries(bundle, r)
    leaves = [*bundle.before, *(leaf_hash(e) for e in bundle.entries), *bundle.after]
    r.size = len(leaves)
    _context(bundle, r)
    _heads(bundle, r, leaves, dict(_keys(trusted)))
    _witnessed(r, leaves, witnessed)
    _envelopes(bundle, r)
    _results(r)
    return r


def _entries(bundle: Bundle, r: Report) -> None:
    expected = bundle.first
    for i, data in enumerate(bundle.entries):
        try:
            e = decode_entry(data)
        except MalformedError as err:
            r.problem("entry_malformed", f"entry at position {i} (seq {bundle.first + i}): {err}")
            expected += 1
            continue
        if e.seq != expected:
            if e.seq > expected:
                r.problem(
                    "entry_missing",
                    f"entry seq {expected} is missing: position {i} holds seq {e.seq}",
                )
            else:
                r.problem(
                    "entry_out_of_order",
                    f"entry at position {i} has seq {e.seq}, expected {expected}",
                )
            expected = e.seq
        expected += 1
        r.entries.append(e)
        if e.kind == CONFIG:
            r.configs.append(e)
    if len(bundle.before) != bundle.first:
        r.problem(
            "entry_missing",
            f"the bundle says its entries start at seq {bundle.first} "
            f"but holds {len(bundle.before)} leaf hashes before them",
        )


def _context(bundle: Bundle, r: Report) -> None:
    for data in bundle.context:
        try:
            e = decode_entry(data)
        except MalformedError as err:
            r.problem("entry_malformed", f"context entry: {err}")
            continue
        if not 0 <= e.seq < len(bundle.before) or leaf_hash(data) != bundle.before[e.seq]:
            r.problem("entry_changed", f"context entry seq {e.seq} is not the one in the tree")
            continue
        r.configs.insert(0, e)
    r.configs.sort(key=lambda c: c.seq)


def _heads(
    bundle: Bundle, r: Report, leaves: list[bytes], keys: dict[str, Ed25519PublicKey]
) -> None:
    heads: list[SignedHead] = []
    for i, blob in enumerate(bundle.heads):
        try:
            heads.append(decode_signed_head(blob))
        except MalformedError as err:
            r.problem("head_malformed", f"head {i}: {err}")
    heads.sort(key=lambda h: (h.head.size, h.head.at))
    if not keys:
        r.problem("head_unknown_key", "no trusted key given: no head can be checked")
        return
    end = bundle.first + len(bundle.entries)
    good_size = 0  # the largest size whose head matched
    for h in heads:
        head = h.head
        what = f"tree head of size {head.size} signed at {head.at}"
        if head.node != bundle.node:
            r.problem("head_wrong_node", f"{what} is {head.node}'s, not {bundle.node}'s")
            continue
        # keys named by config entries under heads already verified join the trusted
        for c in r.configs:
            if c.seq < good_size:
                keys.update(_keys([c.text("key"), *c.names("retired")]))
        pub = keys.get(head.key)
        if pub is None:
            r.problem("head_unknown_key", f"{what}: key {head.key} is not trusted")
            continue
        try:
            verify_head(h, pub)
        except ProofFailed as err:
            r.problem("head_signature", err.detail)
            continue
        if head.size > len(leaves):
            r.problem(
                "entry_missing",
                f"{what} covers {head.size} entries; the bundle has {len(leaves)}",
            )
            continue
        if root(leaves[: head.size]) != head.root:
            r.problem(
                "root_mismatch",
                f"{what}: the entries do not hash to its root: an entry with seq in "
                f"{good_size}..{head.size - 1} was changed, dropped, added or reordered",
            )
            continue
        good_size = max(good_size, head.size)
        r.heads.append(h)
    if not r.heads:
        r.problem("no_head", "no tree head in the bundle verified")
    elif good_size < end:
        r.notes.append(
            f"entries {good_size}..{end - 1} are under no signed head yet: "
            "export again after the node's next head (every minute)"
        )


def _witnessed(r: Report, leaves: list[bytes], witnessed: Sequence[tuple[str, bytes]]) -> None:
    for who, blob in witnessed:
        try:
            h = decode_signed_head(blob)
        except MalformedError as err:
            r.problem("head_malformed", f"head witnessed by {who}: {err}")
            continue
        head = h.head
        what = f"the head of size {head.size} signed at {head.at}, witnessed by {who}"
        if head.node != r.node:
            r.problem("head_wrong_node", f"{what} is {head.node}'s, not {r.node}'s")
            continue
        if head.size > len(leaves):
            r.notes.append(f"{what} is later than this bundle (size {len(leaves)})")
            continue
        if root(leaves[: head.size]) != head.root:
            r.problem(
                "history_rewritten",
                f"{what}: this log does not extend it; entries before seq {head.size} "
                "were changed after the peer saw the head",
            )


def _node_keys(r: Report) -> dict[str, Ed25519PublicKey]:
    keys: dict[str, Ed25519PublicKey] = {}
    for c in r.configs:
        keys.update(_keys([c.text("key"), *c.names("retired")]))
    return keys


def _peer_keys(r: Report) -> dict[str, dict[str, Ed25519PublicKey]]:
    out: dict[str, dict[str, Ed25519PublicKey]] = {}
    for c in r.configs:
        for p in peers_of(c).values():
            out.setdefault(p.name, {}).update(_keys(p.keys))
    return out


def _envelopes(bundle: Bundle, r: Report) -> None:
    own, peers = _node_keys(r), _peer_keys(r)
    digests = {e.blob("header") for e in r.entries if e.kind == STORED}
    for i, env in enumerate(bundle.envelopes):
        try:
            h = decode_header(env.header)
        except MalformedError as err:
            r.problem("envelope_malformed", f"envelope {i}: {err}")
            continue
        keys = own if h.origin == bundle.node else peers.get(h.origin, {})
        pub = keys.get(h.key)
        what = f"envelope {h.id.hex()} from {h.origin}"
        if pub is None:
            r.notes.append(f"{what}: key {h.key} is not pinned in the log; not checked")
            continue
        if not ed25519.verify(pub, env.signature, ENVELOPE_DOMAIN + env.header):
            r.problem("envelope_signature", f"{what}: the signature does not verify")
            continue
        if header_digest(env.header) not in digests:
            r.problem("envelope_not_logged", f"{what}: no stored entry has its header digest")
            continue
        r.headers[h.id] = h
        if h.kind == "receipt":
            try:
                receipt = decode_receipt(env.payload)
            except MalformedError as err:
                r.problem("envelope_malformed", f"{what}: {err}")
                continue
            if len(env.payload) != h.size:
                r.problem("envelope_malformed", f"{what}: the payload is not the signed one")
                continue
            r.receipts[h.id] = SignedReceipt(h, receipt, key_id_of(keys, pub))


def _results(r: Report) -> None:
    """Check the peers' signed batch results the `result` entries keep."""
    peers = _peer_keys(r)
    for e in r.entries:
        if e.kind != RESULT:
            continue
        peer, batch = e.text("peer"), e.blob("batch")
        what = f"seq {e.seq}: the batch result of {peer} for batch {batch.hex()}"
        keys = peers.get(peer, {})
        pub = next(
            (
                k
                for k in keys.values()
                if ed25519.verify(k, e.blob("signature"), RESULT_DOMAIN + e.blob("result"))
            ),
            None,
        )
        if pub is None:
            if keys:
                r.problem("result_signature", f"{what}: the signature does not verify")
            else:
                r.notes.append(f"{what}: no key of {peer} is pinned in the log; not checked")
            continue
        try:
            result = decode_result(e.blob("result"))
        except MalformedError as err:
            r.problem("result_malformed", f"{what}: {err}")
            continue
        if result.batch_id != batch or result.delivered is None:
            r.problem("result_malformed", f"{what}: it is another batch's, or states no delivery")
            continue
        r.results[(peer, batch)] = SignedResult(peer, result.delivered, key_id_of(keys, pub))


def key_id_of(keys: dict[str, Ed25519PublicKey], pub: Ed25519PublicKey) -> str:
    return next((k for k, v in keys.items() if v is pub), "")


# --- answers --------------------------------------------------------------------------


def where(r: Report, envelope: bytes) -> list[str]:
    """Where the envelope (or message) `envelope` was stored, and on whose word."""
    lines = []
    for e in r.entries:
        if e.blob("envelope") != envelope:
            continue
        if e.kind == STORED:
            cfg = r.config_at(e.seq)
            here = cfg.text("jurisdiction") if cfg else "?"
            came = f"from {e.text('from')}" if e.text("from") else "from a local client"
            lines.append(
                f"seq {e.seq}: stored at {r.node} ({here}) {came}, residency "
                f"{','.join(e.names('residency'))}; on {r.node}'s own signed log"
            )
        elif e.kind == FORWARDED:
            lines.append(
                f"seq {e.seq}: forwarded to {e.text('to')}, trusted as {e.text('jurisdiction')}"
            )
        elif e.kind == RECEIPT and e.text("via") == "result":
            result = r.results.get((e.text("by"), e.blob("receipt")))
            word = (
                f"on {e.text('by')}'s signed word (batch result {e.blob('receipt').hex()}, "
                f"key {result.key})"
                if result is not None and _result_says(result, e, envelope)
                else "the signed batch result is not in the bundle"
            )
            lines.append(
                f"seq {e.seq}: {e.text('by')} reported {e.text('status')} in "
                f"{e.text('jurisdiction')}; {word}"
            )
        elif e.kind == RECEIPT:
            signed = r.receipts.get(e.blob("receipt"))
            word = (
                f"on {e.text('by')}'s signed word (receipt {e.blob('receipt').hex()}, "
                f"key {signed.key})"
                if signed is not None and _receipt_says(signed, e, envelope)
                else "the signed receipt is not in the bundle"
            )
            lines.append(
                f"seq {e.seq}: {e.text('by')} reported {e.text('status')} in "
                f"{e.text('jurisdiction')}; {word}"
            )
        elif e.kind == DECISION:
            lines.append(
                f"seq {e.seq}: decision at {e.text('point')}: {e.text('outcome')} "
                f"by rule {e.text('rule') or '-'} (peer {e.text('peer') or '-'})"
            )
    return lines


def _receipt_says(signed: SignedReceipt, e: Entry, envelope: bytes) -> bool:
    rc = signed.receipt
    return (
        signed.header.origin == e.text("by")
        and rc.status == e.text("status")
        and rc.jurisdiction == e.text("jurisdiction")
        and any(ident == envelope for ident, _ in rc.entries)
    )


def _result_says(result: SignedResult, e: Entry, envelope: bytes) -> bool:
    d = result.delivered
    return (
        e.text("status") == "delivered"
        and d.jurisdiction == e.text("jurisdiction")
        and envelope in d.ids
    )


def under_rule(r: Report, rule: str) -> list[Entry]:
    """Every decision, store and forward the log records under `rule`."""
    return [
        e for e in r.entries if e.kind in (DECISION, STORED, FORWARDED) and e.text("rule") == rule
    ]


@dataclass(frozen=True, slots=True)
class ResidencyAnswer:
    """Was anything stored outside its residency set: the checks made and what failed."""

    stored: int
    forwarded: int
    receipts: int
    outside: tuple[str, ...]


def outside_residency(r: Report) -> ResidencyAnswer:
    """Check every copy the log records against the envelope's residency set."""
    residency: dict[bytes, tuple[str, ...]] = {}
    outside: list[str] = []
    stored = forwarded = receipts = 0
    for e in r.entries:
        env = e.blob("envelope")
        if e.kind == STORED:
            stored += 1
            residency[env] = e.names("residency")
            cfg = r.config_at(e.seq)
            if cfg is None:
                outside.append(f"seq {e.seq}: no config entry says where {r.node} was")
            elif cfg.text("jurisdiction") not in e.names("residency"):
                outside.append(
                    f"seq {e.seq}: envelope {env.hex()} stored at {r.node} "
                    f"({cfg.text('jurisdiction')}) outside {','.join(e.names('residency'))}"
                )
        elif e.kind == FORWARDED:
            forwarded += 1
            if e.text("jurisdiction") not in e.names("residency"):
                outside.append(
                    f"seq {e.seq}: envelope {env.hex()} forwarded to {e.text('to')} "
                    f"({e.text('jurisdiction')}) outside {','.join(e.names('residency'))}"
                )
        elif e.kind == RECEIPT and env in residency:
            receipts += 1
            if e.text("jurisdiction") not in residency[env]:
                outside.append(
                    f"seq {e.seq}: {e.text('by')} says it stored envelope {env.hex()} in "
                    f"{e.text('jurisdiction')}, outside {','.join(residency[env])}"
                )
    return ResidencyAnswer(stored, forwarded, receipts, tuple(outside))


def check_consistency(
    old: SignedHead, new: SignedHead, proof: Sequence[bytes], pub: Ed25519PublicKey | None
) -> None:
    """ProofFailed unless `new` extends `old` (both signed by `pub` when given)."""
    if old.head.node != new.head.node:
        raise ProofFailed(f"the heads are of two nodes: {old.head.node} and {new.head.node}")
    if pub is not None:
        verify_head(old, pub)
        verify_head(new, pub)
    verify_consistency(old.head.size, new.head.size, old.head.root, new.head.root, proof)
