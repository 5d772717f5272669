"""`relay bench`: real nodes on loopback, timed from submit to commit at the destination.

Invariants:
- Every node is a `relay run` subprocess in its own directory, set up through the
  same CLI functions an admin runs (init, peer add both ways, mailbox add), all
  in one jurisdiction so the default residency allows the traffic. Only
  127.0.0.1, ports handed out by the kernel.
- Nothing here changes how a node runs: the durability is the production one
  (WAL, synchronous=FULL, 202 only after COMMIT).
- "Committed at the destination" is read from the destination's database over
  a read-only connection; latency is `inbox.delivered` (destination clock)
  minus the envelope's `created` (origin clock; same machine), both stored at
  the destination.
- Every process the bench starts (nodes, profilers) is stopped in a `finally`,
  on success, error and Ctrl-C alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import resource
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from relay.cli.bench.cluster import Cluster, start_nodes
from relay.cli.bench.load import Load, Reader
from relay.cli.bench.measure import (
    code_version,
    destination_rows,
    ed25519_rates,
    journal_mode,
    loadavg,
    machine,
    percentiles,
    sql_stats,
    synchronous_setting,
    verification_basis,
)
from relay.cli.bench.options import Options
from relay.cli.bench.profile import start_profilers, summarize_profile
from relay.config.model import LimitsConfig
from relay.errors import Unavailable

STALL_TIMEOUT_S = 120.0
POLL_EVERY_S = 0.02  # destination commits; bounds the observed latency
RSS_EVERY_S = 0.25


# --- the run ---------------------------------------------------------------------------


class Progress:
    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.tty = sys.stderr.isatty()

    def say(self, text: str, *, final: bool = True) -> None:
        if not self.enabled:
            return
        if self.tty:
            end = "\n" if final else ""
            print(f"\r\x1b[Kbench: {text}", end=end, file=sys.stderr, flush=True)
        elif final or int(time.monotonic()) % 5 == 0:
            print(f"bench: {text}", file=sys.stderr, flush=True)


async def watch(
    cluster: Cluster,
    target: int,
    progress: Progress,
    load: Load | None,
    phase: str,
    samples: list[tuple[float, int]] | None = None,
    submitting: asyncio.Task[Any] | None = None,
    reader: Reader | None = None,
    reader_task: asyncio.Task[Any] | None = None,
) -> float:
    """Sample RSS and the destinations' commits until `target` are committed; return when.

    With `reader` (--app), until the app at the destinations read and acked `target`.
    """
    last_change, last_count, last_print, last_rss = time.monotonic(), -1, 0.0, 0.0
    window: list[tuple[float, int]] = []
    while True:
        now = time.monotonic()
        count = cluster.committed()  # also stamps each row's first sighting (latency)
        if reader is not None:
            count = reader.read
        if now - last_rss >= RSS_EVERY_S:
            cluster.sample()
            last_rss = now
        if samples is not None:
            samples.append((now, count))
        if count != last_count:
            last_change, last_count = now, count
        for node in cluster.nodes:
            if node.proc is not None and node.proc.poll() is not None:
                raise Unavailable(f"{node.name} exited {node.proc.returncode}:\n{node.log_tail()}")
        if count >= target:
            return now
        for task in (submitting, reader_task):
            if task is not None and task.done() and not task.cancelled():
                exc = task.exception()
                while isinstance(exc, BaseExceptionGroup):
                    exc = exc.exceptions[0]
                if exc is not None:
                    raise exc
        if now - last_change > STALL_TIMEOUT_S:
            raise Unavailable(
                f"no commit at the destinations for {STALL_TIMEOUT_S:.0f}s ({count}/{target});"
                f" origin log:\n{cluster.a.log_tail()}"
            )
        window = [w for w in window if now - w[0] <= 1.0] + [(now, count)]
        if now - last_print >= 1.0:
            last_print = now
            rate = (window[-1][1] - window[0][1]) / max(window[-1][0] - window[0][0], 1e-9)
            acked = f"acked by A {load.acked:,}  " if load is not None else ""
            what = "committed at destination" if reader is None else "read and acked by the app"
            progress.say(
                f"{phase}: {acked}{what} {count:,}/{target:,}  ({rate:,.0f} msg/s)",
                final=False,
            )
        await asyncio.sleep(POLL_EVERY_S)


def unread_quota(opts: Options) -> int:
    """The destinations' `[limits] mailbox_unread_bytes` when no app reads their inboxes:
    twice what the whole run could leave unread (a header is under 1 KiB), never below
    the default."""
    n = opts.backlog if opts.backlog is not None else opts.n
    return max(LimitsConfig().mailbox_unread_bytes, 2 * n * (opts.size + 1024))


def drain_rates(samples: list[tuple[float, int]], total: int) -> dict[str, float]:
    """msgs/s over the first and last 10% of a drain, interpolated between samples."""

    def when(count: float) -> float:
        for (t0, c0), (t1, c1) in itertools.pairwise(samples):
            if c1 >= count:
                return t0 if c1 == c0 else t0 + (t1 - t0) * (count - c0) / (c1 - c0)
        return samples[-1][0]

    tenth = total / 10
    first = tenth / max(when(tenth) - when(1), 1e-9)
    last = tenth / max(when(total) - when(total - tenth), 1e-9)
    return {
        "first_10pct_msgs_per_s": round(first, 1),
        "last_10pct_msgs_per_s": round(last, 1),
        "last_over_first": round(last / first, 3) if first else 0.0,
    }


async def run(opts: Options, cluster: Cluster, progress: Progress) -> dict[str, Any]:
    """Run one benchmark on a set-up (not started) cluster; the caller closes it."""
    load_before = loadavg()
    ed = ed25519_rates()
    progress.say(
        f"ed25519 on one core: {ed['verify']:,.0f} verify/s, {ed['sign']:,.0f} sign/s"
        f" ({ed['seal']:,.0f} envelopes sealed/s); a 1 KiB payload sealed to the destination"
        f" {ed['payload_seal']:,.0f}/s, opened {ed['payload_open']:,.0f}/s"
    )
    timeout = aiohttp.ClientTimeout(total=600)
    connector = aiohttp.TCPConnector(limit=opts.clients)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        backlog = opts.backlog is not None
        n = opts.backlog if opts.backlog is not None else opts.n
        await start_nodes([cluster.a] if backlog else cluster.nodes, session)
        if opts.profile_dir is not None and not backlog:
            start_profilers(cluster, opts.profile_dir)
        load = Load(opts, cluster, session)
        for node in cluster.nodes:
            node.cpu_at_start = node.cpu_seconds()
            node.mark_server_cpu()
        own_cpu = resource.getrusage(resource.RUSAGE_SELF)
        extra: dict[str, Any] = {}
        t0 = time.monotonic()
        submitting = asyncio.create_task(
            load.open_loop(n, opts.rate) if opts.rate is not None else load.closed_loop(n)
        )
        submitted_at: list[float] = []
        submitting.add_done_callback(lambda _: submitted_at.append(time.monotonic()))
        if backlog:
            while not submitting.done():
                cluster.sample()
                progress.say(f"queueing at A with the destinations down: {load.acked:,}/{n:,}",
                             final=False)  # fmt: skip
                await asyncio.wait({submitting}, timeout=1.0)
            await submitting
            submit_s = submitted_at[0] - t0
            progress.say(f"queued {n:,} at A in {submit_s:.1f}s; starting the destinations")
            started = time.monotonic()
            await start_nodes(cluster.bs, session)
            if opts.profile_dir is not None:
                start_profilers(cluster, opts.profile_dir)
            samples: list[tuple[float, int]] = []
            end = await watch(cluster, n, progress, None, "draining", samples)
            first = next((t for t, c in samples if c > 0), started)
            t0 = first
            extra["backlog"] = {
                "queued": n,
                "queue_seconds": round(submit_s, 3),
                "queue_msgs_per_s": round(n / submit_s, 1),
                "wait_before_first_delivery_s": round(first - started, 3),
                "origin_retry_max": opts.retry_max or "default (1h)",
                **drain_rates(samples, n),
            }
        else:
            reader = Reader(cluster, session) if opts.app else None
            reading = asyncio.create_task(reader.run(n)) if reader is not None else None
            try:
                end = await watch(
                    cluster, n, progress, load, "running", None, submitting, reader, reading
                )
            except BaseException:
                for task in (submitting, reading):
                    if task is not None and not task.done():
                        task.cancel()
                raise
            # The target was reached: both tasks are finishing (the reader's task group
            # may still be exiting), so wait for them; cancelling here raced that exit.
            await submitting
            if reading is not None:
                await reading
            submit_s = submitted_at[0] - t0
        seconds = end - t0
        for node in cluster.nodes:
            node.sample_rss()
        own = resource.getrusage(resource.RUSAGE_SELF)
        done = "read and acked by the app" if opts.app else "committed"
        progress.say(f"{n:,} {done} at the destination in {seconds:.2f}s")

    rows = [r for b in cluster.bs for r in destination_rows(b, opts.rate is not None)]
    latency = percentiles([float(d - c) for _, d, c, _ in rows])
    observed = percentiles([seen - c for _, _, c, seen in rows])
    if opts.rate is not None:
        sched = [d - load.scheduled_ms[i] for i, d, _, _ in rows if i in load.scheduled_ms]
        extra["latency_from_schedule_ms"] = {k: round(v, 1) for k, v in percentiles(sched).items()}
    committed_rows = sum(b.db.inbox_count() for b in cluster.bs if b.db)
    skipped, basis = verification_basis(cluster)
    nodes: list[dict[str, Any]] = []
    for node in cluster.nodes:
        sync, sync_src = synchronous_setting(node)
        server_cpu = node.server_cpu_seconds()
        nodes.append(
            {
                "name": node.name,
                "role": node.role,
                "pid": node.proc.pid if node.proc else None,
                "peak_rss_mb": round(node.status_kb("VmHWM") / 1024, 1),
                "max_sampled_rss_mb": round(node.max_rss_kb / 1024, 1),
                "cpu_s": round(node.cpu_seconds() - node.cpu_at_start, 2),
                "cpu_us_per_msg": round((node.cpu_seconds() - node.cpu_at_start) * 1e6 / n),
                "journal_mode": journal_mode(node),
                "synchronous": sync,
                "synchronous_source": sync_src,
                "event_loop": node.event_loop(),
                "workers": node.workers,
                "storage": "postgresql" if node.storage_url else "sqlite",
                # this node's PostgreSQL backends (None: SQLite, or a server elsewhere)
                "server_cpu_s": None if server_cpu is None else round(server_cpu, 2),
                "server_cpu_us_per_msg": None
                if server_cpu is None
                else round(server_cpu * 1e6 / n),
            }
        )
    modes = {str(x["journal_mode"]) for x in nodes}
    syncs = {str(x["synchronous"]) for x in nodes}
    result: dict[str, Any] = {
        "mode": "backlog" if backlog else "open-loop" if opts.rate is not None else "closed-loop",
        "clock_stops": "app read and acked at the destinations"
        if opts.app
        else "committed at the destinations",
        "n": n,
        "committed": committed_rows,
        "size": opts.size,
        "clients": opts.clients,
        "client_batch": opts.client_batch,
        "endpoint": "/v1/messages" if opts.client_batch == 1 else "/v1/messages/batch",
        "rate": opts.rate,
        "peers": len(cluster.bs),
        "storage": "postgresql" if opts.storage else "sqlite",
        "workers": opts.workers,
        "seal": opts.seal,
        "seal_suite": opts.seal_suite if opts.seal != "off" else None,
        "dest_mailbox_unread_bytes": None if opts.app else unread_quota(opts),
        "seconds": round(seconds, 3),
        "msgs_per_s": round(n / seconds, 1) if seconds > 0 else 0.0,
        "submit_seconds": round(submit_s, 3),
        "latency_ms": latency,
        "latency_basis": "inbox.delivered at the destination minus envelope created at the"
        " origin, both read from the destination's database (delivered is stamped when the"
        " destination starts handling the batch, before its commit)",
        "latency_observed_ms": {k: round(v, 1) for k, v in observed.items()},
        "latency_observed_basis": "first poll of the destination's database (every"
        f" {POLL_EVERY_S * 1000:.0f} ms, read-only) that saw the row committed, minus envelope"
        " created: an upper bound on submit -> durable at the destination",
        **extra,
        "journal_mode": modes.pop() if len(modes) == 1 else "mixed",
        "synchronous": syncs.pop() if len(syncs) == 1 else "mixed",
        "verify_skipped": skipped,
        "verify_skipped_basis": basis,
        "ed25519_verify_per_s": round(ed["verify"]),
        "ed25519_sign_per_s": round(ed["sign"]),
        "seal_per_s": round(ed["seal"]),
        "payload_seal_per_s": round(ed["payload_seal"]),
        "payload_open_per_s": round(ed["payload_open"]),
        "payloads_sealed": opts.seal != "off",
        "ed25519_basis": "one core, operations per CPU second of this process's thread",
        "peak_rss_mb": max(float(x["peak_rss_mb"]) for x in nodes),
        "nodes": nodes,
        "bench_client_cpu_s": round(
            own.ru_utime + own.ru_stime - own_cpu.ru_utime - own_cpu.ru_stime, 2
        ),
        "machine": machine(),
        "code": code_version(),
        "loadavg_before": load_before,
        "loadavg_after": loadavg(),
    }
    return result


def bench(opts: Options) -> dict[str, Any]:
    """Set up a cluster in a temporary (or given) directory, run, always clean up."""
    progress = Progress(opts.progress)

    def interrupted(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # unwinds through the same cleanup as Ctrl-C

    previous = signal.signal(signal.SIGTERM, interrupted)
    with contextlib.ExitStack() as stack:
        stack.callback(signal.signal, signal.SIGTERM, previous)
        if opts.workdir is not None:
            opts.workdir.mkdir(parents=True, exist_ok=True)
            base = Path(tempfile.mkdtemp(prefix="bench-", dir=opts.workdir))
        else:
            base = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="relay-bench-")))
        cluster = Cluster(
            base, opts.peers, opts.storage, opts.workers, opts.sql_stats, opts.seal_suite
        )
        stack.callback(cluster.close)
        progress.say(f"setting up {len(cluster.nodes)} nodes in {base}")
        cluster.setup()
        federation = {"retry_max": opts.retry_max} if opts.retry_max is not None else {}
        if opts.seal != "preferred":
            federation["seal"] = opts.seal
        if federation:
            cluster.a.set_table("federation", federation, "--backlog's retry_max and --seal")
        if not opts.app:
            # Nobody reads the destinations' inboxes unless --app: a quota below the run
            # would defer the rest of it (a 1,000,000 backlog of 1 KiB is past the 1 GiB
            # default), and the bench would time retries, not delivery.
            quota = unread_quota(opts)
            for b in cluster.bs:
                b.set_table("limits", {"mailbox_unread_bytes": quota}, "the run fits the inbox")
        result = asyncio.run(run(opts, cluster, progress))
        cluster.close()  # the nodes write their statement figures as they close
        if opts.sql_stats:
            result["sql_stats"] = {
                node.name: sql_stats(node.sql_stats, result["n"])
                for node in cluster.nodes
                if node.sql_stats is not None
            }
        if opts.profile_dir is not None:
            result["profile"] = {
                node.name: summarize_profile(out)
                for node, _, out in cluster.profilers
                if out.exists()
            }
        return result
    raise AssertionError("unreachable")  # pragma: no cover
