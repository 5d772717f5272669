"""Where an envelope goes next, and whether this node relays it (DESIGN §4, §9).

Pure: config values in, names out.

Invariants:
- A pattern is an exact node name, or `*.suffix`, which matches every name
  ending in `.suffix` (never `suffix` itself). Names compare byte for byte.
- `next_hop` takes the first `[[routes]]` entry whose `to` matches; with no
  match the destination is its own next hop (direct). A route's `via` is
  always contacted directly: routes are not applied again to the `via`.
- A message is relayed for an origin in `for_origins` or a destination in
  `for_destinations`. A receipt travels the other way, so it is relayed
  when its destination (the original origin) is in `for_origins` or its
  writer in `for_destinations`, as well as by the message rule: receipts
  answering traffic a relay carries can always find their way back through it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from relay.config.model import RelayConfig, Route


def matches(pattern: str, name: str) -> bool:
    """True if node `name` matches `pattern` (an exact name or `*.suffix`)."""
    if pattern.startswith("*."):
        return name.endswith(pattern[1:])
    return name == pattern


def matches_any(patterns: Iterable[str], name: str) -> bool:
    """True if any pattern matches `name`."""
    return any(matches(p, name) for p in patterns)


def route_for(routes: Sequence[Route], dest: str) -> Route | None:
    """The first route whose `to` matches `dest`, or None (direct)."""
    return next((r for r in routes if matches(r.to, dest)), None)


def next_hop(routes: Sequence[Route], dest: str) -> str:
    """The node an envelope for `dest` is handed to: a route's `via`, else `dest` itself."""
    route = route_for(routes, dest)
    return route.via if route is not None else dest


def relay_allowed(cfg: RelayConfig, *, kind: str, origin: str, dest: str) -> bool:
    """Whether `[relay]` lets this node carry an envelope from `origin` to `dest`."""
    if matches_any(cfg.for_origins, origin) or matches_any(cfg.for_destinations, dest):
        return True
    if kind == "receipt":
        return matches_any(cfg.for_origins, dest) or matches_any(cfg.for_destinations, origin)
    return False
