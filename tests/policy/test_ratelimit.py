"""Token buckets (relay.policy.ratelimit) and the `[limits]` table, on a frozen monotonic clock."""

from __future__ import annotations

from pathlib import Path

import pytest

from relay.config.keys import generate_key_file
from relay.config.model import LimitsConfig
from relay.config.parse import parse_config
from relay.errors import Busy, ConfigErrors, NotFound, StoreError, Unavailable
from relay.policy.ratelimit import (
    MAX_BUCKETS,
    Buckets,
    Limits,
    Throttled,
    retry_after,
    retry_headers,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_bucket_allows_burst_then_refills_at_rate() -> None:
    clock = Clock()
    b = Buckets(rate=10, burst=5, clock=clock)
    assert [b.take("k") for _ in range(5)] == [0.0] * 5
    assert b.take("k") == pytest.approx(0.1)  # one token comes back in 1/10 s
    assert b.take("other") == 0.0  # keys do not share
    clock.now += 0.1
    assert b.take("k") == 0.0
    assert b.take("k") > 0
    clock.now += 100  # never more than the burst
    assert [b.take("k") for _ in range(6)] == [0.0] * 5 + [pytest.approx(0.1)]


def test_cost_counts_and_a_cost_over_the_burst_waits_for_a_full_bucket() -> None:
    clock = Clock()
    b = Buckets(rate=100, burst=50, clock=clock)
    assert b.take("k", 30) == 0.0
    assert b.take("k", 30) == pytest.approx(0.1)  # 20 left, 10 missing
    assert b.take("k", 20) == 0.0  # a refusal took nothing
    assert b.take("k", 1000) == pytest.approx(0.5)  # the whole burst, once full
    clock.now += 0.5
    assert b.take("k", 1000) == 0.0
    assert b.take("k", 1) > 0


def test_rate_zero_is_unlimited_and_keeps_no_bucket() -> None:
    b = Buckets(rate=0, burst=1, clock=Clock())
    assert all(b.take("k", 10**6) == 0.0 for _ in range(100))
    assert len(b) == 0


def test_idle_buckets_are_forgotten_past_the_bound() -> None:
    clock = Clock()
    b = Buckets(rate=1, burst=1, clock=clock)
    for i in range(MAX_BUCKETS):
        b.take(f"k{i}")
    clock.now += 10  # all full again
    b.take("new")
    assert len(b) == 1


def test_limits_raise_throttled_with_whole_seconds() -> None:
    clock = Clock()
    limits = Limits(
        LimitsConfig(client_rate=2, client_burst=2, peer_rate=1, peer_burst=1), clock=clock
    )
    limits.client("alice", 2)
    with pytest.raises(Throttled) as caught:
        limits.client("alice", 1)
    assert (caught.value.status, caught.value.code, caught.value.retry_after) == (
        429,
        "rate_limited",
        1,
    )
    limits.client("bob", 2)  # another mailbox has its own bucket
    limits.peer("a.test")
    with pytest.raises(Throttled) as caught:
        limits.peer("a.test")
    assert "a.test" in caught.value.detail
    assert retry_headers(caught.value) == {"Retry-After": "1"}
    limits.peer("b.test")

    slow = Limits(LimitsConfig(client_rate=1, client_burst=10), clock=clock)
    slow.client("alice", 10)
    with pytest.raises(Throttled) as caught:
        slow.client("alice", 5)
    assert caught.value.retry_after == 5


def test_renew_keeps_buckets_and_takes_new_rates() -> None:
    clock = Clock()
    old = Limits(LimitsConfig(client_rate=1, client_burst=1), clock=clock)
    old.client("alice")
    new = Limits.renew(old, LimitsConfig(client_rate=1000, client_burst=1))
    assert new is old
    with pytest.raises(Throttled):  # the emptied bucket survived the reload
        new.client("alice")
    clock.now += 0.001
    new.client("alice")


def test_retry_after_only_for_429_and_503() -> None:
    assert retry_after(NotFound("x")) is None
    assert retry_headers(NotFound("x")) == {}
    assert retry_after(StoreError("disk full")) == 2
    assert retry_after(Unavailable("stopping")) == 2
    assert retry_after(Busy("behind", 7)) == 7
    assert retry_headers(Busy("behind")) == {"Retry-After": "1", "Connection": "close"}


def _node_toml(tmp_path: Path, limits: str) -> str:
    if not (tmp_path / "node.key").exists():
        generate_key_file(tmp_path / "node.key")
    return (
        '[node]\nname = "n.test"\njurisdiction = "DE"\nlisten = "127.0.0.1:0"\n'
        'key_file = "node.key"\n\n' + limits
    )


def test_limits_table_defaults_and_values(tmp_path: Path) -> None:
    cfg = parse_config(_node_toml(tmp_path, ""), tmp_path / "node.toml")
    assert cfg.limits == LimitsConfig()
    d = cfg.limits
    assert d.client_rate >= 2000 and d.client_burst >= 1000  # a 1,000-message batch passes
    text = _node_toml(
        tmp_path,
        "[limits]\nclient_rate = 50\nclient_burst = 100\npeer_rate = 0\npeer_burst = 1\n"
        "max_queued = 0\nmax_pending_writes = 64\n",
    )
    cfg = parse_config(text, tmp_path / "node.toml")
    assert cfg.limits == LimitsConfig(50, 100, 0, 1, 0, 64)


def test_limits_table_refuses_mistakes(tmp_path: Path) -> None:
    text = _node_toml(tmp_path, '[limits]\nclient_rate = -1\npeer_burst = 0\nspeed = "fast"\n')
    with pytest.raises(ConfigErrors) as caught:
        parse_config(text, tmp_path / "node.toml")
    found = {(e.line, e.key) for e in caught.value.errors}
    assert found == {(8, "limits.client_rate"), (9, "limits.peer_burst"), (10, "limits.speed")}


def test_peer_body_bytes_are_a_bucket_of_one_second_per_peer() -> None:
    clock = Clock()
    limits = Limits(LimitsConfig(peer_bytes_per_s=1000), clock=clock)
    limits.peer_body("b.test", 600)
    limits.peer_body("c.test", 1000)  # its own bucket
    with pytest.raises(Throttled) as caught:
        limits.peer_body("b.test", 600)  # 400 left, 200 missing: 0.2 s, whole seconds
    assert (caught.value.status, caught.value.retry_after) == (429, 1)
    assert "1000 batch bytes a second" in caught.value.detail
    clock.now += 0.2
    limits.peer_body("b.test", 600)
    clock.now += 10
    limits.peer_body("b.test", 5000)  # over the burst: taken once the bucket is full
    renewed = Limits.renew(limits, LimitsConfig(peer_bytes_per_s=0))  # a reload: off
    assert renewed is limits
    limits.peer_body("b.test", 10**9)
