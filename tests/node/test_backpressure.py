"""Backpressure's own bounds: unauthenticated reads and decoding off the event loop."""

from __future__ import annotations

import asyncio
import threading
from typing import Any, cast

import pytest

from relay.errors import Busy
from relay.node.backpressure import (
    DECODERS,
    OFF_LOOP_BYTES,
    UNAUTHENTICATED_READS,
    Backpressure,
)
from relay.storage.interface import Storage


def backpressure() -> Backpressure:
    return Backpressure(cast(Storage, None))  # the store is only asked for the queue length


async def test_a_small_body_is_decoded_on_the_loop_a_large_one_in_a_thread() -> None:
    bp = backpressure()
    loop_thread = threading.get_ident()
    assert await bp.decode(OFF_LOOP_BYTES, threading.get_ident) == loop_thread
    assert await bp.decode(OFF_LOOP_BYTES + 1, threading.get_ident) != loop_thread


async def test_at_most_two_large_bodies_are_decoded_at_once() -> None:
    bp = backpressure()
    running, most = 0, 0
    lock = threading.Lock()
    release = threading.Event()

    def work() -> None:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        release.wait(timeout=30)
        with lock:
            running -= 1

    tasks = [asyncio.ensure_future(bp.decode(OFF_LOOP_BYTES + 1, work)) for _ in range(5)]
    for _ in range(200):  # until the first two threads run
        await asyncio.sleep(0.01)
        with lock:
            if running == DECODERS:
                break
    with lock:
        assert running == DECODERS
    release.set()
    await asyncio.gather(*tasks)
    assert most == DECODERS


async def test_a_decoding_error_reaches_the_caller() -> None:
    bp = backpressure()

    def bad() -> Any:
        raise Busy("from the thread")

    with pytest.raises(Busy, match="from the thread"):
        await bp.decode(OFF_LOOP_BYTES + 1, bad)


def test_unauthenticated_reads_are_bounded_and_given_back() -> None:
    bp = backpressure()
    requests = [object() for _ in range(UNAUTHENTICATED_READS + 1)]
    for r in requests[:-1]:
        bp.take_unauthenticated(r)  # type: ignore[arg-type]
    with pytest.raises(Busy, match="Relay-Certificate"):
        bp.take_unauthenticated(requests[-1])  # type: ignore[arg-type]
    bp.release(requests[0])  # type: ignore[arg-type]
    bp.take_unauthenticated(requests[-1])  # type: ignore[arg-type]
    assert bp.unauthenticated_reads == UNAUTHENTICATED_READS


def test_one_principal_holds_at_most_its_share_of_the_write_slots() -> None:
    bp = backpressure()
    alice = [object() for _ in range(3)]
    for r in alice[:2]:
        bp.take_slot(r, 4, "mailbox alice", 50)  # type: ignore[arg-type]
    with pytest.raises(Busy, match=r"mailbox alice has 2 write requests .* = 50%"):
        bp.take_slot(alice[2], 4, "mailbox alice", 50)  # type: ignore[arg-type]
    bob = [object() for _ in range(3)]
    for r in bob[:2]:
        bp.take_slot(r, 4, "peer b.test", 50)  # type: ignore[arg-type]
    with pytest.raises(Busy, match="4 write requests in progress, its bound"):
        bp.take_slot(bob[2], 4, "peer c.test", 50)  # type: ignore[arg-type]
    bp.release(alice[0])  # type: ignore[arg-type]
    assert (bp.held_by("mailbox alice"), bp.in_progress) == (1, 3)
    bp.take_slot(alice[2], 4, "mailbox alice", 50)  # type: ignore[arg-type]
    for r in alice + bob:
        bp.release(r)  # type: ignore[arg-type]
    assert (bp.held_by("mailbox alice"), bp.in_progress) == (0, 0)


def test_a_share_is_at_least_one_slot_and_no_bound_means_no_share() -> None:
    bp = backpressure()
    first, second = object(), object()
    bp.take_slot(first, 1, "mailbox alice", 1)  # type: ignore[arg-type]
    with pytest.raises(Busy):
        bp.take_slot(second, 1, "mailbox bob", 1)  # type: ignore[arg-type]
    bp.release(first)  # type: ignore[arg-type]
    for r in [object() for _ in range(50)]:
        bp.take_slot(r, 0, "mailbox alice", 1)  # type: ignore[arg-type]
    assert bp.held_by("mailbox alice") == 50
