"""One worker of `relay run DIR --workers N`: a whole node on its supervisor's socket.

The supervisor (relay.node.supervise) binds the listen socket once and starts
each worker as `python -m relay run DIR --worker I --listen-fd FD`, the socket
inherited as FD. The worker is an ordinary node (relay.node.app) except that:
- it accepts on the inherited socket instead of binding `[node] listen`;
- its admin API is DIR/admin-I.sock (the supervisor owns DIR/admin.sock);
- its log lines carry `worker=I` and its answers a `Relay-Worker: I` header;
- it leaves `[metrics] listen` to the supervisor, which merges the workers';
- it dies with its supervisor (Linux: PR_SET_PDEATHSIG), so that a killed
  supervisor never leaves workers holding the port.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import socket
import sys
from pathlib import Path

from relay.errors import BadRequest

WORKER_FLAG = "--worker"
LISTEN_FD_FLAG = "--listen-fd"
_PR_SET_PDEATHSIG = 1


def worker_argv(directory: Path, index: int, fd: int) -> list[str]:
    """The command line of worker `index`, handed the listen socket as `fd`."""
    return [
        sys.executable,
        "-m",
        "relay",
        "run",
        str(directory),
        WORKER_FLAG,
        str(index),
        LISTEN_FD_FLAG,
        str(fd),
    ]


def inherited_socket(fd: int) -> socket.socket:
    """The listening TCP socket the supervisor passed down as `fd`.

    BadRequest if `fd` is not one (the flags are for the supervisor's use).
    """
    try:
        sock = socket.socket(fileno=fd)
    except OSError as e:
        raise BadRequest(f"{LISTEN_FD_FLAG} {fd}: not a socket ({e.strerror})") from None
    listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    if sock.type != socket.SOCK_STREAM or not listening:
        sock.detach()
        raise BadRequest(f"{LISTEN_FD_FLAG} {fd}: not a listening TCP socket")
    sock.setblocking(False)
    return sock


def die_with_parent() -> None:
    """Ask the kernel to SIGTERM this process when its parent (the supervisor) dies.

    Linux only (elsewhere nothing happens). If the parent is already gone,
    stop now rather than serve unsupervised.
    """
    parent = os.getppid()
    name = ctypes.util.find_library("c")
    if name is None or not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(name, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:  # it died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)
