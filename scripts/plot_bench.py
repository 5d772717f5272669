#!/usr/bin/env python3
"""Run small `relay bench` sweeps and plot them for docs/performance.md.

    pip install -e '.[plot]'
    python scripts/plot_bench.py                       # run the sweeps, then plot
    python scripts/plot_bench.py --from results.json   # plot earlier results only

Writes docs/perf/throughput_vs_clients.png and docs/perf/latency_vs_rate.png,
and the raw results (one `relay bench --json` document per point) to --results.
The default sweeps take a few minutes on a 2-core machine. matplotlib is only
needed here (the `plot` extra), never by relay itself.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CLIENTS = (1, 2, 5, 10, 20, 40)
RATES_SINGLE = (100, 250, 500, 750, 1000, 1500)
RATES_BATCH = (250, 500, 1000, 1500, 2000, 3000)
RATE_SECONDS = 5


def bench(*args: str) -> dict[str, Any]:
    """One `relay bench --json` run; its result document."""
    cmd = [sys.executable, "-m", "relay", "bench", "--json", "--quiet", *args]
    print("running: relay bench " + " ".join(args), file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"relay bench {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    doc: dict[str, Any] = json.loads(proc.stdout)
    doc["command"] = "relay bench " + " ".join(args)
    print(
        f"  {doc['msgs_per_s']:,.0f} msg/s, p99 {doc['latency_ms']['p99']:g} ms",
        file=sys.stderr,
        flush=True,
    )
    return doc


def sweep(n_batch: int, n_single: int) -> dict[str, list[dict[str, Any]]]:
    """Throughput against clients (batched and single requests), latency against rate."""
    out: dict[str, list[dict[str, Any]]] = {
        "clients_batch": [],
        "clients_single": [],
        "rate_single": [],
        "rate_batch": [],
    }
    for c in CLIENTS:
        out["clients_batch"].append(bench("--n", str(n_batch), "--clients", str(c)))
        out["clients_single"].append(
            bench("--n", str(n_single), "--clients", str(c), "--client-batch", "1")
        )
    for r in RATES_SINGLE:
        n = max(500, r * RATE_SECONDS)
        out["rate_single"].append(bench("--n", str(n), "--rate", str(r), "--client-batch", "1"))
    for r in RATES_BATCH:
        n = max(500, r * RATE_SECONDS)
        out["rate_batch"].append(bench("--n", str(n), "--rate", str(r)))
    return out


def plot(results: dict[str, list[dict[str, Any]]], outdir: Path) -> None:
    """Draw both PNGs from sweep results."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    outdir.mkdir(parents=True, exist_ok=True)
    machine = next(iter(results["clients_batch"]), {}).get("machine", {})
    where = f"{machine.get('nproc', '?')} cores".strip(", ")
    loads = [
        float(d["loadavg_before"].split()[0])
        for series in results.values()
        for d in series
        if d.get("loadavg_before")
    ]
    if loads:  # other work on a shared machine skews the figures: say how much there was
        where += f", load avg {min(loads):.1f}–{max(loads):.1f}"
    code = next((d["code"] for d in results["clients_batch"] if "code" in d), "")
    if code:
        where += f", relay {code}"

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for key, label in (
        ("clients_batch", "POST /v1/messages/batch, 100 per request"),
        ("clients_single", "POST /v1/messages, 1 per request"),
    ):
        pts = sorted((d["clients"], d["msgs_per_s"]) for d in results[key])
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
    ax.set_xscale("log")
    ax.set_xticks(list(CLIENTS), [str(c) for c in CLIENTS])
    ax.set_xlabel("concurrent clients")
    ax.set_ylabel("messages/s committed at B")
    ax.set_title(f"A → B throughput, 1 KiB messages ({where})", fontsize=10)
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(outdir / "throughput_vs_clients.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for key, what, marker, color in (
        ("rate_single", "1 per request", "o", "C0"),
        ("rate_batch", "100 per request", "s", "C1"),
    ):
        rated = sorted(results.get(key, []), key=lambda d: d["rate"])
        xs = [d["rate"] for d in rated]
        for p, style in (("p50", ":"), ("p99", "-")):
            ax.plot(
                xs,
                [max(d.get("latency_observed_ms", d["latency_ms"])[p], 0.5) for d in rated],
                marker + style,
                color=color,
                label=f"{p}, {what}: created at A → seen committed at B",
            )
        if key == "rate_single":
            ax.plot(
                xs,
                [max(d["latency_from_schedule_ms"]["p99"], 0.5) for d in rated],
                "x--",
                color="C3",
                label=f"p99 from intended send time, {what}",
            )
    ax.axhline(50, color="grey", linestyle=":", label="target p99 ≤ 50 ms at 1,000 msg/s")
    ax.set_yscale("log")
    ax.set_xlabel("offered load, messages/s (open loop)")
    ax.set_ylabel("latency, ms")
    ax.set_title(f"Latency against offered load, 1 KiB messages ({where})", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(outdir / "latency_vs_rate.png", dpi=110)
    plt.close(fig)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--from", dest="source", type=Path, help="plot these results, run nothing")
    p.add_argument("--results", type=Path, default=Path("bench-sweeps.json"))
    p.add_argument("--outdir", type=Path, default=ROOT / "docs" / "perf")
    p.add_argument("--n-batch", type=int, default=10_000, help="messages per batched point")
    p.add_argument("--n-single", type=int, default=3_000, help="messages per single point")
    args = p.parse_args()
    if args.source is not None:
        results = json.loads(args.source.read_text())
    else:
        results = sweep(args.n_batch, args.n_single)
        args.results.write_text(json.dumps(results, indent=2))
        print(f"wrote {args.results}", file=sys.stderr)
    plot(results, args.outdir)
    print(f"wrote {args.outdir}/throughput_vs_clients.png and latency_vs_rate.png", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
