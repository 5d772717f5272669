"""What only the PostgreSQL backend has: URLs, several stores on one schema,
migrations applied once, NUL in text, reconnecting, and a missing database.

The interface itself is tested on both backends by the contract tests.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest

from relay.errors import BadRequest, StoreError
from relay.storage.backends import backend_of, open_readonly_storage, open_storage
from relay.storage.interface import NoDatabase, Storage, WriteTx
from relay.storage.postgres.connect import application_name
from relay.storage.postgres.schema import MIGRATIONS, SCHEMA_VERSION
from relay.storage.postgres.store import PgStore
from relay.storage.postgres.url import parse_url
from tests.storage.contract import (
    PRE_EVIDENCE_HEADS,
    T0,
    envelope,
    new,
    pre_evidence_heads_stay,
    put,
)


def test_urls_name_backend_schema_and_hide_the_password() -> None:
    assert backend_of("postgresql://relay@db/relay") == "postgresql"
    assert backend_of("postgres://relay@db/relay") == "postgresql"
    assert backend_of("relay.db") == "sqlite"
    t = parse_url("postgresql://relay:s3cret@db.example:5433/relay?schema=msk&sslmode=require")
    assert t.schema == "msk"
    assert t.conninfo == "postgresql://relay:s3cret@db.example:5433/relay?sslmode=require"
    assert t.display == "postgresql://relay@db.example:5433/relay?schema=msk&sslmode=require"
    assert parse_url("postgresql://db/relay").schema == "public"


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("postgresql://db", "name the database"),
        ("postgresql://db/relay?schema=Bad-Name", "schema 'Bad-Name'"),
        ("postgresql://db/relay?schema=a&schema=b", "given 2 times"),
        ("mysql://db/relay", "starts with postgresql://"),
    ],
)
def test_bad_urls_are_refused_naming_what_is_wrong(url: str, says: str) -> None:
    with pytest.raises(StoreError, match=says):
        parse_url(url)


async def test_a_missing_database_is_named(pg_url: str) -> None:
    url = urlsplit(pg_url)._replace(path="/relay_no_such_db").geturl()
    with pytest.raises(NoDatabase, match="relay_no_such_db") as err:
        await open_storage(url)
    assert err.value.status == 503
    with pytest.raises(NoDatabase, match=r"127\.0\.0\.1:1/"):
        await open_storage("postgresql://127.0.0.1:1/relay?connect_timeout=2")


@pytest.mark.parametrize("encoding", ["SQL_ASCII", "LATIN1"])
async def test_a_database_not_in_utf8_is_refused_naming_it(pg_url: str, encoding: str) -> None:
    # SQL_ASCII stores any bytes unchecked; LATIN1 refuses text it cannot hold
    # only when a message carries it: either way relay's UTF-8 text is not safe
    name = f"relay_{encoding.lower()}_{uuid.uuid4().hex[:8]}"
    admin = pg_url.split("?")[0]
    with psycopg.connect(admin, autocommit=True) as db:
        db.execute(
            f"CREATE DATABASE {name} ENCODING '{encoding}' LC_COLLATE 'C' LC_CTYPE 'C'"
            " TEMPLATE template0"
        )
    try:
        url = urlsplit(pg_url)._replace(path=f"/{name}").geturl()
        with pytest.raises(StoreError) as err:
            await open_storage(url)
        assert f"database {name} has encoding {encoding}" in err.value.detail
        assert "ENCODING 'UTF8'" in err.value.detail
        with psycopg.connect(urlsplit(admin)._replace(path=f"/{name}").geturl()) as db:
            schemas = db.execute("SELECT nspname FROM pg_namespace WHERE nspname LIKE 't_%'")
            assert schemas.fetchall() == []  # nothing was created there
    finally:
        with psycopg.connect(admin, autocommit=True) as db:
            db.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


async def test_workers_starting_together_migrate_once(pg_url: str) -> None:
    stores = await asyncio.gather(*(open_storage(pg_url) for _ in range(4)))
    try:
        with psycopg.connect(pg_url.split("?")[0]) as db:
            schema = parse_url(pg_url).schema
            versions = db.execute(f'SELECT version FROM "{schema}".schema_version').fetchall()
        assert sorted(v for (v,) in versions) == list(range(1, SCHEMA_VERSION + 1))
        # every worker writes to the same tables; rids stay unique and in commit order
        rids = await asyncio.gather(*(put(s, [new(envelope(), hop="b.test")]) for s in stores))
        assert len({r for (r,) in rids}) == 4
        assert await stores[0].queue_length() == 4
    finally:
        for s in stores:
            await s.close()


def _schema_at(pg_url: str, version: int) -> psycopg.Connection[tuple[Any, ...]]:
    """A connection (autocommit) to this test's schema, migrated by hand up to `version`."""
    schema = parse_url(pg_url).schema
    db = psycopg.connect(pg_url.split("?")[0], autocommit=True)
    db.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
    db.execute(f'SET search_path TO "{schema}"')
    db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    for v in range(1, version + 1):
        db.execute(MIGRATIONS[v])
        db.execute("INSERT INTO schema_version (version) VALUES (%s)", (v,))
    return db


async def test_no_head_witnessed_before_migration_12_is_pruned(pg_url: str) -> None:
    """A schema at version 11 did not record which heads conflicted or shrank:
    migration 12 keeps every head it had as evidence (docs/audit.md)."""
    with _schema_at(pg_url, 11) as db:
        db.cursor().executemany(
            "INSERT INTO audit_witnessed (peer, size, at, head, seen, proof_from, proof)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s)",
            [
                (p, size, at, head, at, f, proof)
                for p, size, at, head, f, proof in PRE_EVIDENCE_HEADS
            ],
        )
    store = await open_storage(pg_url)
    try:
        await pre_evidence_heads_stay(store)
    finally:
        await store.close()


async def test_announcements_reach_the_other_workers_once(pg_url: str) -> None:
    a = await open_storage(pg_url)
    b = await open_storage(pg_url)
    try:
        heard_a: list[tuple[str, str]] = []
        heard_b: list[tuple[str, str]] = []
        arrived = asyncio.Event()

        def on_b(items: Sequence[tuple[str, str]]) -> None:
            heard_b.extend(items)
            arrived.set()

        a.on_announce(heard_a.extend)
        b.on_announce(on_b)
        assert isinstance(b, PgStore)
        await asyncio.wait_for(b.listener.listening.wait(), 30)

        async def fails(tx: WriteTx) -> None:
            tx.announce("hop", "lost.test")
            raise BadRequest("rolled back")

        async def job(tx: WriteTx) -> None:
            tx.announce("hop", "b.test")
            tx.announce("inbox", "bob")
            tx.announce("hop", "b.test")

        with pytest.raises(BadRequest):
            await a.write(fails)
        await a.write(job)
        await asyncio.wait_for(arrived.wait(), 30)
        assert heard_a == [("hop", "b.test"), ("inbox", "bob")]
        assert heard_b == [("hop", "b.test"), ("inbox", "bob")]
    finally:
        await a.close()
        await b.close()


async def test_text_holding_nul_is_refused_with_400(storage_pg: Storage) -> None:
    with pytest.raises(BadRequest, match="NUL") as err:
        await storage_pg.write(lambda tx: tx.record_nonce("p.test", "bad\x00nonce", T0))
    assert err.value.status == 400
    assert not await storage_pg.nonce_seen("p.test", "bad")
    # the writer goes on, untroubled
    assert await storage_pg.write(lambda tx: tx.record_nonce("p.test", "good", T0))
    assert storage_pg.trouble is None


async def test_a_lost_connection_fails_writes_then_reconnects(storage_pg: Storage) -> None:
    assert isinstance(storage_pg, PgStore)
    await storage_pg.write(lambda tx: tx.record_nonce("p.test", "before", T0))
    # end every connection of this store (its schema is this test's own) from the
    # server side, as a restart does
    with psycopg.connect(storage_pg.target.conninfo, autocommit=True) as admin:
        ended = admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
            (application_name(storage_pg.target),),
        ).fetchall()
    assert len(ended) >= 2  # writer and reader (and the listener)
    with pytest.raises(StoreError):
        await storage_pg.write(lambda tx: tx.record_nonce("p.test", "lost", T0))
    assert storage_pg.trouble is not None
    # the next write connects again; nothing of the failed one was stored
    assert await storage_pg.write(lambda tx: tx.record_nonce("p.test", "after", T0))
    assert storage_pg.trouble is None
    with pytest.raises(StoreError):
        await storage_pg.nonce_seen("p.test", "x")  # the reader's connection was ended too
    assert await storage_pg.nonce_seen("p.test", "after")
    assert not await storage_pg.nonce_seen("p.test", "lost")


async def test_a_readonly_open_of_an_empty_schema_says_so(pg_url: str) -> None:
    with pytest.raises(StoreError, match="no relay tables"):
        await open_readonly_storage(pg_url)


@pytest.fixture
async def storage_pg(pg_url: str) -> AsyncIterator[Storage]:
    s = await open_storage(pg_url)
    try:
        yield s
    finally:
        await s.close()


async def test_envelopes_keep_their_rows_keyed_id_first(pg_url: str) -> None:
    """A schema at version 7 keeps its envelopes through migration 8, which keys
    the table (id, origin) and drops the index on id alone."""
    schema = parse_url(pg_url).schema
    with _schema_at(pg_url, 7) as db:
        db.execute(
            "INSERT INTO envelopes (rid, origin, id, hdigest, header, signature, trace, kind,"
            " sender, dest, created, expires, received, size, residency)"
            " VALUES (5, 'o.test', %s, 'd', 'h', 's', 't', 'message', 's@x', 'here.test',"
            " 1, 2, 3, 4, 'DE')",
            (b"\x01" * 16,),
        )
    storage = await open_storage(pg_url)
    try:
        with psycopg.connect(pg_url.split("?")[0]) as db:
            indexes: dict[str, str] = dict(
                db.execute(
                    "SELECT indexname, indexdef FROM pg_indexes"
                    " WHERE schemaname = %s AND tablename = 'envelopes'",
                    (schema,),
                ).fetchall()
            )
            kept = db.execute(f'SELECT rid, origin, id FROM "{schema}".envelopes').fetchall()
        assert kept == [(5, "o.test", b"\x01" * 16)]
        assert "envelopes_id" not in indexes
        assert "UNIQUE" in indexes["envelopes_id_origin_key"]
        assert indexes["envelopes_id_origin_key"].endswith("(id, origin)")
        ours = envelope(ident=b"\x02" * 16)
        assert len(await put(storage, [new(ours, mailboxes=("alice",))])) == 1
        with pytest.raises(StoreError, match="envelopes_id_origin_key"):  # still unique
            await put(storage, [new(ours, mailboxes=("alice",))])
    finally:
        await storage.close()
