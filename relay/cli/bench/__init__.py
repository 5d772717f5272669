"""`relay bench`: time real nodes on this machine (see relay.cli.bench.run and docs/performance.md).

Progress goes to stderr while it runs; the result goes to stdout, as JSON with
`--json`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from relay.protocol.sealing import SUITES


def _positive(kind: type[int] | type[float]) -> Any:
    def convert(value: str) -> int | float:
        try:
            number = kind(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
        if number <= 0:
            raise argparse.ArgumentTypeError(f"{value} must be above zero")
        return number

    return convert


def _client_batch(value: str) -> int:
    from relay.api.jsonbody import MAX_BATCH

    k = int(_positive(int)(value))
    if k > MAX_BATCH:
        raise argparse.ArgumentTypeError(f"at most {MAX_BATCH} messages per request")
    return k


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `bench` to the `relay` parser."""
    p = sub.add_parser(
        "bench",
        help="start nodes on loopback and time messages from A's client API to commit at B",
    )
    pos_int, pos_float = _positive(int), _positive(float)
    p.add_argument("--n", type=pos_int, default=20_000, help="messages to send (20000)")
    p.add_argument("--size", type=pos_int, default=1024, help="payload bytes (1024)")
    p.add_argument("--clients", type=pos_int, default=20, help="concurrent connections (20)")
    p.add_argument(
        "--client-batch",
        type=_client_batch,
        default=100,
        metavar="K",
        help="messages per request to POST /v1/messages/batch; 1 uses POST /v1/messages (100)",
    )
    p.add_argument(
        "--rate", type=pos_float, help="open-loop offered load in messages/s (for latency)"
    )
    p.add_argument("--peers", type=pos_int, default=1, help="destination nodes (1)")
    p.add_argument(
        "--app",
        action="store_true",
        help="app to app: stop the clock when the app at each destination has read every"
        " message through GET /v1/inbox and acked it (default: when B committed it)",
    )
    p.add_argument(
        "--backlog",
        type=pos_int,
        metavar="M",
        help="queue M messages with the destinations down, then start them and time the drain",
    )
    p.add_argument(
        "--retry-max",
        metavar="DURATION",
        help="with --backlog: A's [federation] retry_max, so the drain is not held up by"
        " backoff (default 2s; 'default' keeps the 1h production cap)",
    )
    p.add_argument(
        "--storage",
        metavar="URL",
        help="keep every node's state in PostgreSQL (postgresql://USER@HOST/DB), each node in"
        " a schema of its own, dropped afterwards; the password from $RELAY_STORAGE_PASSWORD"
        " (default: each node's own SQLite file)",
    )
    p.add_argument(
        "--workers",
        type=pos_int,
        default=1,
        metavar="N",
        help="run every node as `relay run --workers N` (N > 1 needs --storage) (1)",
    )
    p.add_argument(
        "--seal",
        choices=("preferred", "off"),
        default="preferred",
        help="A's [federation] seal: 'off' sends the payloads unsealed; 'preferred' seals them"
        " to each destination's seal key, as nodes set up by `relay init` do (preferred)",
    )
    p.add_argument(
        "--sql-stats",
        action="store_true",
        help="each node times its SQLite writer's statements (thread CPU, by SQL text) and"
        " the result lists the dearest per message (SQLite only)",
    )
    p.add_argument(
        "--seal-suite",
        choices=SUITES,
        default=SUITES[0],
        help="the suite of the destinations' seal keys, so that the cost of the hybrid"
        " wrap's size can be told from the crypto's (%(default)s, what `relay init` makes)",
    )
    p.add_argument("--profile", type=Path, metavar="DIR", help="py-spy the nodes into DIR")
    p.add_argument("--workdir", type=Path, metavar="DIR", help="keep the node directories here")
    p.add_argument("--json", action="store_true", help="print the result as one JSON document")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(func=cmd_bench)


def cmd_bench(args: argparse.Namespace) -> int:
    """Run the benchmark and print its figures."""
    # aiohttp and friends only when benchmarking
    from relay.cli.bench.options import Options
    from relay.cli.bench.run import bench

    if args.app and (args.backlog is not None or args.rate is not None):
        print(
            "relay bench: --app goes with closed-loop runs only, not --backlog or --rate",
            file=sys.stderr,
        )
        return 2
    if args.workers > 1 and args.storage is None:
        print(
            "relay bench: --workers above 1 needs --storage postgresql://...: a SQLite node"
            " is one process",
            file=sys.stderr,
        )
        return 2
    if args.storage is not None and not args.storage.startswith(("postgresql://", "postgres://")):
        print(
            f"relay bench: --storage {args.storage!r} is not a postgresql:// URL", file=sys.stderr
        )
        return 2
    if args.sql_stats and args.storage is not None:
        print(
            "relay bench: --sql-stats times the SQLite writer; it does not cover --storage",
            file=sys.stderr,
        )
        return 2
    opts = Options(
        n=args.n,
        size=args.size,
        clients=args.clients,
        client_batch=args.client_batch,
        rate=args.rate,
        peers=args.peers,
        app=args.app,
        backlog=args.backlog,
        retry_max=_retry_max(args),
        profile_dir=args.profile,
        workdir=args.workdir,
        storage=args.storage,
        workers=args.workers,
        seal=args.seal,
        sql_stats=args.sql_stats,
        seal_suite=args.seal_suite,
        progress=not args.quiet,
    )
    result = bench(opts)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(render(result))
    return 0


def _retry_max(args: argparse.Namespace) -> str | None:
    if args.backlog is None or args.retry_max == "default":
        return None
    return str(args.retry_max or "2s")


def render(r: dict[str, Any]) -> str:
    """The result as aligned `key: value` lines."""
    lat = r["latency_ms"]
    lines = [
        f"mode: {r['mode']}  ({r['endpoint']}, {r['client_batch']} per request)",
        f"storage: {r.get('storage', 'sqlite')}  workers per node: {r.get('workers', 1)}",
        f"n: {r['n']}  size: {r['size']}  clients: {r['clients']}  peers: {r['peers']}"
        + (f"  offered: {r['rate']:g} msg/s" if r["rate"] else ""),
        f"seconds: {r['seconds']}  (clock stops when {r['clock_stops']})",
        f"msgs_per_s: {r['msgs_per_s']:,.0f}",
        f"latency_ms: p50 {lat['p50']:g}  p90 {lat['p90']:g}  p99 {lat['p99']:g}"
        f"  max {lat['max']:g}  (created at A -> delivered stamp at B, read from B)",
    ]
    obs = r["latency_observed_ms"]
    lines.append(
        f"latency_observed_ms: p50 {obs['p50']:g}  p90 {obs['p90']:g}  p99 {obs['p99']:g}"
        "  (created at A -> first poll of B's database that saw it committed)"
    )
    if "latency_from_schedule_ms" in r:
        s = r["latency_from_schedule_ms"]
        lines.append(
            f"latency_from_schedule_ms: p50 {s['p50']:g}  p90 {s['p90']:g}  p99 {s['p99']:g}"
        )
    if "backlog" in r:
        b = r["backlog"]
        lines.append(
            f"backlog: queued {b['queued']} in {b['queue_seconds']}s; drain first 10%"
            f" {b['first_10pct_msgs_per_s']:,.0f} msg/s, last 10%"
            f" {b['last_10pct_msgs_per_s']:,.0f} msg/s; waited"
            f" {b['wait_before_first_delivery_s']}s for the first delivery"
        )
    lines += [
        f"node {node['name']} ({node['role']}): peak_rss {node['peak_rss_mb']} MB"
        f" (sampled max {node['max_sampled_rss_mb']}), cpu {node['cpu_s']} s"
        f" ({node['cpu_us_per_msg']:,.0f} µs per message),"
        f" journal_mode={node['journal_mode']} synchronous={node['synchronous']}"
        f" [{node['synchronous_source']}], loop={node['event_loop']}"
        + (f", workers={node['workers']}" if node.get("workers", 1) > 1 else "")
        + (
            f"; PostgreSQL backends cpu {node['server_cpu_s']} s"
            f" ({node['server_cpu_us_per_msg']:,.0f} µs per message)"
            if node.get("server_cpu_s") is not None
            else ""
        )
        for node in r["nodes"]
    ]
    lines += [
        f"verify_skipped: {r['verify_skipped']}  ({r['verify_skipped_basis']})",
        f"ed25519_verify_per_s: {r['ed25519_verify_per_s']:,}"
        f"  (sign {r['ed25519_sign_per_s']:,}/s, seal {r['seal_per_s']:,} envelopes/s,"
        f" payload seal {r['payload_seal_per_s']:,}/s and open {r['payload_open_per_s']:,}/s;"
        " one core, per CPU second)",
        f"bench client cpu: {r['bench_client_cpu_s']} s;  code {r['code']};"
        f"  load average before {r['loadavg_before']}, after {r['loadavg_after']}",
    ]
    for name, st in r.get("sql_stats", {}).items():
        if "error" in st:
            lines.append(f"sql_stats {name}: {st['error']}")
            continue
        lines.append(
            f"sql_stats {name}: writer statements {st['total_us_per_msg']:g} µs per message"
            f" of thread CPU ({st['statements']} distinct); dearest:"
        )
        lines += [
            f"  {e['us_per_msg']:7.2f} µs  {e['calls_per_msg']:6.3f} calls"
            f"  {e['rows_per_msg']:6.3f} rows  {e['sql'][:90]}"
            for e in st["top"]
        ]
    for name, prof in r.get("profile", {}).items():
        lines.append(
            f"profile {name}: {prof['busy_samples']} busy samples"
            f" ({prof['idle_samples']} idle), threads {prof['threads']}"
        )
        lines += [f"  self {e['pct']:5.1f}%  {e['function']}" for e in prof["self"][:10]]
    return "\n".join(lines)
