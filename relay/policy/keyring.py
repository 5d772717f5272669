"""A node's own keys over time, and the peer keys it refuses (DESIGN §3, issue 4.6).

Invariants:
- Exactly one key signs: `[node] key_file`. Everything the node signs from
  now on (envelopes, receipts, request signatures, batch results, webhooks)
  is signed with it, and carries its key id.
- A retired key (`[node] retired_keys`) never signs. It is published in the
  node document until its `valid_until`, so that what it signed and is still
  queued somewhere can be verified; after that it is not published.
- A revoked key (`[node] revoked_keys`, or `revoked_keys` of a `[[peers]]`
  entry) is never used, never published and never accepted; relay.config.parse
  refuses a key that is revoked and in use at the same time. A request or an
  envelope naming a revoked key is refused with a detail that says so.
- The signing key is published with `valid_until` = now + queue lifetime:
  the earliest moment it could stop being accepted, since a rotation keeps
  it valid at least that long (relay.config.keyops).
Pure: no files, no clock (callers pass `now_ms`).
"""

from __future__ import annotations

from relay.config.model import Config, NodeConfig
from relay.protocol.keystr import key_id


def published_keys(node: NodeConfig, signing_key: str, now_ms: int) -> dict[str, dict[str, object]]:
    """The node document's `keys` map: `{key id: {"key": ..., "valid_until": ms}}`."""
    keys: dict[str, dict[str, object]] = {
        key_id(signing_key): {"key": signing_key, "valid_until": now_ms + node.queue_lifetime_ms}
    }
    for retired in node.retired_keys:
        if retired.valid_until_ms > now_ms:
            keys[key_id(retired.key)] = {"key": retired.key, "valid_until": retired.valid_until_ms}
    return keys


def revoked_key(config: Config, node: str, kid: str) -> str | None:
    """The revoked key string of pinned peer `node` whose key id is `kid`, if any."""
    peer = config.peer(node)
    if peer is None:
        return None
    return next((k for k in peer.revoked_keys if key_id(k) == kid), None)


def unknown_key_detail(config: Config, node: str, kid: str) -> str:
    """Why `node`'s key `kid` is not accepted here: revoked, or simply not pinned."""
    revoked = revoked_key(config, node, kid)
    if revoked is not None:
        return f"key {kid!r} of {node} is revoked at this node ({revoked})"
    return f"{node} has no key {kid!r} pinned at this node"
