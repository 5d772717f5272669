"""relay.node.gctune: what settle_after_start leaves the collector set to."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from relay.node.gctune import OLDER_THRESHOLDS, YOUNG_THRESHOLD, settle_after_start


@pytest.fixture
def restored_gc() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


@pytest.mark.usefixtures("restored_gc")
def test_settle_freezes_the_start_up_heap_and_spaces_collections() -> None:
    gc.unfreeze()
    start_up = [object() for _ in range(10)]
    settle_after_start()
    assert gc.get_freeze_count() >= len(start_up)
    assert gc.get_threshold() == (YOUNG_THRESHOLD, *OLDER_THRESHOLDS)


@pytest.mark.usefixtures("restored_gc")
def test_cycles_made_after_start_up_are_still_collected() -> None:
    settle_after_start()

    class Node:
        other: object = None

    a, b = Node(), Node()
    a.other, b.other = b, a
    probe = [a]
    del a, b
    probe.clear()
    assert gc.collect() >= 2
