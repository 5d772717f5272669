"""The state one running node shares between its routes and tasks.

Handlers and senders reach it through `app[NodeState.KEY]`. It owns no
sockets: `relay.node.app` wires it into an aiohttp app and runs it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import ClassVar

from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from relay.config.model import Config
from relay.logs import event
from relay.node import fault
from relay.node.backpressure import Backpressure
from relay.node.decoders import Decoders
from relay.node.metrics import Metrics
from relay.node.sealer import Sealer
from relay.policy.ratelimit import Limits
from relay.policy.residency import Policy, policy_hash
from relay.policy.trust import Trust
from relay.protocol.audit import SignedHead
from relay.protocol.envelope import Envelope
from relay.protocol.keystr import key_id, public_key_string
from relay.protocol.receipt import Receipt, decode_receipt
from relay.storage.audit import receipt_event
from relay.storage.interface import Storage, WriteTx
from relay.storage.records import StatusUpdate

log = logging.getLogger("relay.node")

# Announcement topics (WriteTx.announce): every worker on the storage hears them.
INBOX = "inbox"  # key: mailbox; mail landed in it (long-polls, webhooks wake)
HOP = "hop"  # key: next hop; its queue has work (its sender wakes)
RESIGNED = "resigned"  # key: next hop; envelopes queued for it were re-signed
CONTACT = "contact"  # key: peer; it made an authenticated request to some worker


async def _no_proof(head: SignedHead, from_size: int | None) -> str | None:
    """No audit log to prove from (a state outside a running node)."""
    return None


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


class NodeState:
    KEY: ClassVar[web.AppKey[NodeState]]

    def __init__(
        self,
        config: Config,
        key: Ed25519PrivateKey,
        store: Storage,
        *,
        clock: Callable[[], int] = wall_clock_ms,
        random: Callable[[int], bytes] = os.urandom,
        fault_spec: str = "",
        worker: int | None = None,
    ) -> None:
        self.store = store
        self.worker = worker  # index under `relay run --workers N`; None: the only process
        self.now_ms = clock
        self.random = random
        self.use_key(key)
        self.stopping = False
        # The latest signed tree head of the audit log (relay.node.audit); senders
        # carry it to peers.
        self.tree_head: SignedHead | None = None
        # The last Relay-Tree-Head value each peer sent, and the Relay-Tree-Proof
        # value checked with it (relay.federation.witness).
        self.witnessed: dict[str, tuple[str, str | None]] = {}
        # The Relay-Tree-Proof value for a head from the head of a given size (the
        # previous one when None), or None when there is none to send
        # (relay.node.audit sets it); and, per next hop, the size of the head
        # carried by the last batch it answered with a signed result.
        self.prove_head: Callable[[SignedHead, int | None], Awaitable[str | None]] = _no_proof
        self.heads_sent: dict[str, int] = {}
        # This worker holds the leader lease (relay.node.leases) and runs the
        # node's background jobs; a state outside a running node is its only worker.
        self.leading = True
        # Fault injection for crash tests (relay.node.fault; the RELAY_FAULT
        # value relay.node.app passes in): "exit_after_commit" makes the node
        # die after committing a received batch and before answering it;
        # "commit_delay_ms=N" holds each transaction open.
        self.fault = fault_spec
        self.faults = fault.install(store, fault_spec)
        self._nonces: set[tuple[str, str]] = set()
        self._inbox_events: dict[str, asyncio.Event] = {}
        self._backing_off: set[str] = set()  # hops whose sender waits out a backoff now
        self._contacted: set[str] = set()  # of those, the ones that have since contacted us
        self._resigned: set[str] = set()  # hops with envelopes re-signed since their last batch
        self.wake_hop: Callable[[str], None] = lambda hop: None
        # Passes a contact on to the other workers when the peer's sender may be
        # there (relay.node.app); a node state alone has no one to tell.
        self.tell_contact: Callable[[str], None] = lambda peer: None
        self.metrics = Metrics(mailbox_labels=config.metrics.mailbox_labels, worker=worker)
        self.backpressure = Backpressure(store)  # write slots, queue length ([limits])
        self.decoders = Decoders()  # processes for large client JSON bodies
        self.sealer = Sealer(random, clock)  # seal keys and data keys (relay.node.sealer)
        self.load(config)
        store.on_announce(self._announced)

    def use_key(self, key: Ed25519PrivateKey) -> None:
        """Sign with `key` from now on (start, and a reload after `relay key rotate`).

        Key, key string and key id change together, between two awaits, so
        nothing is ever signed with one key and labelled with another's id.
        """
        self.key = key
        self.key_string = public_key_string(key.public_key())
        self.key_id = key_id(self.key_string)

    def load(self, config: Config) -> None:
        """Take a (re)loaded config: peers, mailboxes, policy."""
        self.config = config
        self.name = config.node.name
        old: Trust | None = getattr(self, "trust", None)  # keep what peers taught us
        self.trust = Trust(config, clock=self.now_ms, learned=old.learned_blobs() if old else ())
        self.policy: Policy = config.policy
        self.policy_hash = policy_hash(config.policy)
        self.limits = Limits.renew(getattr(self, "limits", None), config.limits)
        self.store.max_backlog = config.limits.max_pending_writes
        self.sealer.load(config)

    # --- replay guard for requests still in flight ---------------------------

    def claim_nonce(self, peer: str, nonce: str) -> bool:
        key = (peer, nonce)
        if key in self._nonces:
            return False
        self._nonces.add(key)
        return True

    def release_nonce(self, peer: str, nonce: str) -> None:
        self._nonces.discard((peer, nonce))

    # --- wake-ups after commit ---------------------------------------------------

    def note_inbox(self, tx: WriteTx, mailboxes: Iterable[str]) -> None:
        """Wake the readers of `mailboxes`, on every worker, once `tx` commits."""
        for mailbox in mailboxes:
            tx.announce(INBOX, mailbox)

    def note_hop(self, tx: WriteTx, hop: str) -> None:
        """Wake the sender of `hop`, wherever it runs, once `tx` commits."""
        tx.announce(HOP, hop)

    def inbox_event(self, mailbox: str) -> asyncio.Event:
        ev = self._inbox_events.get(mailbox)
        if ev is None:
            ev = self._inbox_events[mailbox] = asyncio.Event()
        return ev

    def wake_all_inboxes(self) -> None:
        """End every long-poll now (shutdown)."""
        events, self._inbox_events = self._inbox_events, {}
        for ev in events.values():
            ev.set()

    def _announced(self, items: Sequence[tuple[str, str]]) -> None:
        for topic, key in items:
            if topic == INBOX:
                ev = self._inbox_events.pop(key, None)
                if ev is not None:
                    ev.set()
            elif topic == HOP:
                self.wake_hop(key)
            elif topic == RESIGNED:
                self._resigned.add(key)
            elif topic == CONTACT:
                self._heard_contact(key)

    def note_resigned(self, tx: WriteTx, hop: str) -> None:
        """Envelopes queued for `hop` got new header bytes (relay.node.recheck); the
        sender of `hop`, on whichever worker, hears it once `tx` commits."""
        tx.announce(RESIGNED, hop)

    def take_resigned(self, hop: str) -> bool:
        """True once after `note_resigned(hop)`: a batch id of `hop` names old bytes."""
        found = hop in self._resigned
        self._resigned.discard(hop)
        return found

    # --- backoff waived when a peer shows it is up -----------------------------------

    def waiting_out_backoff(self, hop: str) -> None:
        """The sender of `hop` starts (or goes on) waiting for its backoff to pass."""
        self._backing_off.add(hop)

    def backoff_over(self, hop: str) -> bool:
        """The sender of `hop` stops waiting; True if the peer contacted us meanwhile."""
        self._backing_off.discard(hop)
        contacted = hop in self._contacted
        self._contacted.discard(hop)
        return contacted

    def peer_contacted(self, peer: str) -> None:
        """`peer` made a request whose signature verified: it is up, so a backoff
        of its queue is cut short and its sender woken, on whichever worker.

        In memory and cheap: called for every authenticated request.
        """
        if peer in self._backing_off:
            self._heard_contact(peer)
        else:
            self.tell_contact(peer)

    def _heard_contact(self, peer: str) -> None:
        if peer in self._backing_off and peer not in self._contacted:
            self._contacted.add(peer)
            self.wake_hop(peer)

    # --- receipts arriving at the origin ------------------------------------------

    async def apply_receipt(
        self, tx: WriteTx, env: Envelope, now: int, receipt: Receipt | None = None
    ) -> None:
        """Record what a receipt says about envelopes this node originated.

        An entry counts only when the receipt's writer is that envelope's
        destination, or, for `rejected` and `expired`, the node this node
        handed it to (the relay on its path); `delivered` comes only from the
        destination. Other entries are ignored. One lookup of all the entries'
        envelopes, one batch of status updates, and one log line that counts
        the entries applied and ignored (by reason), however many there are.
        """
        if receipt is None:  # not decoded when it was judged
            receipt = decode_receipt(env.payload)
        writer = env.header.origin
        sent = await tx.sent_envelopes(self.name, [ident for ident, _ in receipt.entries])
        updates: list[StatusUpdate] = []
        applied: list[bytes] = []
        unknown = off_path = 0
        for ident, recipients in receipt.entries:
            found = sent.get(ident)
            if found is None or found.kind != "message":
                unknown += 1
            elif writer == found.dest or (receipt.status != "delivered" and found.hop == writer):
                updates.append(
                    StatusUpdate(found.rid, receipt.status, receipt.reason, tuple(recipients))
                )
                applied.append(ident)
            else:
                off_path += 1
        await tx.set_status(updates, now)
        await tx.append_audit(
            [
                receipt_event(
                    now,
                    ident,
                    env.header.id,
                    writer,
                    receipt.status,
                    receipt.reason,
                    receipt.jurisdiction,
                )
                for ident in applied
            ]
        )
        event(
            log,
            "receipt_applied",
            logging.WARNING if unknown or off_path else logging.INFO,
            peer=writer,
            envelope=env.header.id,
            status=receipt.status,
            reason=receipt.reason,
            entries=len(receipt.entries),
            applied=len(updates),
            ignored_unknown=unknown,
            ignored_off_path=off_path,
            mode=receipt.mode,
        )


NodeState.KEY = web.AppKey("relay_node", NodeState)
