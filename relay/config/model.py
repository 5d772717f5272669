"""The validated node configuration: frozen dataclasses, no behaviour (DESIGN §9).

relay.config.parse builds a Config from node.toml text; nothing else makes one
outside tests. Paths in it are absolute.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from relay.policy.residency import Policy

CONFIG_NAME = "node.toml"
DAY_MS = 86_400_000


@dataclass(frozen=True, slots=True)
class RetiredKey:
    """One `[node] retired_keys` entry: a former signing key, verifiable until `valid_until`."""

    key: str  # ed25519:... public key string; the private key is no longer needed
    valid_until_ms: int


@dataclass(frozen=True, slots=True)
class RetiredSealKey:
    """One `[node] retired_seal_key_files` entry: a former seal key's private key file,
    which opens mail sealed to it until `valid_until` (None: until it is revoked)."""

    file: Path
    valid_until_ms: int | None = None


@dataclass(frozen=True, slots=True)
class NodeConfig:
    """The `[node]` table."""

    name: str
    jurisdiction: str
    listen_host: str
    listen_port: int
    public_url: str
    key_file: Path
    database: Path
    max_body_bytes: int = 16 * 1024 * 1024
    queue_lifetime_ms: int = 5 * DAY_MS
    certificates: tuple[Path, ...] = ()
    admin_token_sha256: str | None = None
    retired_keys: tuple[RetiredKey, ...] = ()  # relay.policy.keyring: published, never signing
    revoked_keys: tuple[str, ...] = ()  # never used, never published
    tls_cert: Path | None = None  # with tls_key: the listener serves HTTPS (relay.config.tls)
    tls_key: Path | None = None
    ca_file: Path | None = None  # outbound HTTPS trusts only these CAs; None: the system's
    # Sealed payloads (docs/sealing.md): the current seal key, published and
    # pinned by peers; retired ones still open mail sealed to them until their
    # valid_until; revoked seal keys (key strings) open nothing.
    seal_key_file: Path | None = None
    retired_seal_keys: tuple[RetiredSealKey, ...] = ()
    revoked_seal_keys: tuple[str, ...] = ()

    @property
    def listen(self) -> str:
        """`host:port`, with brackets around an IPv6 host."""
        host = f"[{self.listen_host}]" if ":" in self.listen_host else self.listen_host
        return f"{host}:{self.listen_port}"


@dataclass(frozen=True, slots=True)
class FederationConfig:
    """The `[federation]` table: batching, backoff and timeouts of outbound senders."""

    batch_envelopes: int = 500
    batch_bytes: int = 4 * 1024 * 1024
    retry_min_ms: int = 1000
    retry_max_ms: int = 3_600_000
    request_timeout_ms: int = 30_000
    connect_timeout_ms: int = 10_000
    receipt_window_ms: int = 200
    seal: str = "preferred"  # "required" | "preferred" | "off" (docs/sealing.md)
    # ask destinations to state delivery in their signed results (protocol.md §22)
    delivery_results: bool = True


@dataclass(frozen=True, slots=True)
class RetentionConfig:
    """The `[retention]` table, in days."""

    content_min_days: int = 0
    content_max_days: int = 365
    metadata_min_days: int = 0
    metadata_max_days: int = 1095
    # tree heads peers sent (audit_witnessed): each peer's last and every head that
    # is evidence of a fork stay past this
    witnessed_heads_days: int = 90


@dataclass(frozen=True, slots=True)
class Peer:
    """One `[[peers]]` entry: a pinned node, its trusted jurisdiction and keys."""

    name: str
    url: str | None
    jurisdiction: str
    keys: tuple[str, ...]
    revoked_keys: tuple[str, ...] = ()  # refused at once, with a reason that says so
    seal_keys: tuple[str, ...] = ()  # seal key strings; the first usable one seals mail to it


@dataclass(frozen=True, slots=True)
class Mailbox:
    """One `[[mailboxes]]` entry; the token itself is never stored."""

    name: str
    token_sha256: str
    webhook: str | None = None
    webhook_jurisdiction: str | None = None  # None: the node's own jurisdiction


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    """The `[limits]` table: rate limits and backpressure bounds; 0 means unlimited.

    `client_rate` is messages a second per mailbox (a batch submit counts its
    messages, any other request counts 1); `peer_rate` is batch requests a
    second per peer. `max_queued` bounds the envelopes queued for other nodes
    (a submit past it is answered 503); `max_pending_writes` bounds the jobs
    waiting for the store writer (requests past it are answered 503).

    `max_connections` caps the open connections of each listener (one more is
    closed at once). A request's headers must arrive within `header_timeout`
    of its first byte and its body within `body_timeout` of its headers; a
    connection with no request in progress is closed after `idle_timeout`.

    A `GET /v1/inbox` page stops before its payload bytes pass `inbox_page_bytes`
    (a single larger message still makes a page of one). A message that would take
    a mailbox's unread bytes (payloads and headers) past `mailbox_unread_bytes` is refused for now
    (503 `busy`), so its sender retries once the mailbox is read.
    `peer_bytes_per_s` is batch body bytes a second per peer (a second's worth
    of burst). `unauthenticated_body_bytes` bounds the body of an unknown sender
    that sent no `Relay-Certificate`, read to find its certificate.
    `client_body_bytes` bounds a client API JSON body (a submit).
    """

    client_rate: int = 50_000  # generous: the throughput goal is 10,000 msg/s per node
    client_burst: int = 100_000
    peer_rate: int = 2_000  # a sender keeps one batch in flight per destination
    peer_burst: int = 4_000
    max_queued: int = 1_000_000
    max_pending_writes: int = 1024
    max_connections: int = 10_000  # per listener; under systemd's LimitNOFILE=65536
    header_timeout_ms: int = 10_000
    body_timeout_ms: int = 120_000  # a 16 MiB body needs ~140 KiB/s
    idle_timeout_ms: int = 60_000
    inbox_page_bytes: int = 8 * 2**20
    mailbox_unread_bytes: int = 2**30
    peer_bytes_per_s: int = 64 * 2**20
    unauthenticated_body_bytes: int = 256 * 1024
    client_body_bytes: int = 4 * 2**20
    principal_write_share: int = 50  # percent of max_pending_writes one mailbox or peer may hold


@dataclass(frozen=True, slots=True)
class LogConfig:
    """The `[log]` table."""

    format: str = "text"
    level: str = "info"


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    """The `[metrics]` table: where `GET /metrics` is served and who may read it.

    With `listen` it is served on that listener only. Without it, the node's
    own listener serves it only to a scraper sending the token of
    `token_sha256`. Mailbox names appear as labels only with `mailbox_labels`.
    """

    listen_host: str | None = None
    listen_port: int = 0
    token_sha256: str | None = None
    mailbox_labels: bool = False


@dataclass(frozen=True, slots=True)
class Route:
    """One `[[routes]]` entry: envelopes for nodes matching `to` go to `via`."""

    to: str  # a node name or `*.suffix`
    via: str


@dataclass(frozen=True, slots=True)
class RelayConfig:
    """The `[relay]` table: for whom this node relays (names or `*.suffix`)."""

    for_origins: tuple[str, ...] = ()
    for_destinations: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Authority:
    """One `[[authorities]]` entry: a certificate authority and what it may attest."""

    name: str
    key: str
    jurisdictions: frozenset[str]


@dataclass(frozen=True, slots=True)
class TrustConfig:
    """The `[trust]` table: where certificates and the revocation list are kept.

    Both default to files next to node.toml (`certs/`, `revoked.txt`) that may
    be absent; an explicitly configured path must exist.
    """

    certificates_dir: Path | None = None
    revoked: Path | None = None


@dataclass(frozen=True, slots=True)
class StorageConfig:
    """The `[storage]` table: where the node keeps its state (relay.config.storage).

    `url` is as written (never with a password); `sqlite_path` is the absolute
    file of a `sqlite:` url, None for PostgreSQL.
    """

    url: str
    sqlite_path: Path | None = None
    password_file: Path | None = None  # PostgreSQL only; mode 0600 like the key

    @property
    def backend(self) -> str:
        """`sqlite` or `postgresql`."""
        return "sqlite" if self.sqlite_path is not None else "postgresql"

    @property
    def target(self) -> Path | str:
        """What relay.storage.backends opens: the SQLite file, or the PostgreSQL url."""
        return self.sqlite_path if self.sqlite_path is not None else self.url


@dataclass(frozen=True, slots=True)
class Config:
    """A whole, valid node.toml."""

    path: Path
    node: NodeConfig
    policy: Policy
    retention: RetentionConfig
    federation: FederationConfig
    peers: tuple[Peer, ...]
    mailboxes: tuple[Mailbox, ...]
    log: LogConfig
    metrics: MetricsConfig = MetricsConfig()
    routes: tuple[Route, ...] = ()
    relay: RelayConfig = RelayConfig()
    authorities: tuple[Authority, ...] = ()
    trust: TrustConfig = TrustConfig()
    limits: LimitsConfig = LimitsConfig()
    storage_table: StorageConfig | None = None  # None: no [storage] url, see `storage`

    @property
    def storage(self) -> StorageConfig:
        """`[storage]`, or by default the SQLite file `[node] database`."""
        if self.storage_table is not None:
            return self.storage_table
        return StorageConfig(f"sqlite:{self.node.database}", sqlite_path=self.node.database)

    def peer(self, name: str) -> Peer | None:
        """The pinned peer called `name`, if any."""
        return next((p for p in self.peers if p.name == name), None)

    def mailbox(self, name: str) -> Mailbox | None:
        """The local mailbox called `name`, if any."""
        return next((m for m in self.mailboxes if m.name == name), None)
