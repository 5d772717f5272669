"""What crosses the storage interface (relay.storage.interface): named records.

Invariants:
- Records are frozen, slotted dataclasses with named fields; nothing above
  storage unpacks a row by position, and nothing here names a table or a
  column: a second backend builds the same records from its own rows.
- Envelope row ids (`rid`) are handed out by the storage (`insert_envelopes`)
  and are only compared and passed back, never computed above it.
- Times are unix ms; envelope ids are 16 raw bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from relay.protocol.envelope import Envelope

FINAL_STATUSES = frozenset({"delivered", "rejected", "expired"})  # never overwritten


@dataclass(frozen=True, slots=True)
class NewEnvelope:
    """An envelope about to be stored, with where it goes next."""

    env: Envelope
    trace: tuple[str, ...]
    from_peer: str | None
    hop: str | None  # next hop to queue for, None if not forwarded
    mailboxes: tuple[str, ...] = ()  # local inbox deliveries
    rule_id: str = ""
    policy_hash: str = ""


@dataclass(frozen=True, slots=True)
class Recipient:
    """The status of one recipient of a message this node accepted from a client."""

    msg: bytes
    address: str
    rid: int
    mailbox: str
    status: str
    at: int


@dataclass(frozen=True, slots=True)
class RecipientStatus:
    """A recipient's status as the client API shows it."""

    address: str
    status: str
    reason: str
    at: int


@dataclass(frozen=True, slots=True)
class StatusUpdate:
    """Move recipients of envelope `rid` to `status` (all of them if `addresses` is None)."""

    rid: int
    status: str
    reason: str
    addresses: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class Queued:
    """One queue entry with what a sender needs of its envelope."""

    rid: int
    hop: str
    header: bytes
    signature: bytes
    payload: bytes  # empty where the query does not load payloads
    trace: tuple[str, ...]
    kind: str
    origin: str
    id: bytes
    expires: int
    enqueued: int
    attempts: int
    residency: str
    policy_hash: str = ""
    dest: str = ""  # the envelope's destination node (its header's `dest`)

    @property
    def wire_size(self) -> int:
        """Bytes this entry adds to a batch body, roughly."""
        return len(self.header) + len(self.signature) + len(self.payload) + 64 * len(self.trace)


@dataclass(frozen=True, slots=True)
class QueueRef:
    """A queue row found by envelope id (an id may be queued more than once)."""

    id: bytes
    rid: int
    hop: str
    held: bool


@dataclass(frozen=True, slots=True)
class QueueCount:
    """Queued envelopes of one next hop."""

    hop: str
    queued: int
    held: int
    oldest: int | None  # `enqueued` of the oldest, None when nothing is queued


@dataclass(frozen=True, slots=True)
class QueueListing:
    """One queue entry as `relay queue` lists it (no payload, no header)."""

    rid: int
    id: bytes
    origin: str
    kind: str
    sender: str
    dest: str
    hop: str
    enqueued: int
    attempts: int
    last_error: str
    held: bool
    size: int
    expires: int
    next_try: int  # its next attempt: the hop's backoff or its own deferral; 0 if neither


@dataclass(frozen=True, slots=True)
class AgeBucket:
    """Queued envelopes of one hop in one age bucket (`bucket` indexes the bounds)."""

    hop: str
    bucket: int
    count: int
    held: int


# Outcomes of one envelope's part in a delivery attempt (the `attempts` table):
# the peer's signed answer for it, or what became of the whole batch.
ATTEMPT_OUTCOMES = frozenset(
    {"accepted", "duplicate", "rejected", "deferred", "retry", "unreachable", "split"}
)
# Outcomes after which the envelope stays queued for another attempt.
ATTEMPT_AGAIN = frozenset({"deferred", "retry", "unreachable", "split"})
# Attempts kept per envelope: the latest ones (older rows go as new ones come).
MAX_ATTEMPTS_KEPT = 20


@dataclass(frozen=True, slots=True)
class Attempt:
    """One envelope's part in one delivery attempt to the next hop `hop`.

    `code` is the peer's refusal code (rejected, or an HTTP refusal's code);
    `error` what went wrong for retry, unreachable, deferred and split;
    `batch_size` the envelopes the batch carried. Times are unix ms.
    """

    rid: int
    hop: str
    started: int
    ended: int
    outcome: str
    code: str
    error: str
    batch_size: int


@dataclass(frozen=True, slots=True)
class PeerState:
    """A next hop's delivery and backoff state."""

    failures: int = 0
    next_try: int = 0
    last_error: str = ""
    last_ok: int = 0
    delivered: int = 0


@dataclass(frozen=True, slots=True)
class PendingReceipt:
    """An outcome to report to an envelope's origin in a later receipt."""

    origin: str
    status: str
    reason: str
    residency: str
    id: bytes
    recipients: tuple[str, ...]
    seq: int = 0  # assigned by the storage; 0 on a record not yet stored


@dataclass(frozen=True, slots=True)
class DecisionRecord:
    """One policy decision (DESIGN §7 "audit"): what was decided where, and why."""

    at: int
    point: str
    envelope: bytes | None
    peer: str
    outcome: str
    rule: str
    reason: str
    policy_hash: str


@dataclass(frozen=True, slots=True)
class AllowRecord:
    """An allow decision as `relay decisions` shows it, read from the envelope that kept it."""

    at: int
    point: str
    envelope: bytes
    peer: str
    rule: str
    residency: str
    policy_hash: str


@dataclass(frozen=True, slots=True)
class SentEnvelope:
    """What a receipt's entry is checked against: an envelope this node originated."""

    rid: int
    id: bytes
    dest: str
    kind: str
    hop: str | None  # the node it was handed to, None if it went straight to `dest`


@dataclass(frozen=True, slots=True)
class CertificateRecord:
    """A node certificate another node carried here, kept across restarts."""

    fingerprint: str
    name: str
    not_after: int
    blob: bytes


@dataclass(frozen=True, slots=True)
class InboxItem:
    """An unacked inbox row with the envelope it holds."""

    seq: int
    id: bytes
    residency: str
    header: bytes
    payload: bytes | None  # None once retention deleted the content, or it was erased
    erased: int | None = None  # when the message was erased (the row is its tombstone)


@dataclass(frozen=True, slots=True)
class InboxPage:
    """One page of an inbox read: its items and whether unacked rows follow them."""

    items: list[InboxItem]
    more: bool


@dataclass(frozen=True, slots=True)
class WebhookFailure:
    """A mailbox webhook's retry state after a failed POST."""

    failures: int
    next_try: int
    error: str


# --- retention ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Cutoffs:
    """Times (unix ms) at or before which something is old enough to go."""

    now: int
    cmax: int  # content past content_max_days
    cmin: int  # content past content_min_days
    mmax: int  # metadata past metadata_max_days
    mmin: int  # metadata past metadata_min_days
    expired: int  # `expires` passed by the expiry margin


@dataclass(frozen=True, slots=True)
class Counts:
    """What one purge deleted (or, in a preview, would delete)."""

    contents: int = 0  # envelopes whose content reference went
    payloads: int = 0  # payload rows deleted
    payload_bytes: int = 0
    ended: int = 0  # queued envelopes ended as expired:retention
    envelopes: int = 0  # envelope rows (metadata) deleted
    inbox: int = 0
    recipients: int = 0
    decisions: int = 0

    def __add__(self, other: Counts) -> Counts:
        return Counts(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    def any(self) -> bool:
        """True if anything was (or would be) deleted."""
        return any(getattr(self, f.name) for f in fields(self))

    def as_dict(self) -> dict[str, int]:
        """The counts by name."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True, slots=True)
class ContentDue:
    """An envelope whose content a purge deletes now."""

    rid: int
    payload_sha: bytes
    queued: bool


@dataclass(frozen=True, slots=True)
class MetadataDue:
    """An envelope whose row (metadata) a purge deletes now."""

    rid: int
    payload_sha: bytes | None


@dataclass(frozen=True, slots=True)
class Deleted:
    """Rows deleted with a set of envelopes."""

    envelopes: int = 0
    inbox: int = 0
    recipients: int = 0


@dataclass(frozen=True, slots=True)
class Due:
    """One envelope a purge would touch."""

    origin: str
    id: bytes
    kind: str
    received: int
    expires: int
    why: str  # "content_max", "discarded" or "metadata_max"
    queued: bool = False


@dataclass(frozen=True, slots=True)
class Preview:
    """What a purge would delete at `cut.now`; `content`/`metadata` list at most `limit`."""

    cut: Cutoffs
    counts: Counts
    content: tuple[Due, ...]
    metadata: tuple[Due, ...]


@dataclass(frozen=True, slots=True)
class Lease:
    """A named lease (relay.node.leases): held by `holder` until `expires` (unix ms)."""

    name: str
    holder: str
    expires: int


# --- relay trace (relay.storage.trace_sql) ---------------------------------------


@dataclass(frozen=True, slots=True)
class TracedEnvelope:
    """An envelope row of a traced message (no header, signature or body)."""

    rid: int
    id: bytes
    origin: str
    kind: str
    sender: str
    dest: str
    created: int
    expires: int
    received: int
    size: int
    residency: str
    from_peer: str | None  # None: submitted here (or written here, for a receipt)
    rule_id: str
    has_content: bool  # False once retention (or erasure) removed the body


@dataclass(frozen=True, slots=True)
class TracedRecipient:
    """A recipient's status at the origin."""

    address: str
    rid: int
    mailbox: str
    status: str
    reason: str
    at: int


@dataclass(frozen=True, slots=True)
class TracedQueue:
    """A traced envelope still in the outbound queue."""

    rid: int
    hop: str
    enqueued: int
    attempts: int
    last_error: str
    held: bool


@dataclass(frozen=True, slots=True)
class TracedInbox:
    """A traced envelope in a local mailbox: when delivered, when read (acked)."""

    rid: int
    mailbox: str
    delivered: int
    acked: int | None


@dataclass(frozen=True, slots=True)
class TracedPendingReceipt:
    """A receipt this node owes the origin and has not written yet."""

    id: bytes
    origin: str
    status: str
    reason: str
    at: int


@dataclass(frozen=True, slots=True)
class TracedReceipt:
    """A stored receipt envelope that may name a traced envelope (its payload says)."""

    writer: str
    dest: str
    received: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class TracedStatement:
    """An audit `receipt` entry about a traced envelope (the signed word it stands
    on is a receipt, or a batch result stating the delivery: `via` result)."""

    at: int
    entry: bytes


@dataclass(frozen=True, slots=True)
class TraceRows:
    """Everything stored about one message id or envelope id (Reads.trace)."""

    envelopes: tuple[TracedEnvelope, ...] = ()
    recipients: tuple[TracedRecipient, ...] = ()
    queue: tuple[TracedQueue, ...] = ()
    inbox: tuple[TracedInbox, ...] = ()
    pending_receipts: tuple[TracedPendingReceipt, ...] = ()
    receipts: tuple[TracedReceipt, ...] = ()
    statements: tuple[TracedStatement, ...] = ()
    attempts: tuple[Attempt, ...] = ()  # in the order they were made
