"""The retention predicates (relay.node.retention), one text for every backend.

Each is one SQL condition with named parameters from `Cutoffs` (`:cmax`,
`:cmin`, `:mmax`, `:mmin`, `:expired`); alias `e` is envelopes, `d` is
decisions. Purge and preview use the same text, so `relay purge --dry-run`
shows exactly what a purge deletes. SQLite takes `:name` as written;
`pyformat` gives the `%(name)s` spelling psycopg takes.
"""

from __future__ import annotations

import re
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

_NAMED = re.compile(r"(?<![:\w]):([a-z_][a-z0-9_]*)\b")


def params(cut: Cutoffs, limit: int) -> dict[str, int]:
    """The named parameters of the predicates, with `:limit`."""
    return {**asdict(cut), "limit": limit}


def pyformat(sql: str) -> str:
    """`sql` with each `:name` parameter spelt `%(name)s` (psycopg's named style)."""
    return _NAMED.sub(r"%(\1)s", sql.replace("%", "%%"))
