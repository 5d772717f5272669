"""PostgreSQL gone for longer than a lease, under `relay run --workers 2` (issue 12, item 4).

A runs as two workers on a throwaway cluster (tests/fault/pgcluster.py), B on
SQLite. A client streams numbered messages into A for B, each retried with
the same Idempotency-Key until it is accepted; midway the cluster is stopped
as by a crash for longer than a lease lives (so every lease of A lapses),
then started again. Meanwhile A answers 503 and accepts nothing; afterwards
its workers reconnect, take the leases again (one of them the sender of
b.test), and every message reaches B exactly once and is `delivered` at A.
"""

from __future__ import annotations

import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from relay.node.leases import TTL_MS
from tests.e2e.harness import make_pair, wait_for
from tests.e2e.test_workers_pg import statuses, worker_pids
from tests.fault.pgcluster import Cluster
from tests.fault.test_pg_restart import N, Stream, on_postgres, ready_status
from tests.pgserver import _bin_dir

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(_bin_dir() is None, reason="no PostgreSQL binaries (initdb) installed"),
]

DOWN_AFTER = 20  # messages accepted before the database goes away


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    c = Cluster()
    c.start()
    yield c
    c.remove()


def test_database_gone_past_the_leases_under_two_workers(tmp_path: Path, cluster: Cluster) -> None:
    a, b = make_pair(tmp_path)
    url = cluster.url("node_a")
    token = a.tokens["alice"]
    on_postgres(a, url)
    b.start()
    a.start("--workers", "2", timeout=60)
    assert a.proc is not None
    supervisor = a.proc
    try:
        wait_for(lambda: len(worker_pids(a)) == 2, timeout=60, what="both workers up")
        stream = Stream(a, token)
        stream.thread.start()
        wait_for(lambda: stream.accepted >= DOWN_AFTER, what=f"{DOWN_AFTER} accepted")
        cluster.stop("immediate")
        wait_for(lambda: ready_status(a) == 503, what="A's /readyz answering 503")
        during = stream.accepted
        time.sleep(TTL_MS / 1000 + 2)  # every lease of A lapses meanwhile
        assert stream.accepted == during, "a submit was accepted with the database gone"
        assert stream.answers[503] >= 3, stream.answers
        cluster.start()

        stream.thread.join(timeout=200)
        assert not stream.thread.is_alive() and stream.accepted == N, stream.answers
        got: Counter[str] = Counter()

        def all_arrived() -> bool:
            for m in b.inbox("bob", ack=True):
                got[m["text"]] += 1
            return len(got) >= N

        wait_for(all_arrived, timeout=90, what="every message in bob's inbox")
        assert got == Counter(f"seq={i}" for i in range(N))  # each once, none lost
        wait_for(
            lambda: (
                len(statuses(url, "alice")) == N
                and set(statuses(url, "alice").values()) == {"delivered"}
            ),
            timeout=60,
            what="every status delivered",
        )
        # the same two workers went on (no restart) and took their leases again
        logs = a.log_path.read_text(errors="replace")
        assert len(worker_pids(a)) == 2 and " worker_exited " not in logs
        assert logs.count(" lease_renew_failed ") == 2, logs  # once per worker, not per try
        assert logs.count(" lease_renew_recovered ") == 2, logs
        supervisor.send_signal(signal.SIGTERM)
        assert supervisor.wait(timeout=60) == 0
        assert b.stop() == 0
    finally:
        if supervisor.poll() is None:
            supervisor.send_signal(signal.SIGTERM)
            supervisor.wait(timeout=60)
        a.proc = None
        b.kill()
