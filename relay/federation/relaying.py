"""Relaying: envelopes for other nodes, and the certificates that travel with them.

Used by `inbound` (accepting an envelope whose `dest` is another node) and
`outbound` (what to carry in an item's fifth element).

Invariants:
- A node relays an envelope only if `[relay]` allows it for that origin or
  destination (else `rejected:not_for_us`), only if appending itself keeps
  the trace within `max_hops` (else `rejected:hops`), and only if the next
  hop is not already in the trace (else `rejected:loop`: the loop is refused
  before it happens, by the node that would close it).
- A relay stores nothing it cannot forward: the next hop must be trusted
  with a URL, and its trusted jurisdiction must pass the forward check now.
- The fifth element of an item carries only its origin's certificates; a
  carried certificate counts only after `Trust.learn` judged it, and it
  vouches for its origin and nothing else. A sender carries them once per
  origin per batch, never to the node the certificate names.
"""

from __future__ import annotations

from collections.abc import Sequence

from relay.errors import ItemRejected, MalformedError
from relay.node.state import NodeState
from relay.policy.residency import Decision, check_forward
from relay.policy.routing import next_hop, relay_allowed
from relay.policy.trust import TrustedNode
from relay.protocol.batch import BatchItem, check_trace
from relay.protocol.envelope import Header, decode_header

MAX_CARRIED = 8  # certificates looked at per item; an origin needs one or two


def plan_relay(state: NodeState, h: Header, trace: Sequence[str]) -> str:
    """The next hop for an envelope this node would relay; ItemRejected if it may not."""
    cfg = state.config
    if not relay_allowed(cfg.relay, kind=h.kind, origin=h.origin, dest=h.dest):
        raise ItemRejected(
            "not_for_us",
            f"envelope is for {h.dest}, and {state.name} does not relay from {h.origin} "
            f"to {h.dest}",
        )
    onward = (*trace, state.name)  # the trace as the next hop will check it
    check_trace(onward, h.origin, state.name, h.max_hops)
    hop = next_hop(cfg.routes, h.dest)
    if hop in onward:
        raise ItemRejected(
            "loop", f"the route from {state.name} to {h.dest} leads back to {hop}, in the trace"
        )
    return hop


def forward_decision(state: NodeState, h: Header, hop: str) -> Decision:
    """The forward check (DESIGN §7) toward `hop`, made at accept so nothing is stored in vain.

    ItemRejected("not_for_us") if the next hop is trusted but has no URL.
    """
    nxt = state.trust.node(hop)
    if nxt is not None and nxt.url is None:
        raise ItemRejected(
            "not_for_us", f"{state.name} has no URL for {hop}, its next hop toward {h.dest}"
        )
    return check_forward(
        state.policy,
        h.residency,
        peer=hop,
        peer_jurisdiction=nxt.jurisdiction if nxt else None,
    )


def learn_carried(state: NodeState, items: Sequence[BatchItem]) -> None:
    """Let Trust judge the certificates items carry for their origins (fifth element).

    Those it accepts are kept (and written with the batch's commit, see
    `relay.node.certificates`); the rest are ignored: they vouch for nothing.
    """
    if not state.trust.has_authorities:
        return
    for item in items:
        if not item.certificates:
            continue
        try:
            origin = decode_header(item.header_bytes).origin
        except MalformedError:
            continue  # the item itself is refused when it is judged
        state.trust.learn(item.certificates[:MAX_CARRIED], name=origin)


def introduce(state: NodeState, sender: str, certificates: Sequence[bytes]) -> TrustedNode | None:
    """A sender not pinned here, trusted by a certificate of its Relay-Certificate header."""
    if state.trust.has_authorities:
        state.trust.learn(certificates[:MAX_CARRIED], name=sender)
    return state.trust.node(sender)


def introduce_carried(
    state: NodeState, sender: str, items: Sequence[BatchItem]
) -> TrustedNode | None:
    """A sender not pinned here, trusted by a certificate it carries for its own envelopes."""
    learn_carried(state, items)
    return state.trust.node(sender)


def carried(state: NodeState, origin: str, hop: str) -> tuple[bytes, ...] | None:
    """The certificates to carry with `origin`'s envelopes to `hop`, or None."""
    if origin == hop:
        return None
    if origin == state.name:
        return state.trust.own_certificates or None
    blob = state.trust.certificate_for(origin)
    return (blob,) if blob is not None else None


def carried_size(state: NodeState, origin: str, hop: str) -> int:
    """Bytes `carried` adds to a batch body (with a little msgpack framing)."""
    certs = carried(state, origin, hop)
    return sum(len(c) + 5 for c in certs) + 1 if certs else 0
