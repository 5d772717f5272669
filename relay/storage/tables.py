"""The tables every backend stores, in one list (row counts, copies between backends)."""

from __future__ import annotations

TABLES = (
    "envelopes",
    "payloads",
    "queue",
    "attempts",
    "inbox",
    "recipients",
    "pending_receipts",
    "batches",
    "nonces",
    "peer_state",
    "idempotency",
    "decisions",
    "purges",
    "webhook_state",
    "certificates",
    "audit_log",
    "audit_heads",
    "audit_witnessed",
    "erasures",
    "erasure_answers",
)
