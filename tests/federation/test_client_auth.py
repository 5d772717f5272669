"""Client API bearer tokens (relay.api.client.authenticate) against the live config.

A live in-process node (n.test): a mailbox's token is let in, any other is
401 `unauthorized`, and a config that drops a mailbox or changes its token
(a reload) refuses the old token from the next request on.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from relay.config.model import Mailbox
from relay.config.values import mailbox_token_sha256
from tests.federation.conftest import TIMEOUT, TOKEN, Harness


async def inbox(h: Harness, token: str) -> tuple[int, Any]:
    async with h.session.get(
        h.url + "/v1/inbox", headers={"Authorization": f"Bearer {token}"}, timeout=TIMEOUT
    ) as resp:
        return resp.status, await resp.json()


def use_mailboxes(h: Harness, *mailboxes: Mailbox) -> None:
    h.state.config = dataclasses.replace(h.state.config, mailboxes=mailboxes)


async def test_each_mailbox_token_is_let_in_and_no_other(harness: Harness) -> None:
    h = harness
    assert (await inbox(h, "bob-token"))[0] == 200
    assert (await inbox(h, TOKEN))[0] == 200
    status, doc = await inbox(h, "carol-token")
    assert status == 401 and doc["error"] == "unauthorized", doc
    assert "does not belong to any mailbox" in doc["detail"]


async def test_a_new_config_revokes_and_grants_from_the_next_request(harness: Harness) -> None:
    h = harness
    assert (await inbox(h, "bob-token"))[0] == 200  # bob's token is known before the change
    bob = next(m for m in h.state.config.mailboxes if m.name == "bob")
    alice = next(m for m in h.state.config.mailboxes if m.name == "alice")
    use_mailboxes(h, alice)  # bob removed
    assert (await inbox(h, "bob-token"))[0] == 401
    assert (await inbox(h, TOKEN))[0] == 200
    use_mailboxes(h, alice, dataclasses.replace(bob, token_sha256=mailbox_token_sha256("new")))
    assert (await inbox(h, "bob-token"))[0] == 401  # the old token no longer opens bob
    assert (await inbox(h, "new"))[0] == 200
