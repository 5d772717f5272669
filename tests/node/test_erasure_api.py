"""Erasure through the client API on a live in-process node (fast tier): who may erase,
what the inbox shows after, and the webhook's `message.erased`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp

from tests.inprocess import TIMEOUT, send, start_node, token, url_of
from tests.node.test_webhooks import Receiver, inbox, receiver, wait_until, write_hooked_node

__all__ = ["receiver"]  # the fixture, used by name


async def delete(
    session: aiohttp.ClientSession, url: str, msg: str, mailbox: str
) -> tuple[int, dict[str, Any]]:
    async with session.delete(
        f"{url}/v1/messages/{msg}",
        headers={"Authorization": f"Bearer {token(mailbox)}"},
        timeout=TIMEOUT,
    ) as resp:
        return resp.status, await resp.json()


async def test_only_the_sender_erases_and_the_webhook_is_told(
    tmp_path: Path, receiver: Receiver
) -> None:
    receiver.script = []  # the receiver answers 200 at once
    write_hooked_node(tmp_path, receiver)
    node = await start_node(tmp_path)
    try:
        async with aiohttp.ClientSession() as session:
            status, doc = await send(session, node, ["alice@n.test", "carol@n.test"], "forget me")
            assert status == 202
            msg = doc["id"]
            await wait_until(lambda: _async(bool(receiver.to("/hooks/alice"))), "the delivery")

            assert await delete(session, url_of(node), msg, "carol") == (
                403,
                {
                    "error": "forbidden",
                    "detail": f"message {msg} was not sent by carol; only its sender erases it",
                },
            )
            unknown = "0" * 32
            code, err = await delete(session, url_of(node), unknown, "alice")
            assert (code, err["error"]) == (404, "not_found")
            code, err = await delete(session, url_of(node), "XYZ", "alice")
            assert (code, err["error"]) == (400, "bad_request")
            assert [m.get("text") for m in await inbox(session, node, "carol")] == ["forget me"]

            code, done = await delete(session, url_of(node), msg, "alice")
            assert code == 200
            (rec,) = done["erased"]
            assert (rec["id"], rec["status"], rec["source"], rec["actor"], rec["hop"]) == (
                msg,
                "erased",
                "mailbox",
                "alice",
                None,
            )
            assert done["unknown"] == [] and "checkpoint" in done["scrub"]

            # carol's unread copy became a tombstone; the webhook of alice gets one too
            (item,) = await inbox(session, node, "carol")
            assert (item["id"], item["event"], item["erased"]) == (msg, "message.erased", rec["at"])
            assert "body_b64" not in item and "text" not in item

            async def told() -> list[dict[str, Any]]:
                bodies = [json.loads(r.body) for r in receiver.to("/hooks/alice")]
                return [b for b in bodies if b.get("event") == "message.erased"]

            (hook,) = await wait_until(told, "message.erased at the webhook")
            assert (hook["id"], hook["erased"]) == (msg, rec["at"])
            # a second erasure answers with the first record and tells nobody again
            code, again = await delete(session, url_of(node), msg, "alice")
            assert code == 200 and again["erased"][0]["at"] == rec["at"]
            assert again["scrub"] == "nothing erased now"
    finally:
        await node.stop()


async def _async(value: bool) -> bool:
    return value
