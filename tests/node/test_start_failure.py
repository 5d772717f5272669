"""relay.node.app.run_node: a node that cannot start closes what it opened (issue 10)."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest

from relay.errors import Unavailable
from relay.node.app import run_node
from relay.storage.sqlite.backup import connect_read_only
from tests.inprocess import write_node


async def test_taken_port_raises_and_leaves_no_thread_or_open_store(tmp_path: Path) -> None:
    write_node(tmp_path, "n.test")
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        toml = tmp_path / "node.toml"
        toml.write_text(toml.read_text().replace("127.0.0.1:0", f"127.0.0.1:{port}"))
        before = set(threading.enumerate())
        with pytest.raises(Unavailable, match=f"cannot listen on 127.0.0.1:{port} "):
            await run_node(tmp_path)
    assert set(threading.enumerate()) - before == set()  # the store's thread was joined
    db = connect_read_only(tmp_path / "relay.db")  # the store was created, then closed
    try:
        assert db.execute("PRAGMA quick_check").fetchone() == ("ok",)
    finally:
        db.close()
