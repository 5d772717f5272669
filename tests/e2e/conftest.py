"""End-to-end fixtures: where a test's nodes keep their state, and two nodes that
trust each other."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from relay.storage.backends import BACKENDS
from tests import pgserver
from tests.conftest import require_postgres
from tests.e2e.harness import NodeProc, make_pair

NodeStorage = Callable[[], str | None]


@pytest.fixture(params=BACKENDS)
def node_storage(request: pytest.FixtureRequest) -> Iterator[NodeStorage]:
    """Gives each node of a test its storage: None (the SQLite file in its directory)
    or, on PostgreSQL, a url naming a schema of its own, dropped after the test."""
    if request.param == "sqlite":
        yield lambda: None
        return
    require_postgres()
    with contextlib.ExitStack() as stack:
        yield lambda: stack.enter_context(pgserver.schema_url())


@pytest.fixture
def pair(tmp_path: Path, node_storage: NodeStorage) -> Iterator[tuple[NodeProc, NodeProc]]:
    """Two nodes that trust each other, on each storage backend in turn."""
    a, b = make_pair(tmp_path, node_storage(), node_storage())
    yield a, b
    for n in (a, b):
        n.kill()
