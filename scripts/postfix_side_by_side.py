#!/usr/bin/env python3
"""Postfix and relay under the same load on this machine, in one sitting (issue 13).

    sudo python3 scripts/postfix_side_by_side.py              # 20,000 messages each
    sudo python3 scripts/postfix_side_by_side.py --n 5000 --rounds 3

Not run by the tests: it installs Postfix from Debian's packages (apt-get),
rewrites its main.cf for a loopback-only relay, and needs root.

The Postfix side: smtp-source opens `--clients` SMTP sessions to Postfix on
127.0.0.1:2525 and sends `--n` messages of `--size` bytes; Postfix queues each
one durably (its queue files are fsynced before it answers 250 "queued") and
relays it to smtp-sink on another loopback port. The clock runs from the
first connection until the queue is empty again, i.e. every message was
handed to the sink. CPU is the machine's (from /proc/stat) for the run:
Postfix's processes come and go, so there is no per-process figure, and it
includes smtp-source and smtp-sink.

The relay side: `relay bench --app --json` with the same n, size and clients
(submitted at A in batches of --client-batch, read and acked by the app at B;
durable at both ends, every envelope verified at B).

Prints one line per run and the relay/Postfix ratio of the medians; `--json`
prints every figure as one document.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SMTPD = "127.0.0.1:2525"
SINK = "127.0.0.1:2526"
MAIN_CF = {
    "inet_interfaces": "loopback-only",
    "inet_protocols": "ipv4",
    "mydestination": "",
    "myhostname": "postfix.bench.invalid",
    "mynetworks": "127.0.0.0/8",
    "relayhost": f"[{SINK.split(':')[0]}]:{SINK.split(':')[1]}",
    "smtpd_relay_restrictions": "permit_mynetworks, reject",
    "default_destination_concurrency_limit": "20",
    "smtp_destination_concurrency_limit": "20",
    "default_process_limit": "200",
    "maximal_queue_lifetime": "1h",
    "smtpd_client_connection_count_limit": "0",
    "smtpd_client_connection_rate_limit": "0",
}


def sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, check=check, text=True, capture_output=True)


def install_postfix() -> None:
    """Postfix and its smtp-source/smtp-sink tools from Debian's packages."""
    if shutil.which("postfix") and shutil.which("smtp-source") and shutil.which("smtp-sink"):
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(
        ["debconf-set-selections"],
        input="postfix postfix/main_mailer_type select No configuration\n",
        text=True,
        check=True,
    )
    subprocess.run(["apt-get", "update", "-q"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-q", "postfix"], check=True, env=env)


def configure_postfix() -> None:
    """Loopback only, relay everything to the sink, one extra smtpd on SMTPD."""
    main_cf = Path("/etc/postfix/main.cf")
    if not main_cf.exists():
        shutil.copy("/usr/share/postfix/main.cf.debian", main_cf)
    sh("postconf", "-e", *(f"{k}={v}" for k, v in MAIN_CF.items()))
    sh("postconf", "-M", f"{SMTPD}/inet={SMTPD} inet n - n - - smtpd")
    sh("newaliases", check=False)
    if sh("postfix", "status", check=False).returncode == 0:
        sh("postfix", "reload")
    else:
        sh("postfix", "start")


def queue_empty() -> bool:
    out = sh("postqueue", "-j", check=False).stdout
    return out.strip() == ""


def machine_cpu_s() -> float:
    """Busy CPU seconds of the whole machine since boot (user+nice+system+irq+softirq)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    busy = sum(int(fields[i]) for i in (0, 1, 2, 5, 6))
    return busy / os.sysconf("SC_CLK_TCK")


def run_postfix(n: int, size: int, clients: int) -> dict[str, Any]:
    sink = subprocess.Popen(
        ["smtp-sink", "-u", "postfix", SINK, "1024"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.5)
        while not queue_empty():
            time.sleep(0.5)
        cpu0, t0 = machine_cpu_s(), time.monotonic()
        source = [
            "smtp-source",
            "-s",
            str(clients),
            "-l",
            str(size),
            "-m",
            str(n),
            "-f",
            "sender@source.bench.invalid",
            "-t",
            "rcpt@sink.bench.invalid",
            SMTPD,
        ]
        subprocess.run(source, check=True, capture_output=True)
        submitted = time.monotonic() - t0
        while not queue_empty():
            time.sleep(0.05)
        seconds = time.monotonic() - t0
        cpu = machine_cpu_s() - cpu0
    finally:
        sink.terminate()
        sink.wait(timeout=30)
    return {
        "system": "postfix",
        "n": n,
        "seconds": round(seconds, 3),
        "submit_seconds": round(submitted, 3),
        "msgs_per_s": round(n / seconds, 1),
        "machine_cpu_us_per_msg": round(cpu * 1e6 / n),
    }


def run_relay(n: int, size: int, clients: int, client_batch: int) -> dict[str, Any]:
    relay = shutil.which("relay") or str(ROOT / ".venv" / "bin" / "relay")
    cmd = [relay, "bench", "--app", "--json", "--quiet", "--n", str(n), "--size", str(size)]
    cmd += ["--clients", str(clients), "--client-batch", str(client_batch)]
    cpu0 = machine_cpu_s()
    doc = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    cpu = machine_cpu_s() - cpu0  # includes the bench's set-up; the nodes' own figures do not
    return {
        "system": "relay",
        "n": n,
        "seconds": doc["seconds"],
        "msgs_per_s": doc["msgs_per_s"],
        "node_cpu_us_per_msg": {x["name"]: x["cpu_us_per_msg"] for x in doc["nodes"]},
        "machine_cpu_us_per_msg_incl_setup": round(cpu * 1e6 / n),
        "code": doc["code"],
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=20_000)
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--clients", type=int, default=20)
    p.add_argument("--client-batch", type=int, default=100, help="relay's messages per POST")
    p.add_argument("--rounds", type=int, default=2, help="alternating runs of each (2)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    if os.geteuid() != 0:
        print("postfix_side_by_side: needs root (installs and runs Postfix)", file=sys.stderr)
        return 2
    install_postfix()
    configure_postfix()
    runs: list[dict[str, Any]] = []
    for _ in range(args.rounds):
        for which in ("postfix", "relay"):
            load = Path("/proc/loadavg").read_text().split()[0]
            if which == "postfix":
                r = run_postfix(args.n, args.size, args.clients)
            else:
                r = run_relay(args.n, args.size, args.clients, args.client_batch)
            r["loadavg_before"] = load
            runs.append(r)
            if not args.json:
                print(json.dumps(r), flush=True)
    med = {
        s: statistics.median(r["msgs_per_s"] for r in runs if r["system"] == s)
        for s in ("postfix", "relay")
    }
    ratio = med["relay"] / med["postfix"] if med["postfix"] else 0.0
    if args.json:
        print(json.dumps({"runs": runs, "median_msgs_per_s": med, "ratio": ratio}, indent=2))
    else:
        print(
            f"median msgs/s: relay {med['relay']:,.0f}, postfix {med['postfix']:,.0f};"
            f" relay/postfix {ratio:.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
