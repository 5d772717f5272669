"""`relay demo`: a narrated three-node federation on loopback."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("demo", help="run a narrated three-node federation (RU, KZ, DE) locally")
    p.add_argument("--once", action="store_true", help="narrate, stop every node and exit")
    p.add_argument("--dir", type=Path, help="keep the nodes in DIR instead of a temp dir")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    from relay.cli.demo.narrate import run_demo

    return run_demo(args.once, args.dir)
