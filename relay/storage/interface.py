"""The storage interface: everything above relay/storage/ talks to these protocols.

Invariants:
- Batch-first: methods take and return sequences and mappings of records
  (relay.storage.records), so a backend answers a batch in a few round trips
  whatever the batch size. Nothing here is a row, a cursor or SQL text.
- Writes happen only inside `Storage.write(job)`: `job` receives a `WriteTx`
  and runs in the next group-commit transaction, isolated from the other jobs
  of that transaction (a failing job rolls back only itself). `write`
  returns only after COMMIT returned; when the database refuses, every job
  of the transaction fails with StoreError and nothing of it is stored.
- Every database error reaches callers as StoreError (a RelayError), reads
  included. A storage failure (full, read-only, I/O) sets `trouble` until a
  transaction commits cleanly again.
- Reads (`Reads`) see the last committed state. A read-only open gives the
  same reads without a writer, safe beside a running node.
- A recipient's final status (records.FINAL_STATUSES) is never overwritten.
- Several processes (workers, relay.node.leases) may share one database when
  the backend allows it: leases say which of them does a piece of work, and
  `WriteTx.announce` reaches every one of them after the commit
  (docs/workers.md).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Protocol, TypeVar

from relay.errors import StoreError
from relay.protocol.bundle import ExportedEnvelope
from relay.protocol.envelope import Envelope
from relay.storage.audit import AuditEvent, AuditRow, StoredHead, WitnessedHead
from relay.storage.erasure import (
    EraseOrder,
    Erasure,
    ErasureTarget,
    StoredAnswer,
    StoredRequest,
)
from relay.storage.records import (
    AgeBucket,
    AllowRecord,
    Attempt,
    CertificateRecord,
    ContentDue,
    Counts,
    Cutoffs,
    DecisionRecord,
    Deleted,
    InboxItem,
    InboxPage,
    Lease,
    MetadataDue,
    NewEnvelope,
    PeerState,
    PendingReceipt,
    Preview,
    QueueCount,
    Queued,
    QueueListing,
    QueueRef,
    Recipient,
    RecipientStatus,
    SentEnvelope,
    StatusUpdate,
    TraceRows,
    WebhookFailure,
)

T = TypeVar("T")


class DatabaseLocked(StoreError):
    """Another process holds the storage (one writer per database)."""

    code = "locked"


class NotCreated(StoreError):
    """A read-only open found no database yet: the node creates it when it first runs."""

    code = "no_database"


class NoDatabase(StoreError):
    """The database is not there: its server cannot be reached or it does not exist."""

    code = "no_database"


class WriteTx(Protocol):
    """What a write job may do inside its transaction (reads here see its own writes)."""

    # --- envelopes and recipients ----------------------------------------------------

    async def existing_digests(
        self, keys: Sequence[tuple[str, bytes]]
    ) -> dict[tuple[str, bytes], bytes]:
        """Header digests already stored for these (origin, id) pairs."""
        ...

    async def insert_envelopes(self, items: Sequence[NewEnvelope], now: int) -> list[int]:
        """Store envelopes, their payloads (once), queue and inbox rows; their rids in order."""
        ...

    async def add_recipients(self, rows: Sequence[Recipient]) -> None:
        """Record the recipients of messages accepted from clients."""
        ...

    async def set_status(self, updates: Sequence[StatusUpdate], now: int) -> None:
        """Move recipients forward; a final status is never overwritten."""
        ...

    async def sent_envelopes(self, origin: str, ids: Sequence[bytes]) -> dict[bytes, SentEnvelope]:
        """The envelopes of `origin` among `ids`, by id (ids not stored are left out)."""
        ...

    # --- the outbound queue ----------------------------------------------------------

    async def dequeue(self, rids: Sequence[int]) -> None:
        """Take these envelopes out of the queue."""
        ...

    async def note_attempt(self, rids: Sequence[int], error: str) -> None:
        """Count one more failed attempt for each of `rids`, with its error."""
        ...

    async def defer(self, rids: Sequence[int], until: int, error: str) -> None:
        """Count one more failed attempt for each of `rids`, with its error, and keep
        them out of `queue_head` (given `now`) until `until` (unix ms)."""
        ...

    async def record_attempts(self, attempts: Sequence[Attempt]) -> None:
        """Record each envelope's part in a delivery attempt (one statement for the
        batch). An envelope whose outcome is in ATTEMPT_AGAIN then keeps only its
        latest MAX_ATTEMPTS_KEPT attempts."""
        ...

    async def clear_deferred(self, hops: Sequence[str]) -> None:
        """Make every entry queued for `hops` due now (an admin's `relay queue retry`)."""
        ...

    async def set_held(self, rids: Sequence[int], held: bool) -> None:
        """Hold (the sender skips them) or release queue entries."""
        ...

    async def queue_refs(self, ids: Sequence[bytes]) -> list[QueueRef]:
        """The queue rows of envelopes named by id, in rid order."""
        ...

    async def queued(self, rids: Sequence[int]) -> list[Queued]:
        """Queue entries of `rids` still queued (without payloads), in rid order."""
        ...

    async def queue_page(self, after: int, limit: int) -> list[Queued]:
        """Up to `limit` queue entries past rid `after` (without payloads), in rid order."""
        ...

    async def queued_past_lifetime(
        self, now: int, enqueued_before: int, limit: int
    ) -> list[Queued]:
        """Entries at hops backing off (next try after `now`) whose `expires` passed
        or that were enqueued at or before `enqueued_before`; in rid order."""
        ...

    async def queue_count(self, hop: str) -> QueueCount:
        """How many envelopes are queued (and held) for `hop`."""
        ...

    async def reroute(self, rids: Sequence[int], hop: str) -> None:
        """Queue these envelopes for `hop` instead (a route changed); the envelope's
        recorded hop follows, so receipts from `hop` count for it."""
        ...

    async def resign(self, envelopes: Sequence[tuple[int, Envelope]]) -> None:
        """Replace the header bytes and signature of stored envelopes (rid, envelope),
        re-signed under another key: the header digest follows. Each must keep the
        stored origin and id (RelayError otherwise), so dedupe and receipts still hold."""
        ...

    # --- peers -----------------------------------------------------------------------

    async def has_peer_state(self, peer: str) -> bool:
        """True if `peer` has a stored state."""
        ...

    async def save_peer_state(self, peer: str, state: PeerState) -> None:
        """Replace the state of `peer`."""
        ...

    async def clear_backoff(self, peers: Sequence[str]) -> None:
        """Let these peers be tried now (their failure counts stay)."""
        ...

    # --- receipts --------------------------------------------------------------------

    async def add_pending_receipts(self, receipts: Sequence[PendingReceipt], now: int) -> None:
        """Outcomes to report to origins in later receipts."""
        ...

    async def pending_receipts(self, limit: int) -> list[PendingReceipt]:
        """The oldest `limit` pending receipts, oldest first, with their `seq`."""
        ...

    async def delete_pending_receipts(self, seqs: Sequence[int]) -> None:
        """Forget pending receipts once they were written."""
        ...

    # --- federation requests ---------------------------------------------------------

    async def record_nonce(self, peer: str, nonce: str, now: int) -> bool:
        """Record a verified nonce; False if it was already there (a replay)."""
        ...

    async def stored_results(self, peer: str, batch: bytes) -> dict[bytes, str] | None:
        """The results recorded for `peer`'s batch, None if it was not seen."""
        ...

    async def unread_bytes(self, mailboxes: Sequence[str]) -> dict[str, int]:
        """Unacked payload bytes of each of `mailboxes`, 0 for one with nothing unread.

        Kept as a counter beside the inbox rows: the cost does not grow with the inbox.
        """
        ...

    async def record_batch(
        self, peer: str, batch: bytes, results: Mapping[bytes, str], now: int
    ) -> None:
        """Remember a batch's results so that a retry gets the same answer."""
        ...

    async def prune(self, nonce_before: int, batch_before: int, idem_before: int) -> None:
        """Forget nonces, batch results and idempotent answers older than these times."""
        ...

    # --- client requests -------------------------------------------------------------

    async def remember_answer(
        self, mailbox: str, key: str, answer: Mapping[str, object], now: int
    ) -> bool:
        """Store the first answer for (mailbox, key); False if one was already there."""
        ...

    async def idempotent_answer(self, mailbox: str, key: str) -> dict[str, object] | None:
        """The answer stored for (mailbox, key), if any."""
        ...

    async def ack_inbox(self, mailbox: str, ids: Sequence[bytes], now: int) -> int:
        """Ack the unacked inbox rows of `mailbox` holding these envelope ids; how many."""
        ...

    async def ack_inbox_seqs(self, seqs: Sequence[int], now: int) -> None:
        """Ack inbox rows by their sequence number (already acked rows stay as they are)."""
        ...

    async def webhook_advance(self, mailbox: str, seq: int, delivered: int) -> None:
        """Move `mailbox`'s webhook cursor to `seq` and clear its retry state."""
        ...

    async def webhook_failure(self, mailbox: str, failure: WebhookFailure) -> None:
        """Record a failed webhook POST and when to try again."""
        ...

    # --- decisions and certificates --------------------------------------------------

    async def record_decisions(self, decisions: Sequence[DecisionRecord]) -> None:
        """Append policy decisions to the decision log."""
        ...

    async def save_certificates(self, certs: Sequence[CertificateRecord], now: int) -> None:
        """Keep learned certificates (first copy wins); drop those expired by `now`."""
        ...

    # --- retention -------------------------------------------------------------------

    async def content_due(self, cut: Cutoffs, limit: int) -> tuple[list[ContentDue], bool]:
        """Envelopes whose content is due (at most `limit` per reason), and whether
        more may be due than were returned."""
        ...

    async def clear_content(self, rids: Sequence[int]) -> None:
        """Drop the content reference of `rids` (and their discard mark)."""
        ...

    async def mark_discard(self, rids: Sequence[int]) -> None:
        """Mark content a deletion path wants gone once its minimum retention passed."""
        ...

    async def content_received_before(self, rids: Sequence[int], cut: int) -> dict[int, bytes]:
        """Payload digests of those `rids` that still have content received at or before `cut`."""
        ...

    async def metadata_due(self, cut: Cutoffs, limit: int) -> list[MetadataDue]:
        """Up to `limit` envelopes whose rows are due, oldest first."""
        ...

    async def delete_envelopes(self, rids: Sequence[int]) -> Deleted:
        """Delete envelopes with their inbox, recipients and attempts rows; the counts
        (attempts not counted)."""
        ...

    async def delete_decisions_due(self, cut: Cutoffs, limit: int) -> int:
        """Delete up to `limit` of the oldest due decisions; how many."""
        ...

    async def drop_unreferenced_payloads(self, shas: Sequence[bytes]) -> tuple[int, int]:
        """Delete the payloads among `shas` that no envelope references; (rows, bytes)."""
        ...

    async def record_purge(self, now: int, source: str, counts: Counts) -> None:
        """Write the record of one deletion."""
        ...

    # --- the audit log (relay.storage.audit, docs/audit.md) --------------------------

    async def append_audit(self, events: Sequence[AuditEvent]) -> None:
        """Append entries for `events` (the storage itself appends those of envelopes
        stored, decisions and purges; callers add forwards, receipts and config)."""
        ...

    async def save_tree_head(self, head: StoredHead) -> None:
        """Keep a signed tree head; a later one of the same size replaces it."""
        ...

    async def save_witnessed(self, heads: Sequence[WitnessedHead]) -> None:
        """Keep tree heads peers sent (one already kept stays as it was)."""
        ...

    async def prune_witnessed(self, before: int, limit: int) -> int:
        """Delete at most `limit` heads seen before `before`, keeping each peer's last
        and every head that is evidence (relay.storage.audit); how many went."""
        ...

    # --- erasure (relay.storage.erasure) ---------------------------------------------

    async def erasable(self, origin: str, ids: Sequence[bytes]) -> list[ErasureTarget]:
        """The stored messages of `origin` that `ids` name, as message ids (every
        envelope of the message, through its recipients) or envelope ids; by rid."""
        ...

    async def erasable_by_sender(
        self, origin: str, sender: str, since: int, until: int, limit: int
    ) -> list[ErasureTarget]:
        """Up to `limit` messages of `origin` from address `sender` created in
        [`since`, `until`), by rid."""
        ...

    async def erase(
        self, targets: Sequence[ErasureTarget], order: EraseOrder, now: int
    ) -> list[Erasure]:
        """Erase these copies (relay.storage.erasure); one record per target, in order."""
        ...

    async def settle_erasures(self, now: int, limit: int) -> list[Erasure]:
        """Held erasures whose content retention has since cleared, now `erased` at `now`."""
        ...

    async def erasure_records(
        self, keys: Sequence[tuple[str, bytes]]
    ) -> dict[tuple[str, bytes], Erasure]:
        """The erasure records of these (origin, id) pairs, where there are any."""
        ...

    async def erasure_requests(self, ids: Sequence[bytes]) -> dict[bytes, StoredRequest]:
        """The erasure envelopes stored here among `ids`, by id."""
        ...

    async def erasure_answers(self, requests: Sequence[bytes]) -> dict[bytes, list[StoredAnswer]]:
        """The answers kept for each of `requests` (those with none are left out)."""
        ...

    async def save_erasure_answer(self, answer: StoredAnswer) -> bool:
        """Keep `answer` unless the writer's kept one is as new; True if it was kept."""
        ...

    async def envelope_copies(self, ident: bytes) -> list[ErasureTarget]:
        """The stored envelopes of kind message with envelope id `ident`, whatever their
        origin, by rid."""
        ...

    async def link_requests(self, links: Sequence[tuple[str, bytes, bytes]]) -> None:
        """Record, per (origin, id, request), the erasure envelope sent for that erasure."""
        ...

    # --- workers: leases and announcements (relay.node.leases) -----------------------

    async def take_leases(
        self, holder: str, names: Sequence[str], now: int, until: int
    ) -> list[str]:
        """Hold each of `names` for `holder` until `until` where it is free, expired
        (`expires <= now`) or already `holder`'s (a renewal); the names now held, in
        the order given. A lease another holder keeps past `now` is left alone."""
        ...

    async def release_leases(self, holder: str, names: Sequence[str]) -> None:
        """Free those of `names` that `holder` holds; other holders' are left alone."""
        ...

    async def drop_expired_leases(self, before: int) -> int:
        """Forget leases that expired before `before` (gone workers); how many."""
        ...

    def announce(self, topic: str, key: str) -> None:
        """Tell every process on this storage (`Storage.on_announce`) about (`topic`,
        `key`) once this transaction commits; nothing if this job rolls back."""
        ...


Job = Callable[[WriteTx], Awaitable[T]]


class Reads(Protocol):
    """Reads on the last committed state."""

    async def queue_head(
        self, hop: str, limit: int, after: int = 0, now: int | None = None
    ) -> list[Queued]:
        """The next `limit` entries (not held) for `hop` past rid `after`, with payloads;
        given `now` (unix ms), only those not deferred past it."""
        ...

    async def queue_hops(self) -> list[str]:
        """Every next hop with something queued."""
        ...

    async def queue_length(self) -> int:
        """Envelopes in the outbound queue."""
        ...

    async def queue_counts(self) -> list[QueueCount]:
        """Queued and held envelopes per next hop, by hop."""
        ...

    async def queue_listing(self, hop: str | None, limit: int) -> list[QueueListing]:
        """Queue entries (of `hop`, or all), in rid order; a negative limit means no limit."""
        ...

    async def queue_ages(self, now: int, bounds: Sequence[int]) -> list[AgeBucket]:
        """Queued envelopes per hop and age bucket (`bounds` are upper bounds in ms)."""
        ...

    async def peer_state(self, peer: str) -> PeerState:
        """The state of `peer` (a fresh one if it has none)."""
        ...

    async def peer_states(self) -> dict[str, PeerState]:
        """Every stored peer state, by peer."""
        ...

    async def nonce_seen(self, peer: str, nonce: str) -> bool:
        """True if `peer` already used `nonce`."""
        ...

    async def stored_results(self, peer: str, batch: bytes) -> dict[bytes, str] | None:
        """The results recorded for `peer`'s batch, None if it was not seen."""
        ...

    async def unread_bytes(self, mailboxes: Sequence[str]) -> dict[str, int]:
        """Unacked payload bytes of each of `mailboxes`, 0 for one with nothing unread.

        Kept as a counter beside the inbox rows: the cost does not grow with the inbox.
        """
        ...

    async def idempotent_answer(self, mailbox: str, key: str) -> dict[str, object] | None:
        """The idempotent answer stored for (mailbox, key), if any."""
        ...

    async def key_used(self, mailbox: str, prefix: str) -> bool:
        """True if a stored idempotency key of `mailbox` is `prefix` + newline + more."""
        ...

    async def recipient_statuses(self, msg: bytes, mailbox: str) -> list[RecipientStatus]:
        """The recipients of a message `mailbox` sent, by address."""
        ...

    async def inbox(self, mailbox: str, after: int, limit: int) -> list[InboxItem]:
        """Unacked inbox rows of `mailbox` past seq `after`, oldest first."""
        ...

    async def inbox_page(self, mailbox: str, after: int, limit: int, max_bytes: int) -> InboxPage:
        """Like `inbox`, but the page stops before its payload bytes would pass `max_bytes`.

        The first row is always in the page, however large, so every message stays
        readable; `more` says unacked rows follow the page. Only the payloads of the
        rows returned are read.
        """
        ...

    async def unacked_counts(self) -> dict[str, int]:
        """Unacked inbox rows per mailbox."""
        ...

    async def unacked_count(self, mailbox: str) -> int:
        """Unacked inbox rows of `mailbox` (0 for one with none)."""
        ...

    async def sent_count(self, mailbox: str) -> int:
        """Stored messages sent by `mailbox` (their statuses and erasure answer to it)."""
        ...

    async def answer_count(self, mailbox: str) -> int:
        """Stored idempotency answers of `mailbox`."""
        ...

    async def webhook_cursor(self, mailbox: str) -> int:
        """The last inbox seq `mailbox`'s webhook handled, 0 if none."""
        ...

    async def certificates(self, now: int) -> list[bytes]:
        """Every kept certificate still valid at `now`, oldest first."""
        ...

    async def decisions(
        self, envelope: bytes | None, outcome: str | None, limit: int
    ) -> list[DecisionRecord]:
        """The latest `limit` decision rows (of `envelope`, with `outcome`), newest first."""
        ...

    async def allows(self, envelope: bytes | None, limit: int) -> list[AllowRecord]:
        """The latest `limit` allows kept by stored envelopes, newest first."""
        ...

    async def trace(self, ident: bytes, receipt_limit: int) -> TraceRows:
        """What is stored about message or envelope `ident` (relay.storage.trace_sql),
        with up to `receipt_limit` receipts stored since its envelopes arrived."""
        ...

    async def erasure_records(
        self, keys: Sequence[tuple[str, bytes]]
    ) -> dict[tuple[str, bytes], Erasure]:
        """The erasure records of these (origin, id) pairs, where there are any."""
        ...

    async def erasure_requests(self, ids: Sequence[bytes]) -> dict[bytes, StoredRequest]:
        """The erasure envelopes stored here among `ids`, by id."""
        ...

    async def erasure_answers(self, requests: Sequence[bytes]) -> dict[bytes, list[StoredAnswer]]:
        """The answers kept for each of `requests` (those with none are left out)."""
        ...

    async def message_envelopes(self, origin: str, ident: bytes) -> list[ErasureTarget]:
        """The envelopes of message (or envelope) `ident` that `origin` sent, by rid, as
        WriteTx.erasable finds them for one id."""
        ...

    async def retention_preview(self, cut: Cutoffs, limit: int) -> Preview:
        """What a purge at `cut` would delete; lists at most `limit` envelopes each."""
        ...

    async def row_counts(self) -> dict[str, int]:
        """Rows per stored table (tests compare them before and after a refusal)."""
        ...

    async def leases(self) -> list[Lease]:
        """Every lease row, expired ones included, by name."""
        ...

    async def audit_size(self) -> int:
        """Entries in the audit log."""
        ...

    async def audit_entries(self, first: int, end: int) -> list[AuditRow]:
        """Audit entries with `first` <= seq < `end`, in seq order."""
        ...

    async def audit_leaves(self, first: int, end: int) -> list[bytes]:
        """Leaf hashes of audit entries `first` <= seq < `end`, in seq order."""
        ...

    async def audit_span(self, since: int, until: int) -> tuple[int, int]:
        """(first, end): the seqs of entries written `since` <= at <= `until`; (0, 0) if none."""
        ...

    async def audit_last(self, kind: str, before: int) -> AuditRow | None:
        """The last audit entry of `kind` with seq < `before`, if any."""
        ...

    async def audit_seqs(self, envelope: bytes) -> list[int]:
        """The seqs of audit entries about `envelope`, in order."""
        ...

    async def tree_heads(self) -> list[StoredHead]:
        """Every kept signed tree head, by size."""
        ...

    async def latest_tree_head(self, below: int | None = None) -> StoredHead | None:
        """The kept signed tree head of the largest size (below `below`, if given), if any."""
        ...

    async def witnessed_heads(
        self, peer: str | None, size: int | None = None
    ) -> list[WitnessedHead]:
        """Tree heads peers sent (of `peer`, or all; of `size` entries, or any), by
        peer, size and time."""
        ...

    async def last_witnessed(self, peer: str) -> WitnessedHead | None:
        """The tree head of the largest size `peer` sent (the latest of that size)."""
        ...

    async def audit_envelopes(self, ids: Sequence[bytes]) -> list[ExportedEnvelope]:
        """Stored envelopes among `ids`: headers, signatures and receipts' payloads."""
        ...

    async def ping(self) -> None:
        """StoreError unless the database answers."""
        ...

    async def size_bytes(self) -> int:
        """Bytes the database takes on disk (files, or tables with their indexes)."""
        ...


class Storage(Reads, Protocol):
    """A node's storage: group-commit writes, reads, hooks and health."""

    location: str  # where the database lives, for logs and the CLI (no password)
    commits: int  # transactions committed since the open
    max_backlog: int  # jobs that may wait before `write(admit=True)` answers Busy; 0: none
    trouble: str | None  # why the last transaction failed for a storage reason
    before_commit: Callable[[], Awaitable[None]] | None  # fault injection, awaited before COMMIT

    async def write(self, job: Job[T], *, admit: bool = False) -> T:
        """Run `job` in the next group-commit transaction; return once committed."""
        ...

    def on_commit(self, hook: Callable[[], None]) -> None:
        """Run `hook` after every successful commit."""
        ...

    def on_announce(self, hook: Callable[[Sequence[tuple[str, str]]], None]) -> None:
        """Run `hook` with the (topic, key) pairs announced by each commit, in order,
        once each: this process's own right after its commit, other processes'
        (workers on the same database) as they arrive. May be called often."""
        ...

    def check_backlog(self) -> None:
        """Busy (503) while `max_backlog` or more jobs wait for the writer."""
        ...

    async def scrub(self) -> str:
        """After an erasure, push deleted content out of the backend's files where it
        can (relay.storage.erasure); a sentence saying what it did."""
        ...

    async def settings(self) -> dict[str, str]:
        """Durability settings worth logging at start (journal mode, sync level)."""
        ...

    async def close(self) -> None:
        """Finish every queued write, then release the database; a second close does nothing."""
        ...


class ReadOnlyStorage(Reads, Protocol):
    """Reads without a writer, safe beside a running node."""

    location: str
    schema_version: int

    async def close(self) -> None:
        """Release the database."""
        ...
