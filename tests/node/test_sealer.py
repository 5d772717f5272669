"""relay.node.sealer: data key epochs, seal modes, own keys, the wrap cache (docs/sealing.md)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from relay.config.files import load_config
from relay.config.model import RetiredSealKey
from relay.config.sealkeys import generate_seal_key_file
from relay.node import sealer as sealer_module
from relay.node.sealer import Sealer, WrapCache
from relay.protocol.sealing import CLASSIC, open_body, unwrap_dek
from tests.config.test_config import NODE, write_node


@dataclasses.dataclass
class Setup:
    sealer: Sealer
    clock: list[int]
    dest_keys: tuple[str, ...]  # the destination's seal keys, as trust would list them


def setup(tmp_path: Path, extra: str = "") -> Setup:
    dest = generate_seal_key_file(tmp_path / "dest.seal", CLASSIC)
    own = generate_seal_key_file(tmp_path / "node.seal", CLASSIC)
    text = NODE + 'seal_key_file = "node.seal"\n' + extra
    clock = [1_000]
    sealer = Sealer(os.urandom, lambda: clock[0])
    sealer.load(load_config(write_node(tmp_path, text)))
    assert sealer.current is not None and sealer.current.public.string == own.public.string
    return Setup(sealer, clock, (dest.public.string,))


def seal(s: Setup, ident: int, keys: tuple[str, ...] | None = None) -> bytes | None:
    """The wrap of an envelope sealed to b.test, or None if it was not sealed."""
    done = s.sealer.seal(
        dest="b.test",
        seal_keys=s.dest_keys if keys is None else keys,
        env_id=bytes([ident]) * 16,
        origin="o.test",
        body=b"x",
    )
    return None if done is None else done[0].wrap


def test_one_wrap_serves_an_epoch_then_a_new_one_is_drawn(tmp_path: Path) -> None:
    s = setup(tmp_path)
    first, second = seal(s, 1), seal(s, 2)
    assert first is not None and first == second
    s.clock[0] += sealer_module.EPOCH_MS
    third = seal(s, 3)
    assert third is not None and third != first


def test_the_envelope_count_ends_an_epoch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = setup(tmp_path)
    monkeypatch.setattr(sealer_module, "EPOCH_ENVELOPES", 2)
    wraps = [seal(s, i) for i in range(1, 5)]
    assert None not in wraps and wraps[0] == wraps[1] != wraps[2] == wraps[3]


def test_no_seal_key_or_seal_off_seals_nothing(tmp_path: Path) -> None:
    s = setup(tmp_path)
    assert seal(s, 1, keys=()) is None
    (tmp_path / "off").mkdir()
    off = setup(tmp_path / "off", '[federation]\nseal = "off"\n')
    assert off.sealer.mode == "off" and seal(off, 1) is None


def test_own_keys_published_and_revoked_left_out(tmp_path: Path) -> None:
    s = setup(tmp_path)
    current = s.sealer.current
    assert current is not None
    kid = current.public.key_id
    assert s.sealer.published() == {kid: {"key": current.public.string, "state": "current"}}
    assert "holds no seal key 'nope'" in s.sealer.why_missing("nope")
    revoked = generate_seal_key_file(tmp_path / "gone.seal", CLASSIC)
    config = load_config(tmp_path)
    node = dataclasses.replace(
        config.node,
        retired_seal_keys=(RetiredSealKey(tmp_path / "gone.seal"),),
        revoked_seal_keys=(revoked.public.string,),
    )
    s.sealer.load(dataclasses.replace(config, node=node))
    assert revoked.public.key_id not in s.sealer.keys
    assert "is revoked" in s.sealer.why_missing(revoked.public.key_id)


def test_a_retired_key_opens_until_its_valid_until_then_is_gone_without_a_reload(
    tmp_path: Path,
) -> None:
    old = generate_seal_key_file(tmp_path / "old.seal", CLASSIC)
    legacy = generate_seal_key_file(tmp_path / "legacy.seal", CLASSIC)
    s = setup(
        tmp_path,
        'retired_seal_key_files = [{file = "old.seal", valid_until = 1970-01-01T00:00:05Z},'
        ' "legacy.seal"]\n',
    )
    kid, legacy_id = old.public.key_id, legacy.public.key_id
    assert s.sealer.opening_keys().keys() == {s.sealer.current.public.key_id, kid, legacy_id}  # type: ignore[union-attr]
    assert s.sealer.published()[kid] == {
        "key": old.public.string,
        "state": "retired",
        "valid_until": 5_000,
    }
    assert "valid_until" not in s.sealer.published()[legacy_id]  # retired before grace periods
    s.clock[0] = 4_999
    assert kid in s.sealer.opening_keys()
    s.clock[0] = 5_000  # the node keeps running past valid_until
    assert kid not in s.sealer.opening_keys() and legacy_id in s.sealer.opening_keys()
    assert kid not in s.sealer.published()
    why = s.sealer.why_missing(kid)
    assert repr(kid) in why and "expired at 1970-01-01T00:00:05Z" in why
    # loaded after valid_until: never opens at all
    s.sealer.load(load_config(tmp_path))
    assert kid not in s.sealer.opening_keys() and "expired" in s.sealer.why_missing(kid)


def test_what_the_sealer_seals_opens_at_the_destination(tmp_path: Path) -> None:
    s = setup(tmp_path)
    dest = generate_seal_key_file(tmp_path / "d.seal", CLASSIC)
    keys = ("x25519:not-a-key", dest.public.string)  # the first usable one is taken
    done = s.sealer.seal(
        dest="d.test", seal_keys=keys, env_id=bytes(16), origin="o.test", body=b"hello"
    )
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
