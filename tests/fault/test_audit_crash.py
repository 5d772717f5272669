"""The audit log under kill -9 inside write transactions (issue 15): after each
restart the log has no gap, every stored envelope has exactly one `stored` entry
and every entry its envelope, every signed head matches the log it names, and an
export verifies offline.

RELAY_FAULT=commit_delay_ms holds each transaction open between its jobs and its
COMMIT and logs `fault_commit_open`, so the kill lands there, as in test_crash.py.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import pytest

from relay.protocol.audit import decode_entry, decode_signed_head, verify_head
from relay.protocol.keystr import parse_public_key
from relay.protocol.merkle import leaf_hash, root
from tests.e2e.harness import make_node, relay
from tests.fault.common import LogWatch

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

KILLS = 3
COMMIT_DELAY_MS = 300


class Sender(threading.Thread):
    """Posts messages to n.test's own bob until told to stop; answers are not needed."""

    def __init__(self, url: str, token: str) -> None:
        super().__init__(name="sender", daemon=True)
        self.url, self.token = url, token
        self.stop = threading.Event()

    def run(self) -> None:
        n = 0
        while not self.stop.is_set():
            body = json.dumps({"messages": [{"to": ["bob@n.test"], "text": f"m{n}"}] * 5})
            req = urllib.request.Request(
                self.url + "/v1/messages/batch",
                data=body.encode(),
                headers={
                    "Authorization": f"Bearer {self.token}",
                    "Content-Type": "application/json",
                },
            )
            try:
                with urllib.request.urlopen(req, timeout=5) as resp:
                    resp.read()
            except (OSError, urllib.error.HTTPError):
                time.sleep(0.05)
            n += 1


def check_log(db_path: Path, key: str, *, headed: bool) -> int:
    """Assert the log's invariants on the database; the number of entries."""
    db = sqlite3.connect(db_path)
    try:
        rows = db.execute("SELECT seq, kind, entry, leaf FROM audit_log ORDER BY seq").fetchall()
        assert [r[0] for r in rows] == list(range(len(rows))), "the seqs have a gap"
        leaves = []
        stored: Counter[bytes] = Counter()
        for seq, kind, entry, leaf in rows:
            e = decode_entry(entry)
            assert (e.seq, e.kind) == (seq, kind)
            assert leaf == leaf_hash(entry)
            leaves.append(leaf)
            if kind == "stored":
                stored[e.blob("envelope")] += 1
        envelopes = Counter(bytes(r[0]) for r in db.execute("SELECT id FROM envelopes"))
        assert stored == envelopes, "stored entries and stored envelopes differ"
        pub = parse_public_key(key)
        heads = [decode_signed_head(r[0]) for r in db.execute("SELECT head FROM audit_heads")]
        assert heads or not headed, "no head was signed"
        for h in heads:
            verify_head(h, pub)
            assert h.head.size <= len(leaves)
            assert root(leaves[: h.head.size]) == h.head.root, f"head {h.head.size} does not fit"
        return len(rows)
    finally:
        db.close()


def test_kills_inside_commits_leave_the_log_and_heads_consistent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    n = make_node(tmp_path, "n.test", "DE")
    token = n.add_mailbox("alice")
    n.add_mailbox("bob")
    key = relay("key", "show", n.dir).stdout.strip().split()[-1]
    monkeypatch.setenv("RELAY_FAULT", f"commit_delay_ms={COMMIT_DELAY_MS}")
    watch = LogWatch(n.log_path)
    n.start()
    sender = Sender(n.url, token)
    sender.start()
    inside = 0
    try:
        for _ in range(KILLS):
            # the node runs (signals handled) and stores mail: kill it inside a commit
            watch.wait("node_started", timeout=60)
            watch.wait("submitted", timeout=60)
            deadline = time.monotonic() + 60
            while watch.last_fault != "fault_commit_open":
                assert time.monotonic() < deadline, "no open commit seen"
                time.sleep(0.005)
                watch.poll()
            n.kill()
            watch.poll()
            inside += watch.last_fault == "fault_commit_open"
            check_log(n.db_path, key, headed=False)  # a head comes each minute and at stop
            watch.skip_to_end()
            n.start()
        assert inside >= 1, "no kill landed inside a commit"
        watch.wait("node_started", timeout=60)
    finally:
        sender.stop.set()
        sender.join(timeout=10)
    n.stop()  # a clean stop signs a head over everything
    monkeypatch.delenv("RELAY_FAULT")
    entries = check_log(n.db_path, key, headed=True)
    db = sqlite3.connect(n.db_path)
    (size,) = db.execute("SELECT max(size) FROM audit_heads").fetchone()
    db.close()
    assert size == entries

    bundle = tmp_path / "bundle"
    relay("audit", "export", n.dir, "--out", bundle)
    out = relay("audit", "verify", bundle, "--key", key, "--residency").stdout
    assert f"latest head size {entries}" in out
    assert "stored outside the residency set: no" in out
