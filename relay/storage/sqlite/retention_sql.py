"""The retention predicates (relay.node.retention), shared by the purge and its preview.

Each is one SQL condition with named parameters from `Cutoffs`
(`:cmax`, `:cmin`, `:mmax`, `:mmin`, `:expired`); alias `e` is envelopes,
`d` is decisions. Purge and preview use the same text, so `relay purge
--dry-run` shows exactly what a purge deletes.
"""

from __future__ import annotations

from dataclasses import asdict

from relay.storage.records import Cutoffs

CONTENT_DUE = (
    "(e.payload_sha IS NOT NULL"
    " AND (e.received <= :cmax OR (e.discard = 1 AND e.received <= :cmin)))"
)
# CONTENT_DUE as two conditions, each served by its partial index
CONTENT_DUE_PARTS = ("e.received <= :cmax", "e.discard = 1 AND e.received <= :cmin")
QUEUED = "EXISTS (SELECT 1 FROM queue q WHERE q.rid = e.rid)"
METADATA_DUE = (
    "(e.received <= :mmax AND e.received <= :mmin AND e.expires <= :expired"
    f" AND (NOT {QUEUED} OR {CONTENT_DUE})"
    " AND (e.payload_sha IS NULL OR e.received <= :cmin))"
)
DECISIONS_DUE = "(d.at <= :mmax AND d.at <= :mmin)"


def params(cut: Cutoffs, limit: int) -> dict[str, int]:
    """The named parameters of the predicates, with `:limit`."""
    return {**asdict(cut), "limit": limit}
