"""`relay run DIR [--workers N]`: the node in the foreground.

With `--workers 1` (the default) the node is this one process. With N > 1
this process supervises N worker processes sharing the listen socket
(relay.node.supervise); that needs storage several processes can share
(PostgreSQL), so a SQLite node is refused with exit 2.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from relay import logs
from relay.config.files import load_config
from relay.node.workers import LISTEN_FD_FLAG, WORKER_FLAG

MAX_WORKERS = 256
EXIT_USAGE = 2


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("run", help="run the node in the foreground (SIGTERM drains and exits 0)")
    p.add_argument("dir", type=Path, help="node directory (holds node.toml)")
    p.add_argument(
        "--workers",
        type=_worker_count,
        default=1,
        metavar="N",
        help="worker processes sharing the listen port (default 1; N > 1 needs PostgreSQL)",
    )
    # Set by the supervisor for each worker it starts (relay.node.workers).
    p.add_argument(WORKER_FLAG, type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument(LISTEN_FD_FLAG, type=int, default=None, help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_run)


def _worker_count(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 1 <= n <= MAX_WORKERS:
        raise argparse.ArgumentTypeError(f"{n} is out of range 1..{MAX_WORKERS}")
    return n


def cmd_run(args: argparse.Namespace) -> int:
    from relay.node.app import run_node

    config = load_config(args.dir)
    if args.worker is not None:
        if args.listen_fd is None:
            print(f"relay: {WORKER_FLAG} needs {LISTEN_FD_FLAG}", file=sys.stderr)
            return EXIT_USAGE
        from relay.node.workers import die_with_parent, inherited_socket

        die_with_parent()
        logs.setup(config.log.format, config.log.level, worker=args.worker)
        sock = inherited_socket(args.listen_fd)
        return _loop(run_node(args.dir, worker=args.worker, listen_socket=sock))
    logs.setup(config.log.format, config.log.level)
    if args.workers == 1:
        return _loop(run_node(args.dir))
    if config.storage.backend == "sqlite":
        print(
            f"relay: --workers {args.workers} needs storage that several processes share: "
            f"this node's storage is SQLite ({config.storage.url}), which one process at a "
            f"time may write. Run one worker, or move the node to PostgreSQL "
            f"([storage] url in {config.path}, `relay storage copy`).",
            file=sys.stderr,
        )
        return EXIT_USAGE
    from relay.node.supervise import Supervisor

    return _loop(Supervisor(args.dir.absolute(), config, args.workers).run())


def _loop(main: Coroutine[Any, Any, int]) -> int:
    try:
        import uvloop
    except ImportError:  # not on Linux: the standard loop serves as well, slower
        return asyncio.run(main)
    return uvloop.run(main)
