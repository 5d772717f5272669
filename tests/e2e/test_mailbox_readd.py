"""A mailbox removed and added again never hands its mail to the new owner (issue 10).

The inbox is keyed by mailbox name. `relay mailbox remove` refuses while the
inbox holds unread mail; mail that still arrives before the node reloads
blocks `relay mailbox add` of the same name unless the admin says --inherit.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import NodeProc, make_node, relay, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture
def node(tmp_path: Path) -> Iterator[NodeProc]:
    n = make_node(tmp_path, "n.test", "DE")
    n.add_mailbox("alice")
    n.add_mailbox("bob")
    n.start()
    yield n
    n.kill()


def _reload(n: NodeProc) -> None:
    before = n.logs().count(" reloaded ")
    assert n.proc is not None
    n.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: n.logs().count(" reloaded ") > before, what="a reload")


def test_remove_refuses_unread_mail_and_readd_does_not_inherit_it(
    node: NodeProc, monkeypatch: pytest.MonkeyPatch
) -> None:
    toml = node.dir / "node.toml"
    first = node.send("bob", ["alice@n.test"], "for the first alice")
    config = toml.read_text()
    refused = relay("mailbox", "remove", node.dir, "alice", check=False)
    assert refused.returncode == 1
    assert refused.stderr == (
        "relay: mailbox 'alice' has 1 unread message(s); read and acknowledge them first"
        " (relay inbox --ack; `relay mailbox rotate` gives a new token)\n"
    )
    assert toml.read_text() == config

    assert [m["id"] for m in node.inbox("alice", ack=True)] == [first]
    # `mailbox remove` reloads the running node; here the reload fails (a wrong
    # admin token), so the node still has alice: mail that arrives meanwhile is
    # accepted, as it is between the unread check and a reload that succeeds.
    with monkeypatch.context() as m:
        m.setenv("RELAY_ADMIN_TOKEN", "rly_wrong")
        removed = relay("mailbox", "remove", node.dir, "alice", check=False)
    assert removed.returncode == 1
    assert "the running node could not be asked to reload" in removed.stderr
    assert "the change is saved in node.toml but not in effect" in removed.stderr
    late = node.send("bob", ["alice@n.test"], "arrives after the removal")
    config = toml.read_text()
    refused = relay("mailbox", "add", node.dir, "alice", check=False)
    assert refused.returncode == 1
    assert refused.stdout == ""
    assert refused.stderr == (
        "relay: a removed mailbox 'alice' left 1 unread message(s) in the store;"
        " give --inherit to hand them to the new mailbox, or choose another name\n"
    )
    assert toml.read_text() == config

    node.add_mailbox("carol")  # another name is fine
    _reload(node)
    assert node.inbox("carol") == []

    added = relay("mailbox", "add", node.dir, "alice", "--inherit")
    node.tokens["alice"] = added.stdout.splitlines()[-1]
    _reload(node)
    assert [m["id"] for m in node.inbox("alice")] == [late]


def test_readd_does_not_hand_over_what_the_old_holder_sent(node: NodeProc) -> None:
    """Statuses (and erasure) of sent messages answer to the name: no silent handover."""
    sent = node.send("alice", ["bob@n.test"], "from the first alice")
    assert [m["id"] for m in node.inbox("bob", ack=True)] == [sent]
    relay("mailbox", "remove", node.dir, "alice")  # nothing unread: allowed, and reloaded
    toml = node.dir / "node.toml"
    config = toml.read_text()
    refused = relay("mailbox", "add", node.dir, "alice", check=False)
    assert refused.returncode == 1
    assert refused.stderr == (
        "relay: a removed mailbox 'alice' left 1 sent message(s) whose status and erasure"
        " answer to the name in the store; give --inherit to hand them to the new mailbox,"
        " or choose another name\n"
    )
    assert toml.read_text() == config

    added = relay("mailbox", "add", node.dir, "alice", "--inherit")
    node.tokens["alice"] = added.stdout.splitlines()[-1]
    wait_for(lambda: _answers(node, "alice"), what="the reloaded node to know alice")
    assert node.status("alice", sent)["recipients"]["bob@n.test"]["status"] == "delivered"


def _answers(n: NodeProc, mailbox: str) -> bool:
    done = relay("inbox", "--node", n.url, "--token", n.tokens[mailbox], check=False)
    return done.returncode == 0
