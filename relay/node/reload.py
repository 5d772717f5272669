"""SIGHUP: read node.toml again into the running node (DESIGN §9, issue 6).

Invariants:
- A reload is all or nothing: a config with any problem is refused, every
  problem is logged as FILE:LINE: key: reason, and the running config stays.
- Listeners, connections and senders are left alone; peers, mailboxes,
  policy, retention, federation tuning, logging and the node's keys (signing,
  retired, revoked: `relay key rotate/revoke`) take effect at once.
- What only a restart can change (RESTART_KEYS: the node's name, listen
  address, database, body limit, TLS files; the metrics listener and mailbox
  labels; the idle timeout) keeps its old value, and the log says a restart
  is needed for it.
- When anything queued mail depends on changes (RECHECK_ON: the policy,
  peers and their keys, routes, authorities, the certificate store and
  revocation list, the node's own certificates and revoked keys), the queue
  is re-checked (relay.node.recheck): nothing queued goes where it may no
  longer go, and nothing stays signed with a key this node revoked.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from relay import logs
from relay.config.files import load_config
from relay.config.keys import load_private_key
from relay.config.model import Config
from relay.errors import ConfigErrors, RelayError
from relay.logs import event
from relay.node.recheck import recheck
from relay.node.state import NodeState
from relay.policy.trust import Trust

log = logging.getLogger("relay.reload")

# NodeConfig field -> the node.toml key an admin would look for
RESTART_KEYS = {
    "name": "node.name",
    "listen_host": "node.listen",
    "listen_port": "node.listen",
    "database": "node.database",
    "max_body_bytes": "node.max_body_bytes",
    "tls_cert": "node.tls_cert",  # the same files are re-read on SIGHUP (relay.node.app)
    "tls_key": "node.tls_key",
    "ca_file": "node.ca_file",
}

_running: set[asyncio.Task[ReloadResult]] = set()

# what a change re-checks the queue for -> how it is read from a Config
RECHECK_ON: dict[str, Callable[[Config], object]] = {
    "policy": lambda c: c.policy,
    "peers": lambda c: c.peers,  # jurisdictions, urls, keys and revoked keys
    "routes": lambda c: c.routes,
    "authorities": lambda c: c.authorities,
    "trust": lambda c: c.trust,  # where the certificate store and revocation list are
    "certificates": lambda c: c.node.certificates,
    "revoked_keys": lambda c: c.node.revoked_keys,
}


@dataclass(frozen=True, slots=True)
class ReloadResult:
    """What a reload did: applied or refused, and what still needs a restart."""

    applied: bool
    errors: tuple[str, ...] = ()
    restart_needed: tuple[str, ...] = ()
    policy_changed: bool = False
    peers_changed: bool = False
    recheck_for: tuple[str, ...] = ()  # what changed that the queue was re-checked for


def merge(old: Config, new: Config) -> tuple[Config, tuple[str, ...]]:
    """`new`, but with the values only a restart can change kept from `old`.

    Also returns the node.toml keys whose new value was not taken.
    """
    kept: dict[str, Any] = {}
    keys: list[str] = []
    for field, key in RESTART_KEYS.items():
        if getattr(new.node, field) != getattr(old.node, field):
            kept[field] = getattr(old.node, field)
            keys.append(key)
    merged = dataclasses.replace(new, node=dataclasses.replace(new.node, **kept))
    old_m, new_m = old.metrics, new.metrics
    if (new_m.listen_host, new_m.listen_port) != (old_m.listen_host, old_m.listen_port):
        metrics = dataclasses.replace(
            new_m, listen_host=old_m.listen_host, listen_port=old_m.listen_port
        )
        merged = dataclasses.replace(merged, metrics=metrics)
        keys.append("metrics.listen")
    if new_m.mailbox_labels != old_m.mailbox_labels:  # the registry's label names are fixed
        metrics = dataclasses.replace(merged.metrics, mailbox_labels=old_m.mailbox_labels)
        merged = dataclasses.replace(merged, metrics=metrics)
        keys.append("metrics.mailbox_labels")
    if new.storage != old.storage:  # the store was opened at start
        merged = dataclasses.replace(merged, storage_table=old.storage_table)
        keys.append("storage.url")
    if new.limits.idle_timeout_ms != old.limits.idle_timeout_ms:  # aiohttp's, set at start
        limits = dataclasses.replace(merged.limits, idle_timeout_ms=old.limits.idle_timeout_ms)
        merged = dataclasses.replace(merged, limits=limits)
        keys.append("limits.idle_timeout")
    return merged, tuple(dict.fromkeys(keys))


def recheck_reasons(old: Config, new: Config, *, store_changed: bool) -> tuple[str, ...]:
    """The RECHECK_ON names whose value differs, plus "certificate_store" if
    the store's files (certificates, revocation list) changed on disk."""
    changed = [name for name, read in RECHECK_ON.items() if read(old) != read(new)]
    if store_changed:
        changed.append("certificate_store")
    return tuple(changed)


async def reload_config(state: NodeState) -> ReloadResult:
    """Re-read the node's config file and apply it, or refuse it and keep the old one."""
    old = state.config
    try:
        new = load_config(old.path)
        merged, restart = merge(old, new)
        Trust(merged)  # every key decodes: swapping in cannot fail half-way
        key = load_private_key(merged.node.key_file)  # `relay key rotate` changes it
    except ConfigErrors as e:
        for problem in e.errors:
            event(log, "reload_problem", logging.ERROR, detail=problem.detail)
        event(
            log,
            "reload_refused",
            logging.ERROR,
            file=str(old.path),
            problems=len(e.errors),
            detail="node.toml has problems; the running config is kept",
        )
        return ReloadResult(False, tuple(p.detail for p in e.errors))
    except RelayError as e:
        event(log, "reload_refused", logging.ERROR, file=str(old.path), detail=e.detail)
        return ReloadResult(False, (e.detail,))
    previous_key = state.key_id
    store_before = state.trust.store_signature
    state.load(merged)
    state.use_key(key)
    if state.key_id != previous_key:
        event(log, "signing_key_changed", key=state.key_id, previous=previous_key)
    if merged.log != old.log:
        logs.setup(merged.log.format, merged.log.level)
    if restart:
        event(
            log,
            "reload_restart_needed",
            logging.WARNING,
            keys=",".join(restart),
            detail="changed in node.toml, but only a restart applies them; old values kept",
        )
    result = ReloadResult(
        True,
        restart_needed=restart,
        policy_changed=merged.policy != old.policy,
        peers_changed=merged.peers != old.peers,
        recheck_for=recheck_reasons(
            old, merged, store_changed=state.trust.store_signature != store_before
        ),
    )
    event(
        log,
        "reloaded",
        file=str(old.path),
        peers=len(merged.peers),
        mailboxes=len(merged.mailboxes),
        policy_hash=state.policy_hash,
        policy_changed=result.policy_changed,
        peers_changed=result.peers_changed,
        recheck_for=",".join(result.recheck_for),
    )
    if result.recheck_for and state.leading:  # once per node: the leader's job
        try:
            await recheck(state)
        except RelayError as e:
            event(log, "recheck_failed", logging.ERROR, detail=e.detail)
    return result


def on_sighup(reload: Callable[[], Coroutine[Any, Any, ReloadResult]]) -> None:
    """Signal handler: start `reload()` in the running loop (the task is kept until done)."""
    task = asyncio.get_running_loop().create_task(reload(), name="reload")
    _running.add(task)
    task.add_done_callback(_running.discard)
