"""The storage contract's fixtures: one `storage` per backend in BACKENDS."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from relay.storage.backends import BACKENDS, Target, open_storage
from relay.storage.interface import Storage


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def target(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Target:
    """Where this test's storage lives: a file, or its own PostgreSQL schema."""
    if backend == "postgresql":
        url: str = request.getfixturevalue("pg_url")
        return url
    return tmp_path / "relay.db"


@pytest.fixture
async def storage(target: Target) -> AsyncIterator[Storage]:
    s = await open_storage(target)
    try:
        yield s
    finally:
        await s.close()
