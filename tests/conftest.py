"""Fixtures for every test directory: a PostgreSQL schema per test (tests/pgserver.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests import pgserver

# Modules whose tests run longest (streams of 1,500 messages under SIGKILLs,
# database restarts, partitions, floods, a fixed-time fuzzer), longest first.
# Their tests start first: with several workers (scripts/check runs two,
# --dist worksteal) a long test begun last keeps one worker busy while the
# others have nothing left, and short tests fill the gaps at the end instead.
LONG_FIRST = (
    "tests/e2e/test_workers_pg.py",
    "tests/fault/test_crash.py",
    "tests/fault/test_pg_restart.py",
    "tests/fault/test_partition.py",
    "tests/e2e/test_backpressure.py",
    "tests/fault/test_pg_restart_workers.py",
    "tests/fault/test_audit_crash.py",
    "tests/fuzz/test_atheris.py",
    "tests/fault/test_lifetime.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Put the tests of LONG_FIRST's modules first, in its order; the rest keep theirs."""
    rank = {module: i for i, module in enumerate(LONG_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.partition("::")[0], len(rank)))


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
