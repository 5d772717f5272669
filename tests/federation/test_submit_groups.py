"""Concurrent submits stored by one write job (relay.node.submitgroup).

A live in-process node (n.test, frozen clock): submissions handed over
together share one group job; each keeps its own answer, a duplicate
Idempotency-Key gets the first answer and stores nothing, one that cannot
be stored fails alone, a store failure mid-group stores nothing of the group
and answers each submission from its own write, and quota-checked local
deliveries are stored one by one.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import Any

import pytest

from relay.api.client import SUBMIT_GROUPS
from relay.errors import Busy, StoreError
from relay.logs import LOG_IDS
from relay.node import submit
from relay.node.messages import parse_message
from relay.node.submitgroup import Stored, Submission, SubmitGroups
from relay.storage.interface import WriteTx
from relay.storage.sqlite.store import sqlite_store
from tests.federation.conftest import TIMEOUT, TOKEN, Harness

REMOTE = "carol@a.test"  # pinned without url: its envelopes stay queued


def submission(h: Harness, to: str, text: str, scoped: str | None = None) -> Submission:
    planned = submit.plan(h.state, "alice", parse_message({"to": [to], "text": text}), None)
    return Submission("alice", scoped, {"id": planned.msg_id.hex()}, [planned])


async def stored_ids(h: Harness) -> set[str]:
    rows = await sqlite_store(h.state.store).fetchall("SELECT DISTINCT msg FROM recipients")
    return {bytes(r[0]).hex() for r in rows}


async def outcomes(
    h: Harness, groups: SubmitGroups, subs: list[Submission]
) -> list[dict[str, Any] | BaseException]:
    """Every submission handed over in one go, as concurrent requests would."""
    got = await asyncio.gather(*(groups.write(h.state, s) for s in subs), return_exceptions=True)
    return list(got)


def failing_record(monkeypatch: pytest.MonkeyPatch, failures: int) -> list[int]:
    """Make `submit.record` write its rows and then fail, its first `failures` calls;
    returns the number of messages of each call, as they come."""
    real = submit.record
    calls: list[int] = []

    async def record(state: Any, tx: WriteTx, mailbox: str, planned: Any) -> None:
        calls.append(len(planned))
        await real(state, tx, mailbox, planned)  # rows written, then the store fails
        if len(calls) <= failures:
            raise StoreError("the disk filled up mid-group")

    monkeypatch.setattr(submit, "record", record)
    return calls


async def test_submits_handed_over_together_share_one_job(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    h = harness
    caplog.set_level(logging.INFO, logger="relay.api")
    groups = SubmitGroups()
    subs = [submission(h, REMOTE, f"m{i}") for i in range(5)]
    got = await outcomes(h, groups, subs)
    assert got == [s.answer for s in subs]
    assert groups.groups == 1
    assert await stored_ids(h) == {s.planned[0].msg_id.hex() for s in subs}
    # one line for the group, naming every request's id
    (line,) = [vars(r)["relay_fields"] for r in caplog.records if r.getMessage() == "submitted"]
    ids = ",".join(str(s.answer["id"]) for s in subs)
    assert line == {"mailbox": "alice", "requests": 5, "messages": 5, "ids": ids}
    # the next submit starts a group of its own
    late = submission(h, REMOTE, "late")
    assert await groups.write(h.state, late) == late.answer
    assert groups.groups == 2


async def test_a_large_group_logs_lines_of_at_most_log_ids_ids(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    h = harness
    caplog.set_level(logging.INFO, logger="relay.api")
    subs = [submission(h, REMOTE, f"m{i}") for i in range(LOG_IDS * 2 + 5)]
    many = submit.plan(h.state, "alice", parse_message({"to": [REMOTE], "text": "x"}), None)
    big = [dataclasses.replace(many, msg_id=bytes([i]) * 16) for i in range(LOG_IDS + 3)]
    stored = Stored(fresh={"alice": [*subs[:3], Submission("alice", None, {}, big), *subs[3:]]})
    stored.counted(h.state)
    lines = [vars(r)["relay_fields"] for r in caplog.records if r.getMessage() == "submitted"]
    named = [i for line in lines for i in line["ids"].split(",")]
    assert all(len(line["ids"].split(",")) <= LOG_IDS for line in lines), lines
    # every request named, its first LOG_IDS ids, in order; the rest counted
    expected = [s.answer["id"] for s in subs[:3]] + [pm.msg_id.hex() for pm in big[:LOG_IDS]]
    assert named == expected + [s.answer["id"] for s in subs[3:]]
    assert sum(line.get("ids_more", 0) for line in lines) == 3
    assert sum(line["requests"] for line in lines) == len(subs) + 1
    assert [line["requests"] for line in lines] == [3, 1, 20, 20, 2]


async def test_a_duplicate_key_in_the_group_gets_the_first_answer(harness: Harness) -> None:
    h = harness
    groups = SubmitGroups()
    first = submission(h, REMOTE, "once", scoped="k1\nmessage:digest")
    again = submission(h, REMOTE, "once", scoped="k1\nmessage:digest")  # a retry, new ids
    other = submission(h, REMOTE, "other", scoped="k2\nmessage:digest")
    got = await outcomes(h, groups, [first, again, other])
    assert got == [first.answer, first.answer, other.answer]
    assert groups.groups == 1
    assert await stored_ids(h) == {first.answer["id"], other.answer["id"]}


async def test_a_submission_that_cannot_be_stored_fails_alone(harness: Harness) -> None:
    h = harness
    groups = SubmitGroups()
    good = submission(h, REMOTE, "good")
    bad = dataclasses.replace(good, answer={"id": "the same envelopes again"})
    after = submission(h, REMOTE, "after")
    got = await outcomes(h, groups, [good, bad, after])
    # the group's insert met the duplicate envelope and rolled back; each was stored alone
    assert got[0] == good.answer and got[2] == after.answer
    assert isinstance(got[1], StoreError) and "UNIQUE" in got[1].detail, got[1]
    assert await stored_ids(h) == {good.answer["id"], after.answer["id"]}


async def test_a_store_failure_mid_group_stores_nothing_and_each_is_written_again(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = harness
    groups = SubmitGroups()
    calls = failing_record(monkeypatch, failures=1)
    subs = [submission(h, REMOTE, f"m{i}") for i in range(3)]
    got = await outcomes(h, groups, subs)
    assert got == [s.answer for s in subs]
    assert calls == [3, 1, 1, 1]  # the group, then each submission alone
    assert await stored_ids(h) == {s.answer["id"] for s in subs}
    rows = await sqlite_store(h.state.store).fetchall("SELECT count(*) FROM recipients")
    assert rows[0][0] == 3  # stored once each: the failed group left nothing


async def test_a_commit_of_unknown_outcome_answers_everyone_with_its_error(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = harness
    groups = SubmitGroups()
    real = h.state.store.write
    lost = StoreError("the connection was lost during COMMIT, so whether it committed is unknown")

    async def write(job: Any, *, admit: bool = False) -> Any:
        await real(job, admit=admit)  # committed, but the store cannot know it
        raise lost

    monkeypatch.setattr(h.state.store, "write", write)
    subs = [submission(h, REMOTE, f"m{i}") for i in range(3)]
    got = await outcomes(h, groups, subs)
    # not written again alone (that would meet its own envelopes and say nothing was stored)
    assert got == [lost, lost, lost]
    assert groups.groups == 1
    assert await stored_ids(h) == {s.answer["id"] for s in subs}


async def test_when_the_store_keeps_failing_nobody_is_answered_and_nothing_is_stored(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = harness
    groups = SubmitGroups()
    failing_record(monkeypatch, failures=1000)
    got = await outcomes(h, groups, [submission(h, REMOTE, f"m{i}") for i in range(3)])
    assert all(isinstance(g, StoreError) for g in got), got
    assert await stored_ids(h) == set()


async def test_a_group_cancelled_before_it_starts_strands_nobody(harness: Harness) -> None:
    h = harness
    groups = SubmitGroups()
    first = asyncio.create_task(groups.write(h.state, submission(h, REMOTE, "first")))
    await asyncio.sleep(0)  # `first` opened a group; its task has not taken a step
    (task,) = groups._tasks  # the group task, to cancel it early
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(first, TIMEOUT.total)  # its submitter is not left waiting
    late = submission(h, REMOTE, "late")  # nor is a later one: it opens a new group
    assert await asyncio.wait_for(groups.write(h.state, late), TIMEOUT.total) == late.answer
    assert await stored_ids(h) == {late.answer["id"]}


async def test_quota_checked_local_deliveries_are_stored_one_by_one(harness: Harness) -> None:
    h = harness
    config = h.state.config
    limits = dataclasses.replace(config.limits, mailbox_unread_bytes=200)
    h.state.config = dataclasses.replace(config, limits=limits)
    groups = SubmitGroups()
    subs = [submission(h, "bob@n.test", "x" * 100) for _ in range(3)]
    got = await outcomes(h, groups, subs)
    # the first finds bob's mailbox empty and is taken; the next would pass the quota
    assert got[0] == subs[0].answer
    assert all(isinstance(g, Busy) for g in got[1:]), got
    assert groups.groups == 0
    assert await stored_ids(h) == {subs[0].answer["id"]}


async def test_a_quota_set_by_a_reload_after_grouping_is_checked_one_by_one(
    harness: Harness,
) -> None:
    h = harness
    groups = SubmitGroups()
    subs = [submission(h, "bob@n.test", "x" * 100) for _ in range(3)]
    config = h.state.config
    unlimited = dataclasses.replace(config.limits, mailbox_unread_bytes=0)
    h.state.config = dataclasses.replace(config, limits=unlimited)
    writes = [asyncio.create_task(groups.write(h.state, s)) for s in subs]
    await asyncio.sleep(0)  # all three handed over to one group while no quota is set
    limits = dataclasses.replace(config.limits, mailbox_unread_bytes=200)
    h.state.config = dataclasses.replace(config, limits=limits)  # the reload
    got = await asyncio.gather(*writes, return_exceptions=True)
    assert groups.groups == 1  # the group's job ran, found them, and left them alone
    assert got[0] == subs[0].answer
    assert all(isinstance(g, Busy) for g in got[1:]), got
    assert await stored_ids(h) == {subs[0].answer["id"]}


async def test_concurrent_http_submits_are_each_answered_with_their_own_id(
    harness: Harness,
) -> None:
    h = harness

    async def post(i: int) -> str:
        async with h.session.post(
            h.url + "/v1/messages",
            json={"to": [REMOTE], "text": f"m{i % 10}"},
            headers={"Authorization": f"Bearer {TOKEN}", "Idempotency-Key": f"key-{i % 10}"},
            timeout=TIMEOUT,
        ) as resp:
            doc = await resp.json()
            assert resp.status == 202, doc
            return str(doc["id"])

    assert h.node.listener is not None
    groups = h.node.listener.runner.app[SUBMIT_GROUPS]
    ids = await asyncio.gather(*(post(i) for i in range(20)))  # each request sent twice
    assert groups.groups < 20, groups.groups  # some were stored together
    assert ids[:10] == ids[10:]  # a retry gets the first answer, in a group or not
    assert len(set(ids)) == 10
    assert await stored_ids(h) == set(ids)
    again = await asyncio.gather(*(post(i) for i in range(20)))  # the same requests again
    assert again == ids
    assert await stored_ids(h) == set(ids)
