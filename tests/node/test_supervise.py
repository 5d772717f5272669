"""relay.node.supervise and relay.node.workers: the pieces that need no child process."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from relay.errors import BadRequest
from relay.node.supervise import BACKOFF_MAX_S, BACKOFF_MIN_S, backoff_after, bind_listener
from relay.node.workers import inherited_socket, worker_argv


def test_backoff_doubles_from_half_a_second_to_thirty() -> None:
    waits, wait = [], 0.0
    for _ in range(9):
        wait = backoff_after(wait, ran_s=1)
        waits.append(wait)
    assert waits == [0.5, 1, 2, 4, 8, 16, 30, 30, 30]
    assert (BACKOFF_MIN_S, BACKOFF_MAX_S) == (0.5, 30)


def test_backoff_starts_over_after_a_worker_ran_thirty_seconds() -> None:
    assert backoff_after(16, ran_s=29.9) == 30
    assert backoff_after(16, ran_s=30) == 0.5


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_the_listen_socket_is_bound_once_and_handed_down(host: str) -> None:
    try:
        sock = bind_listener(host, 0)
    except OSError:
        pytest.skip(f"no {host} here")
    with sock:
        port = sock.getsockname()[1]
        assert port != 0
        child = inherited_socket(sock.fileno())  # as the worker reads it
        assert child.getsockname()[1] == port and not child.getblocking()
        child.detach()


def test_a_descriptor_that_is_not_a_listening_socket_is_refused() -> None:
    with socket.socket() as unbound:
        with pytest.raises(BadRequest, match="not a listening TCP socket"):
            inherited_socket(unbound.fileno())
        assert unbound.fileno() != -1  # left open for its owner


def test_worker_argv_names_index_and_descriptor() -> None:
    argv = worker_argv(Path("/srv/n"), 3, 7)
    assert argv[1:] == ["-m", "relay", "run", "/srv/n", "--worker", "3", "--listen-fd", "7"]
