"""`relay run DIR`: the node in the foreground."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from relay import logs
from relay.config.files import load_config


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("run", help="run the node in the foreground (SIGTERM drains and exits 0)")
    p.add_argument("dir", type=Path, help="node directory (holds node.toml)")
    p.set_defaults(func=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    from relay.node.app import run_node

    config = load_config(args.dir)
    logs.setup(config.log.format, config.log.level)
    try:
        import uvloop
    except ImportError:  # not on Linux: the standard loop serves as well, slower
        return asyncio.run(run_node(args.dir))
    return uvloop.run(run_node(args.dir))
