"""Who this node trusts, and for which jurisdiction (DESIGN §3, §7).

Built from pinned `[[peers]]` only: what a peer says about itself in its node
document is never used here. Unknown means deny.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from relay.config import Config
from relay.keystr import key_id, parse_public_key


@dataclass(frozen=True, slots=True)
class TrustedNode:
    name: str
    jurisdiction: str
    url: str | None
    keys: dict[str, Ed25519PublicKey]  # key id -> key


class Trust:
    """Lookup of pinned peers by name."""

    def __init__(self, config: Config) -> None:
        self._nodes: dict[str, TrustedNode] = {}
        for p in config.peers:
            keys = {key_id(k): parse_public_key(k) for k in p.keys}
            self._nodes[p.name] = TrustedNode(p.name, p.jurisdiction, p.url, keys)

    def node(self, name: str) -> TrustedNode | None:
        return self._nodes.get(name)

    def jurisdiction(self, name: str) -> str | None:
        n = self._nodes.get(name)
        return n.jurisdiction if n else None

    def names(self) -> list[str]:
        return sorted(self._nodes)
