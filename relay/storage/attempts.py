"""The `attempts` table (each envelope's delivery attempts) in SQL every backend runs.

The sender writes an attempt's rows in the transaction that records its
outcome (relay.federation.outbound); `relay trace` reads them
(relay.storage.trace_sql). An envelope that stays queued keeps its latest
MAX_ATTEMPTS_KEPT: `trim` runs after each attempt that leaves it queued,
so a peer down for days costs a bounded number of rows per envelope.
"""

from __future__ import annotations

from relay.storage.records import Attempt

COLUMNS = "rid, hop, started, ended, outcome, code, error, batch_size"


def trim(rids: str, keep: str) -> str:
    """The DELETE that keeps the latest `keep` attempts of each envelope in `rids`
    (both SQL fragments: placeholders or an array test, as the backend writes them)."""
    return (
        "DELETE FROM attempts WHERE seq IN (SELECT seq FROM (SELECT seq, row_number()"
        f" OVER (PARTITION BY rid ORDER BY seq DESC) AS n FROM attempts WHERE rid {rids})"
        f" AS newest WHERE n > {keep})"
    )


def row(a: Attempt) -> tuple[int, str, int, int, str, str, str, int]:
    """`a` as the values of COLUMNS."""
    return (a.rid, a.hop, a.started, a.ended, a.outcome, a.code, a.error, a.batch_size)
