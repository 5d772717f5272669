"""The storage contract's fixtures: one `storage` per backend in BACKENDS."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from relay.storage.backends import BACKENDS, open_storage
from relay.storage.interface import Storage


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
async def storage(backend: str, tmp_path: Path) -> AsyncIterator[Storage]:
    s = await open_storage(tmp_path / "relay.db", backend=backend)
    try:
        yield s
    finally:
        await s.close()
