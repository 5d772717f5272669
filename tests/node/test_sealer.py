"""relay.node.sealer: data key epochs, seal modes, the wrap cache (docs/sealing.md)."""

from __future__ import annotations

import dataclasses
import itertools
import os
from pathlib import Path

import pytest

from relay.config.files import load_config
from relay.config.sealkeys import generate_seal_key_file
from relay.node import sealer as sealer_module
from relay.node.sealer import Sealer, WrapCache
from relay.protocol.sealing import CLASSIC, open_body, unwrap_dek
from tests.config.test_config import KEY_A, NODE, write_node


def setup(tmp_path: Path, extra: str = "") -> tuple[Sealer, list[int]]:
    peer_key = generate_seal_key_file(tmp_path / "peer.seal", CLASSIC).public.string
    own = generate_seal_key_file(tmp_path / "node.seal", CLASSIC)
    text = NODE + 'seal_key_file = "node.seal"\n' + extra
    text += f'[[peers]]\nname = "b.test"\njurisdiction = "RU"\nkeys = ["{KEY_A}"]\n'
    text += f'seal_keys = ["{peer_key}"]\n'
    text += f'[[peers]]\nname = "c.test"\njurisdiction = "RU"\nkeys = ["{KEY_A}"]\n'
    clock = [1_000]
    sealer = Sealer(os.urandom, lambda: clock[0])
    sealer.load(load_config(write_node(tmp_path, text)))
    assert sealer.current is not None and sealer.current.public.string == own.public.string
    return sealer, clock


def test_one_wrap_serves_an_epoch_then_a_new_one_is_drawn(tmp_path: Path) -> None:
    sealer, clock = setup(tmp_path)
    ids = (bytes([i]) * 16 for i in itertools.count(1))
    first = sealer.seal(dest="b.test", env_id=next(ids), origin="msk.example.ru", body=b"x")
    second = sealer.seal(dest="b.test", env_id=next(ids), origin="msk.example.ru", body=b"y")
    assert first is not None and second is not None
    assert first[0].wrap == second[0].wrap and first[1] != second[1]
    clock[0] += sealer_module.EPOCH_MS
    third = sealer.seal(dest="b.test", env_id=next(ids), origin="msk.example.ru", body=b"z")
    assert third is not None and third[0].wrap != first[0].wrap


def test_the_envelope_count_ends_an_epoch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sealer, _ = setup(tmp_path)
    monkeypatch.setattr(sealer_module, "EPOCH_ENVELOPES", 2)
    wraps = [
        sealer.seal(dest="b.test", env_id=bytes([i]) * 16, origin="o.test", body=b"")
        for i in range(1, 5)
    ]
    got = [w[0].wrap for w in wraps if w is not None]
    assert len(got) == 4 and got[0] == got[1] != got[2] == got[3]


def test_no_pinned_seal_key_or_seal_off_seals_nothing(tmp_path: Path) -> None:
    sealer, _ = setup(tmp_path)
    assert sealer.seal(dest="c.test", env_id=bytes(16), origin="o.test", body=b"") is None
    (tmp_path / "off").mkdir()
    off, _ = setup(tmp_path / "off", '[federation]\nseal = "off"\n')
    assert off.mode == "off"
    assert off.seal(dest="b.test", env_id=bytes(16), origin="o.test", body=b"") is None


def test_own_keys_published_and_revoked_left_out(tmp_path: Path) -> None:
    sealer, _ = setup(tmp_path)
    assert sealer.current is not None
    kid = sealer.current.public.key_id
    assert sealer.published() == {kid: {"key": sealer.current.public.string, "state": "current"}}
    assert "holds no seal key 'nope'" in sealer.why_missing("nope")
    revoked = generate_seal_key_file(tmp_path / "gone.seal", CLASSIC)
    config = load_config(tmp_path)
    node = dataclasses.replace(
        config.node,
        retired_seal_key_files=(tmp_path / "gone.seal",),
        revoked_seal_keys=(revoked.public.string,),
    )
    sealer.load(dataclasses.replace(config, node=node))
    assert revoked.public.key_id not in sealer.keys
    assert "is revoked" in sealer.why_missing(revoked.public.key_id)


def test_what_the_sealer_seals_opens_at_the_destination(tmp_path: Path) -> None:
    sealer, _ = setup(tmp_path)
    dest = generate_seal_key_file(tmp_path / "dest.seal", CLASSIC)
    sealer._pinned["d.test"] = dest.public
    done = sealer.seal(dest="d.test", env_id=bytes(16), origin="o.test", body=b"hello")
    assert done is not None
    info, ct = done
    dek = unwrap_dek(dest, info, "o.test", "d.test")
    inner = open_body(
        info=info, dek=dek, payload=ct, env_id=bytes(16), origin="o.test", dest="d.test"
    )
    assert inner[32:] == b"hello"


def test_the_wrap_cache_drops_the_least_recently_used() -> None:
    cache = WrapCache(limit=2)
    cache[b"a"] = b"1"
    cache[b"b"] = b"2"
    assert cache.get(b"a") == b"1"  # a is now the most recent
    cache[b"c"] = b"3"
    assert set(cache) == {b"a", b"c"}
    assert cache.get(b"b") is None
