"""One relay node: config + store + routes + tasks in one aiohttp app.

`Node.start()` opens the store, binds the listener and starts one sender per
destination with queued work, the receipt flusher and the pruner.
`Node.stop()` stops accepting, lets in-flight requests and commits finish,
then closes the store. `run_node` adds signal handling for `relay run`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
import socket
import ssl
from collections.abc import Callable
from pathlib import Path

import aiohttp
from aiohttp import web

from relay.api import client as client_api
from relay.api.admin import AdminServer
from relay.config.files import load_config
from relay.config.keys import load_private_key
from relay.config.model import Config
from relay.config.tls import client_context, reload_server_files, server_context
from relay.errors import RelayError, Unavailable
from relay.federation import inbound, receipts
from relay.federation.outbound import Sender
from relay.logs import event
from relay.node import expiry, retention
from relay.node.audit import AuditLog
from relay.node.conns import Listener, descriptor_shortfall
from relay.node.gctune import settle_after_start
from relay.node.http import answer_errors
from relay.node.leases import Coordinator
from relay.node.metrics import serve as serve_metrics
from relay.node.opening import open_node_storage
from relay.node.recheck import recheck
from relay.node.reload import ReloadResult, on_sighup, reload_config
from relay.node.state import CONTACT, NodeState, wall_clock_ms
from relay.node.webhooks import Webhooks
from relay.policy.certfiles import watch_store
from relay.policy.keyring import published_keys
from relay.storage.interface import WriteTx

log = logging.getLogger("relay.node")

NONCE_KEEP_MS = 3_600_000  # well past the ±300 s window
BATCH_KEEP_MS = 7 * 24 * 3_600_000  # longer than any sender keeps retrying one batch
IDEMPOTENCY_KEEP_MS = 24 * 3_600_000
CONTACT_TELL_S = 5.0  # how often one peer's contact is passed on to the other workers


def node_document(state: NodeState) -> dict[str, object]:
    cfg = state.config
    return {
        "name": state.name,
        "jurisdiction": cfg.node.jurisdiction,
        "url": cfg.node.public_url,
        "keys": published_keys(cfg.node, state.key_string, state.now_ms()),
        "max_body_bytes": cfg.node.max_body_bytes,
        "mode": state.policy.mode,
        "certificates": state.trust.own_certificate_lines,
        "seal_keys": state.sealer.published(),
    }


async def well_known(request: web.Request) -> web.Response:
    return web.json_response(node_document(request.app[NodeState.KEY]))


async def _prune(tx: WriteTx, *, nonce_before: int, batch_before: int, idem_before: int) -> None:
    await tx.prune(nonce_before, batch_before, idem_before)


WORKER_HEADER = "Relay-Worker"


async def _name_worker(request: web.Request, response: web.StreamResponse) -> None:
    worker = request.app[NodeState.KEY].worker
    if worker is not None:
        response.headers[WORKER_HEADER] = str(worker)


class Node:
    def __init__(
        self,
        config: Config,
        *,
        clock: Callable[[], int] = wall_clock_ms,
        worker: int | None = None,
        listen_socket: socket.socket | None = None,
    ) -> None:
        """One node process; under `relay run --workers N` one of N, numbered
        `worker`, accepting on the `listen_socket` its supervisor bound."""
        self.config = config
        self.clock = clock
        self.worker = worker
        self.listen_socket = listen_socket
        self.state: NodeState | None = None
        self.listener: Listener | None = None  # [node] listen, guarded by [limits]
        self.session: aiohttp.ClientSession | None = None
        self.senders: dict[str, Sender] = {}
        self.tasks: list[asyncio.Task[None]] = []  # this worker's own tasks
        self.jobs: list[asyncio.Task[None]] = []  # background jobs, while leading
        self.coordinator: Coordinator | None = None  # leases (relay.node.leases)
        self.audit: AuditLog | None = None  # tree heads, config entries (relay.node.audit)
        self._contact_told: dict[str, float] = {}  # peer -> when others were last told
        self._telling: set[asyncio.Task[None]] = set()
        self.port = 0
        self.metrics_listener: Listener | None = None  # with [metrics] listen
        self.webhooks: Webhooks | None = None
        self.admin: AdminServer | None = None  # DIR/admin.sock, relay.api.admin
        self.server_ssl: ssl.SSLContext | None = None  # [node] tls_cert/tls_key, relay.config.tls

    async def start(self) -> None:
        cfg = self.config
        key = load_private_key(cfg.node.key_file)
        if cfg.node.tls_cert is not None and cfg.node.tls_key is not None:
            self.server_ssl = server_context(cfg.node.tls_cert, cfg.node.tls_key)
        client_ssl = client_context(cfg.node.ca_file)  # both before anything is opened
        store = await open_node_storage(cfg)
        fault_spec = os.environ.get("RELAY_FAULT", "")  # crash tests only (relay.node.fault)
        state = NodeState(
            cfg, key, store, clock=self.clock, fault_spec=fault_spec, worker=self.worker
        )
        self.state = state
        self.audit = AuditLog(state)
        state.wake_hop = self._wake
        state.tell_contact = self._tell_contact
        state.leading = False  # until the leader lease is taken
        state.trust.learn(await store.certificates(state.now_ms()), saved=True)
        if self.worker in (None, 0):  # one config entry per start, before any request
            await self._log_config("start")
        await self.audit.prime()  # the last stored head: peers get it until the next
        self.tasks.append(asyncio.create_task(self.audit.warm(), name="tree-head-warm"))
        if self.worker is not None:
            self.tasks.append(asyncio.create_task(self.audit.follow(), name="tree-head-follow"))
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit_per_host=4, keepalive_timeout=60, ssl=client_ssl),
            headers={"User-Agent": "relay/0.1"},
        )
        largest = max(cfg.node.max_body_bytes, cfg.limits.client_body_bytes)
        app = web.Application(middlewares=[answer_errors], client_max_size=largest + 65536)
        app[NodeState.KEY] = state
        app.on_response_prepare.append(_name_worker)
        app.router.add_get("/.well-known/relay", well_known)
        app.router.add_post(
            inbound.BATCH_PATH, inbound.handle_batch, expect_handler=inbound.expect_continue
        )
        client_api.add_routes(app)
        # A worker's [metrics] listen is its supervisor's (relay.node.supervise).
        self.metrics_listener = await serve_metrics(state, app, own_listener=self.worker is None)
        self.listener = Listener(app, lambda: state.config.limits, "node", shutdown_timeout=10)
        try:
            await self.listener.start(
                cfg.node.listen_host, cfg.node.listen_port, self.server_ssl, sock=self.listen_socket
            )
        except OSError as e:
            reason = os.strerror(e.errno) if e.errno else str(e)
            raise Unavailable(
                f"cannot listen on {cfg.node.listen_host}:{cfg.node.listen_port}"
                f" ([node] listen in {cfg.path}): {reason}"
            ) from None
        self.port = self.listener.port
        listeners = 1 if self.metrics_listener is None else 2
        if (soft := descriptor_shortfall(cfg.limits, listeners)) is not None:
            event(
                log,
                "open_files_low",
                logging.WARNING,
                limit=soft,
                max_connections=cfg.limits.max_connections,
                listeners=listeners,
                detail="raise the open-file limit (LimitNOFILE) or lower [limits] max_connections",
            )
        watcher = watch_store(lambda: state.trust, lambda: state.stopping)
        self.tasks.append(asyncio.create_task(watcher, name="certificate-store"))
        self.webhooks = Webhooks(state, self.session)
        # The first renewal takes the leader lease (re-check, jobs) and the
        # senders of the queues with work, if no other worker holds them.
        self.coordinator = Coordinator(store, self, state.now_ms)
        await self.coordinator.renew()
        self.coordinator.start()
        self.admin = AdminServer(state, reload=self.reload)
        await self.admin.start()
        event(
            log,
            "node_started",
            logging.INFO,
            node=state.name,
            pid=os.getpid(),
            jurisdiction=cfg.node.jurisdiction,
            listen=f"{cfg.node.listen_host}:{self.port}",
            key=state.key_id,
            peers=len(cfg.peers),
            mailboxes=len(cfg.mailboxes),
            mode=state.policy.mode,
            **await state.store.settings(),  # journal_mode, synchronous
            loop=type(asyncio.get_running_loop()).__module__.split(".")[0],
        )

    def _wake(self, hop: str) -> None:
        """`hop` has work: wake its sender here, or try to take its lease."""
        state = self.state
        if state is None or state.stopping:
            return
        sender = self.senders.get(hop)
        if sender is not None:
            sender.wake.set()
        elif self.coordinator is not None:
            self.coordinator.want(hop)

    def _tell_contact(self, peer: str) -> None:
        """`peer` contacted this worker while another one sends its queue: announce
        it (at most every CONTACT_TELL_S per peer) so that a backoff there ends."""
        state, coordinator = self.state, self.coordinator
        if state is None or state.stopping or coordinator is None:
            return
        if not coordinator.held_elsewhere(peer):
            return
        now = asyncio.get_running_loop().time()
        if now < self._contact_told.get(peer, 0.0) + CONTACT_TELL_S:
            return
        self._contact_told[peer] = now

        async def job(tx: WriteTx) -> None:
            tx.announce(CONTACT, peer)

        async def tell() -> None:
            try:
                await state.store.write(job)
            except RelayError as e:  # the sender's own backoff still ends its wait
                event(log, "contact_not_announced", logging.WARNING, peer=peer, detail=e.detail)

        task = asyncio.create_task(tell(), name=f"contact-{peer}")
        self._telling.add(task)
        task.add_done_callback(self._telling.discard)

    # --- the work leases cover (relay.node.leases.Work) ------------------------------

    async def start_sender(self, hop: str) -> None:
        state, coordinator = self.state, self.coordinator
        if state is None or state.stopping or self.session is None or coordinator is None:
            return
        if hop not in self.senders:
            sender = Sender(state, hop, self.session, lambda: coordinator.may_send(hop))
            self.senders[hop] = sender
            sender.start()

    async def stop_sender(self, hop: str) -> None:
        sender = self.senders.pop(hop, None)
        if sender is not None:
            await sender.stop()

    async def lead(self) -> None:
        """This worker took the leader lease: re-check the queue, start the jobs."""
        state = self.state
        if state is None or state.stopping:
            return
        state.leading = True
        try:  # queued envelopes under the policy now in force, before this worker sends
            await recheck(state)
        except RelayError as e:
            event(log, "recheck_failed", logging.ERROR, detail=e.detail)
        self.jobs = [
            asyncio.create_task(receipts.run_flusher(state), name="receipts"),
            asyncio.create_task(self._prune_loop(), name="prune"),
            asyncio.create_task(retention.run_purger(state), name="purge"),
            asyncio.create_task(expiry.run_sweeper(state), name="expiry"),
        ]
        if self.audit is not None:
            self.jobs.append(asyncio.create_task(self.audit.run(), name="tree-heads"))
        if self.webhooks is not None:
            await self.webhooks.sync()

    async def unlead(self) -> None:
        """The leader lease is gone (lost, or this worker stops): stop the jobs."""
        if self.state is not None:
            self.state.leading = False
        jobs, self.jobs = self.jobs, []
        for task in jobs:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.webhooks is not None:
            await self.webhooks.stop()

    async def _last_flush(self) -> None:
        """At stop, the leader writes the receipts still pending (before it lets go),
        and this process signs a last tree head."""
        state = self.state
        if state is not None and state.leading:
            with contextlib.suppress(RelayError):
                await receipts.flush(state)
        if state is not None and self.audit is not None:
            # The last head covers everything this node did; every worker signs one
            # (the same size twice is one row), as the leader may be gone already.
            try:
                await self.audit.sign()
            except RelayError as e:
                event(log, "tree_head_failed", logging.ERROR, detail=e.detail)

    async def _log_config(self, reason: str) -> None:
        if self.audit is None:
            return
        try:
            await self.audit.log_config(reason)
        except RelayError as e:
            event(log, "audit_config_failed", logging.ERROR, reason=reason, detail=e.detail)

    async def _prune_loop(self) -> None:
        assert self.state is not None
        state = self.state
        while not state.stopping:
            now = state.now_ms()
            try:
                await state.store.write(
                    functools.partial(
                        _prune,
                        nonce_before=now - NONCE_KEEP_MS,
                        batch_before=now - BATCH_KEEP_MS,
                        idem_before=now - IDEMPOTENCY_KEEP_MS,
                    )
                )
            except RelayError as e:
                event(log, "prune_failed", logging.ERROR, detail=e.detail)
            await asyncio.sleep(60)

    async def reload(self) -> ReloadResult:
        """SIGHUP: re-read node.toml into the running node (relay.node.reload)."""
        assert self.state is not None
        result = await reload_config(self.state)
        if result.applied and self.state.leading:
            await self._log_config("reload")
        if result.applied and self.webhooks is not None and self.state.leading:
            await self.webhooks.sync()
        node_cfg = self.state.config.node
        if result.applied and self.server_ssl and node_cfg.tls_cert and node_cfg.tls_key:
            try:  # a renewed certificate at the same paths needs no restart
                reload_server_files(self.server_ssl, node_cfg.tls_cert, node_cfg.tls_key)
            except RelayError as e:
                event(log, "tls_reload_failed", logging.ERROR, detail=e.detail)
        return result

    async def stop(self) -> None:
        """Stop accepting, finish in-flight requests and commits, close the store."""
        state = self.state
        if state is None:
            return
        state.stopping = True
        state.wake_all_inboxes()
        if self.listener is not None:
            await self.listener.stop()  # closes the listener, waits for in-flight handlers
        if self.admin is not None:
            await self.admin.stop()
        if self.metrics_listener is not None:
            await self.metrics_listener.stop()
        if self.coordinator is not None:
            # stops the senders and the jobs, then frees the leases for the other workers
            await self.coordinator.stop(before_release=self._last_flush)
        for sender in self.senders.values():  # none unless start() failed half-way
            await sender.stop()
        if self.webhooks is not None:
            await self.webhooks.stop()
        for task in [*self.tasks, *self.jobs]:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.session is not None:
            await self.session.close()
        await state.decoders.close()
        await state.store.close()
        event(log, "node_stopped", node=state.name)


async def run_node(
    directory: Path, *, worker: int | None = None, listen_socket: socket.socket | None = None
) -> int:
    """`relay run`: serve until SIGTERM/SIGINT, then drain and return 0.

    Under `relay run --workers N` this is one worker (relay.node.workers).
    """
    config = load_config(directory)
    node = Node(config, worker=worker, listen_socket=listen_socket)
    # The handlers go in before start(): the node answers /readyz from inside
    # start(), and a SIGTERM or SIGHUP sent as soon as it does must not meet the
    # default action (which kills the process). A SIGHUP during start-up is
    # applied once the node has started.
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    early_hup = asyncio.Event()
    loop.add_signal_handler(signal.SIGHUP, early_hup.set)
    try:
        await node.start()
    except BaseException:
        # Close what start() opened (the store's threads and lock, the session,
        # the listeners) so that the process can exit with the error.
        await node.stop()
        raise
    loop.add_signal_handler(signal.SIGHUP, on_sighup, node.reload)
    if early_hup.is_set():
        on_sighup(node.reload)
    settle_after_start()
    try:
        await stop.wait()
    finally:
        await node.stop()
    return 0
