"""Fault injection for crash tests, switched on by the RELAY_FAULT environment variable.

RELAY_FAULT is a comma-separated list of:
- `exit_after_commit`: die after committing a received batch and before
  answering it (checked in relay.federation.inbound).
- `commit_delay_ms=N`: hold every write transaction open for N ms after its
  jobs ran and before its COMMIT, and log `fault_commit_open` before the wait
  and `fault_commit_done` after the COMMIT, so that a test watching the log can
  SIGKILL the process between BEGIN and COMMIT and tell that it did.

Invariants: with RELAY_FAULT unset or empty nothing is installed and the node
behaves exactly as without this module; an unknown item is logged and ignored.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from relay.logs import event
from relay.storage.interface import Storage

log = logging.getLogger("relay.fault")


@dataclass(frozen=True, slots=True)
class Faults:
    """What RELAY_FAULT asked for."""

    exit_after_commit: bool = False
    commit_delay_ms: int = 0


def parse(spec: str) -> Faults:
    """Read a RELAY_FAULT value; unknown or malformed items are logged and skipped."""
    exit_after_commit = False
    delay = 0
    for raw in spec.split(","):
        item = raw.strip()
        if not item:
            continue
        name, _, value = item.partition("=")
        if name == "exit_after_commit" and not value:
            exit_after_commit = True
        elif name == "commit_delay_ms" and value.isdigit():
            delay = int(value)
        else:
            event(log, "fault_unknown", logging.WARNING, item=item)
    return Faults(exit_after_commit=exit_after_commit, commit_delay_ms=delay)


def install(store: Storage, spec: str) -> Faults:
    """Hook the faults named by `spec` (a RELAY_FAULT value) into `store`."""
    faults = parse(spec)
    if faults.commit_delay_ms > 0:
        delay = faults.commit_delay_ms / 1000

        async def hold_open() -> None:
            event(log, "fault_commit_open", logging.WARNING, commit=store.commits + 1)
            await asyncio.sleep(delay)

        def done() -> None:
            event(log, "fault_commit_done", logging.WARNING, commit=store.commits)

        store.before_commit = hold_open
        store.on_commit(done)
    return faults
