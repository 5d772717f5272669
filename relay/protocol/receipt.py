"""Receipt payloads (DESIGN §4): one status for 1..1000 envelope ids. Pure.

Invariant: encode_receipt runs its output through decode_receipt, so this node
never sends a receipt a peer would refuse.
"""

from __future__ import annotations

from dataclasses import dataclass

from relay.errors import MalformedError
from relay.protocol.envelope import ID_SIZE, MAX_RECIPIENTS
from relay.protocol.names import split_address, valid_jurisdiction
from relay.protocol.strict import fields, int_field, pack, show, str_array, str_field, strict_unpack

MAX_RECEIPT_ENTRIES = 1000
# Entries a node applies from the receipts of one batch; a receipt over it is refused.
MAX_BATCH_RECEIPT_ENTRIES = 10_000

RECEIPT_STATUSES = frozenset({"delivered", "rejected", "expired"})
MODES = frozenset({"enforce", "audit"})


@dataclass(frozen=True, slots=True)
class Receipt:
    """A receipt payload: one status for 1..1000 (envelope id, recipients) entries."""

    status: str
    reason: str
    at: int
    jurisdiction: str
    mode: str
    entries: tuple[tuple[bytes, tuple[str, ...]], ...]


_RECEIPT_KEYS = frozenset({"status", "reason", "at", "jurisdiction", "mode", "envelopes"})


def encode_receipt(r: Receipt) -> bytes:
    """Pack a receipt payload in the DESIGN's key order; MalformedError if invalid."""
    data = pack(
        {
            "status": r.status,
            "reason": r.reason,
            "at": r.at,
            "jurisdiction": r.jurisdiction,
            "mode": r.mode,
            "envelopes": [[env_id, list(rcpts)] for env_id, rcpts in r.entries],
        }
    )
    decode_receipt(data)
    return data


def decode_receipt(data: bytes) -> Receipt:
    """Strictly decode and check a receipt payload; MalformedError."""
    w = "receipt"
    m = fields(strict_unpack(data, w), w, _RECEIPT_KEYS)
    status = str_field(m, "status", w)
    if status not in RECEIPT_STATUSES:
        raise MalformedError(f"receipt: status: {show(status)} is not delivered|rejected|expired")
    reason = str_field(m, "reason", w)
    if status == "delivered" and reason:
        raise MalformedError("receipt: reason: must be empty when delivered")
    jurisdiction = str_field(m, "jurisdiction", w)
    if not valid_jurisdiction(jurisdiction):
        raise MalformedError(f"receipt: jurisdiction: {show(jurisdiction)} is not a country code")
    mode = str_field(m, "mode", w)
    if mode not in MODES:
        raise MalformedError(f"receipt: mode: {show(mode)} is not enforce or audit")
    raw = m["envelopes"]
    if type(raw) is not list or not 1 <= len(raw) <= MAX_RECEIPT_ENTRIES:
        raise MalformedError(f"receipt: envelopes: expected an array of 1..{MAX_RECEIPT_ENTRIES}")
    entries = tuple(_receipt_entry(entry, i) for i, entry in enumerate(raw))
    if len({env_id for env_id, _ in entries}) != len(entries):
        raise MalformedError("receipt: envelopes: an envelope id is listed twice")
    return Receipt(status, reason, int_field(m, "at", w), jurisdiction, mode, entries)


def _receipt_entry(entry: object, i: int) -> tuple[bytes, tuple[str, ...]]:
    w = f"receipt: envelopes[{i}]"
    if type(entry) is not list or len(entry) != 2:
        raise MalformedError(f"{w}: expected [bin16 id, [recipient, ...]]")
    env_id = entry[0]
    if type(env_id) is not bytes or len(env_id) != ID_SIZE:
        raise MalformedError(f"{w}: the id is not a 16-byte bin")
    rcpts = str_array(entry[1], w)
    if not 1 <= len(rcpts) <= MAX_RECIPIENTS or len(set(rcpts)) != len(rcpts):
        raise MalformedError(f"{w}: expected 1..{MAX_RECIPIENTS} distinct recipients")
    for rcpt in rcpts:
        try:
            split_address(rcpt)
        except MalformedError as e:
            raise MalformedError(f"{w}: {e.detail}") from None
    return env_id, rcpts
