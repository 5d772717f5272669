"""What one `relay bench` run does: the flags, as one frozen value."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Options:
    """What to run; mirrors the `relay bench` flags."""

    n: int = 20_000
    size: int = 1024
    clients: int = 20
    client_batch: int = 100
    rate: float | None = None  # open-loop offered load, messages/s
    peers: int = 1
    app: bool = False  # time until the app at each destination read and acked every message
    backlog: int | None = None  # queue this many with the destinations down, then drain
    profile_dir: Path | None = None  # py-spy A and the first destination into this directory
    retry_max: str | None = None  # backlog: cap A's backoff so the drain starts promptly
    workdir: Path | None = None  # keep the node directories here
    storage: str | None = None  # PostgreSQL URL: every node in its own schema there
    workers: int = 1  # `relay run --workers N` for every node (N > 1 needs `storage`)
    seal: str = "preferred"  # A's [federation] seal: "off" benches unsealed payloads
    sql_stats: bool = False  # each SQLite node times its writer's statements (RELAY_SQL_STATS)
    seal_suite: str = "mlkem768x25519"  # the destinations' seal key suite (relay seal rotate)
    progress: bool = True
