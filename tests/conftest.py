"""Fixtures for every test directory: a PostgreSQL schema per test (tests/pgserver.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests import pgserver


def pytest_report_header(config: pytest.Config) -> str:
    url, how = pgserver.server()
    if url is None:
        verdict = "FAIL" if pgserver.required() else "are SKIPPED"
        return f"postgresql: NONE: {how}; the PostgreSQL tests {verdict}"
    return f"postgresql: {url} ({how})"


def require_postgres() -> None:
    """Skip (fail under RELAY_REQUIRE_POSTGRES) when no test server can be had."""
    url, how = pgserver.server()
    if url is None:
        message = f"no PostgreSQL server for the tests: {how}"
        if pgserver.required():
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A storage URL naming this test's own schema, dropped after it."""
    require_postgres()
    with pgserver.schema_url() as url:
        yield url
