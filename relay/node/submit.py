"""From a client's message to signed, queued envelopes (DESIGN §6, §7 submit).

A message may name recipients at several nodes; it becomes one envelope per
destination node. The message id the client sees is the first envelope's id.
Each envelope is queued for its next hop: the `via` of the first matching
`[[routes]]` entry, else the destination itself. Residency is stamped and
checked for every destination and planned hop before anything is written;
one refusal refuses the whole submit (nothing queued).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from relay.errors import BadRequest, MalformedError, PolicyRefused, RelayError
from relay.logs import event
from relay.node import quota
from relay.node.decisions import decision_record, refusal
from relay.node.messages import field_error
from relay.node.state import NodeState
from relay.policy.residency import Decision, Policy, check_submit, stamp
from relay.policy.routing import next_hop, route_for
from relay.protocol.envelope import (
    ENVELOPE_DOMAIN,
    MAX_LIFETIME_MS,
    Envelope,
    Header,
    decode_header,
    encode_header,
    header_for,
    seal,
)
from relay.protocol.names import split_address
from relay.protocol.sealing import SealInfo
from relay.storage.interface import WriteTx
from relay.storage.records import DecisionRecord, NewEnvelope, Recipient

log = logging.getLogger("relay.submit")

# split_address (two regexes) once per distinct address: a batch names the same
# recipients again and again. It is pure, and lru_cache keeps no exceptions, so
# a malformed address is refused every time.
split = functools.lru_cache(maxsize=4096)(split_address)


@dataclass(frozen=True, slots=True)
class Planned:
    env: Envelope
    hop: str | None
    mailboxes: tuple[str, ...]
    decision: Decision


@dataclass(frozen=True, slots=True)
class PlannedMessage:
    msg_id: bytes
    parts: tuple[Planned, ...]
    audits: tuple[tuple[str, Decision], ...]  # (dest, decision) passed in audit mode


def plan(
    state: NodeState, mailbox: str, msg: Mapping[str, Any], index: int | None
) -> PlannedMessage:
    """Build and sign the envelopes of one checked message; nothing is written."""
    now = state.now_ms()
    by_dest: dict[str, list[str]] = {}
    for addr in msg["to"]:
        try:
            _, dest = split(addr)
        except MalformedError as e:
            raise field_error(index, e.detail) from None
        by_dest.setdefault(dest, [])
        if addr not in by_dest[dest]:
            by_dest[dest].append(addr)
    ttl_ms = (msg["ttl"] * 1000) if msg["ttl"] else state.config.node.queue_lifetime_ms
    ttl_ms = min(ttl_ms, MAX_LIFETIME_MS)
    sender = f"{mailbox}@{state.name}"
    parts: list[Planned] = []
    audits: list[tuple[str, Decision]] = []
    msg_id = b""
    for dest, addrs in by_dest.items():
        local = dest == state.name
        dest_jur = state.config.node.jurisdiction if local else state.trust.jurisdiction(dest)
        mailboxes: tuple[str, ...] = ()
        if local:
            names = [split(a)[0] for a in addrs]
            for a, name in zip(addrs, names, strict=True):
                if state.config.mailbox(name) is None:
                    raise field_error(index, f"no mailbox {a} at this node")
            mailboxes = tuple(dict.fromkeys(names))
        elif state.trust.node(dest) is None:
            raise PolicyRefused(unknown_destination(state, dest), "builtin:unknown_destination")
        hop = dest if local else next_hop(state.config.routes, dest)
        hops = [] if hop == dest else [(hop, state.trust.jurisdiction(hop))]
        try:
            stamped, checked = residency_verdicts(
                state.policy, msg["residency"], mailbox, dest, dest_jur, msg["ctype"], hops
            )
        except BadRequest as e:
            raise field_error(index, e.detail) from None
        if not stamped.allowed:
            raise PolicyRefused(stamped.reason, stamped.rule)
        assert checked is not None  # made whenever the stamp allows
        if not checked.allowed:
            raise PolicyRefused(checked.reason, checked.rule)
        audits.extend((dest, d) for d in (stamped, checked) if d.outcome == "audit")
        ident = state.random(16)
        if not msg_id:
            msg_id = ident
        payload, sealed = msg["body"], None
        if not local:
            payload, sealed = seal_for(state, dest, ident, msg["body"])
        try:  # seal checks the header before it signs (check_header)
            header = header_for(
                id=ident,
                kind="message",
                origin=state.name,
                key_id=state.key_id,
                sender=sender,
                to=addrs,
                dest=dest,
                created=now,
                expires=now + ttl_ms,
                residency=stamped.residency,
                ctype=msg["ctype"],
                payload=payload,
                sealed=sealed,
            )
            env = seal(header, payload, state.key)
        except MalformedError as e:
            raise field_error(index, e.detail) from None
        parts.append(Planned(env, None if local else hop, mailboxes, stamped))
    return PlannedMessage(msg_id, tuple(parts), tuple(audits))


# Residency verdicts by policy object: id -> (the policy, inputs -> verdicts).
# Both checks are pure functions of the policy and their inputs, and a reload
# replaces the policy object (never changes it), so a new policy starts an
# empty map; holding the policy makes an id reused after it is freed harmless.
_VERDICTS: dict[int, tuple[Policy, dict[tuple[object, ...], tuple[Decision, Decision | None]]]] = {}
_MAX_POLICIES = 8
_MAX_VERDICTS = 4096


def residency_verdicts(
    policy: Policy,
    requested: Sequence[str] | None,
    mailbox: str,
    dest: str,
    dest_jur: str | None,
    ctype: str,
    hops: Sequence[tuple[str, str | None]],
) -> tuple[Decision, Decision | None]:
    """`stamp`, then `check_submit` of the stamped set when the stamp allows
    (else None), for one message to `dest`: computed once per distinct inputs
    under one policy (the messages of a batch from one mailbox to one
    destination share them), each message still getting its own verdicts.
    BadRequest from `stamp` is raised every time, never remembered."""
    held = _VERDICTS.get(id(policy))
    if held is None or held[0] is not policy:
        if len(_VERDICTS) >= _MAX_POLICIES:
            _VERDICTS.clear()
        held = (policy, {})
        _VERDICTS[id(policy)] = held
    wanted = None if requested is None else tuple(requested)
    key = (wanted, mailbox, dest, dest_jur, ctype, tuple(hops))
    found = held[1].get(key)
    if found is None:
        stamped = stamp(
            policy,
            requested,
            sender=mailbox,
            dest_node=dest,
            dest_jurisdiction=dest_jur,
            ctype=ctype,
        )
        checked = None
        if stamped.allowed:
            checked = check_submit(
                policy, stamped.residency, dest_node=dest, dest_jurisdiction=dest_jur, hops=hops
            )
        found = (stamped, checked)
        if len(held[1]) >= _MAX_VERDICTS:
            held[1].clear()
        held[1][key] = found
    return found


def seal_for(
    state: NodeState, dest: str, ident: bytes, body: bytes
) -> tuple[bytes, SealInfo | None]:
    """The payload for an envelope to `dest` and its seal map (docs/sealing.md).

    Sealed when trust knows a seal key for `dest` (pinned, else from its
    certificate) and `[federation] seal` is not "off"; with "required", a
    destination without one refuses the message.
    """
    node = state.trust.node(dest)
    seal_keys = node.seal_keys if node is not None else ()
    done = state.sealer.seal(
        dest=dest, seal_keys=seal_keys, env_id=ident, origin=state.name, body=body
    )
    if done is not None:
        info, ciphertext = done
        return ciphertext, info
    if state.sealer.mode == "required":
        raise PolicyRefused(
            f"{dest} has no seal key known at this node (pinned or certified) and [federation]"
            f' seal = "required"; add its seal key (relay peer update DIR --name {dest}'
            " --seal-key ...)",
            "builtin:seal_required",
        )
    return body, None


def resign(header: Header, key: Ed25519PrivateKey, kid: str) -> Envelope:
    """`header` naming key id `kid` instead, signed with `key` (docs/keys.md "Revoke").

    Only the `key` field changes: the id, and so dedupe and receipts, stay.
    The payload is not needed (the signature covers the header alone); the
    envelope returned carries none, for `WriteTx.resign`.
    """
    header_bytes = encode_header(dataclasses.replace(header, key=kid))
    checked = decode_header(header_bytes)
    return Envelope(header_bytes, key.sign(ENVELOPE_DOMAIN + header_bytes), b"", checked)


def unknown_destination(state: NodeState, dest: str) -> str:
    """Why nothing may be sent to `dest`: its jurisdiction is unknown here.

    Discovery never builds a URL from the typed name: a destination is known
    from config (a pinned peer, with or without URL) or from a certificate
    this node holds, and from nothing else.
    """
    route = route_for(state.config.routes, dest)
    why = state.trust.why_untrusted(dest)
    if route is not None:
        return (
            f"{dest} is routed via {route.via}, but its jurisdiction is unknown here ({why}); "
            "pin it (a [[peers]] entry without url will do) or hold a certificate for it"
        )
    return (
        f"{why}, and no [[routes]] entry leads to it; nothing may be sent to a node whose "
        "jurisdiction is unknown (this node never looks a typed name up on the network)"
    )


async def record(
    state: NodeState, tx: WriteTx, mailbox: str, planned: Sequence[PlannedMessage]
) -> None:
    """Store planned messages: envelopes, queue and inbox rows, recipient status."""
    now = state.now_ms()
    items = [
        NewEnvelope(
            env=p.env,
            trace=(),
            from_peer=None,
            hop=p.hop,
            mailboxes=p.mailboxes,
            rule_id=p.decision.rule,
            policy_hash=state.policy_hash,
        )
        for pm in planned
        for p in pm.parts
    ]
    await quota.check_unread(state.config.limits.mailbox_unread_bytes, tx, items, "local")
    rids = iter(await tx.insert_envelopes(items, now))
    rows: list[Recipient] = []
    decisions: list[DecisionRecord] = []
    for pm in planned:
        for p in pm.parts:
            rid = next(rids)
            status = "queued" if p.hop else "delivered"
            rows.extend(Recipient(pm.msg_id, a, rid, mailbox, status, now) for a in p.env.header.to)
            if p.hop:
                state.note_hop(tx, p.hop)
            else:
                state.note_inbox(tx, p.mailboxes)
        decisions.extend(
            decision_record(
                "submit", d, at=now, envelope=pm.msg_id, peer=dest, policy_hash=state.policy_hash
            )
            for dest, d in pm.audits
        )
    await tx.record_decisions(decisions)
    await tx.add_recipients(rows)


async def record_refusal(
    state: NodeState, mailbox: str, err: PolicyRefused, to: Sequence[str]
) -> None:
    """A submit refused by policy leaves a decision row and nothing else."""
    now = state.now_ms()

    denial = decision_record(
        "submit",
        refusal(err.rule, f"{mailbox}: {err.detail}"),
        at=now,
        envelope=None,
        peer=",".join(sorted({a.rpartition("@")[2] for a in to})),
        policy_hash=state.policy_hash,
    )

    async def job(tx: WriteTx) -> None:
        await tx.record_decisions([denial])

    try:
        await state.store.write(job)
    except RelayError as e:
        event(log, "decision_not_recorded", logging.ERROR, rule=err.rule, detail=e.detail)
