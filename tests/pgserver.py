"""A PostgreSQL server for the tests, found or started once per test run.

In order: RELAY_TEST_POSTGRES_URL; else a server at 127.0.0.1:5432 with a
database `test` and trust auth (this project's machines run one); else a
throwaway cluster made with the PostgreSQL binaries if they are installed
(initdb in a temporary directory, a free port on 127.0.0.1, stopped and
removed at exit). If none works, `server_url()` is None and the PostgreSQL
tests skip, with one loud line in the test report's header
(tests/conftest.py); with RELAY_REQUIRE_POSTGRES=1 (.ci/run) they fail.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import psycopg

ENV_URL = "RELAY_TEST_POSTGRES_URL"
ENV_REQUIRE = "RELAY_REQUIRE_POSTGRES"
# with a user: node.toml's [storage] url must name one (relay.config.storage)
LOCAL_URLS = ("postgresql://postgres@127.0.0.1:5432/test", "postgresql://127.0.0.1:5432/test")


@functools.cache
def server() -> tuple[str | None, str]:
    """(URL of a usable server or None, how it was found or why there is none)."""
    if env := os.environ.get(ENV_URL):
        problem = _problem(env)
        if problem is None:
            return env, f"{ENV_URL}"
        return None, f"{ENV_URL} is set but {problem}"
    for url in LOCAL_URLS:
        if _problem(url) is None:
            return url, "the server at 127.0.0.1:5432"
    started, why = _throwaway()
    if started is not None:
        return started, "a throwaway cluster started for this run"
    return None, f"no server at 127.0.0.1:5432 with database test, and {why}"


def server_url() -> str | None:
    """The URL of the test server, None if there is none."""
    return server()[0]


def required() -> bool:
    """True where a missing server is a failure, not a skip (CI)."""
    return os.environ.get(ENV_REQUIRE, "") not in ("", "0")


def _problem(url: str) -> str | None:
    try:
        with psycopg.connect(url, connect_timeout=3, autocommit=True) as db:
            db.execute("SELECT 1")
    except psycopg.Error as e:
        return f"cannot connect to it: {str(e).strip().splitlines()[0] if str(e) else e}"
    return None


@contextlib.contextmanager
def schema_url() -> Iterator[str]:
    """A URL naming a fresh schema on the test server, dropped afterwards."""
    url = server_url()
    if url is None:
        raise RuntimeError("no PostgreSQL server for the tests")
    schema = f"t_{uuid.uuid4().hex[:16]}"
    sep = "&" if "?" in url else "?"
    try:
        yield f"{url}{sep}schema={schema}"
    finally:
        drop_schema(url, schema)


def drop_schema(url: str, schema: str) -> None:
    """Drop `schema` and everything in it."""
    with psycopg.connect(url, autocommit=True) as db:
        db.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def _bin_dir() -> Path | None:
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    for d in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if (Path(d) / "initdb").exists():
            return Path(d)
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _throwaway() -> tuple[str | None, str]:
    """Start a cluster in a temporary directory; (URL, "") or (None, why not)."""
    bindir = _bin_dir()
    if bindir is None:
        return None, "no PostgreSQL binaries (initdb) are installed"
    base = Path(tempfile.mkdtemp(prefix="relay-pg-"))
    data = base / "data"
    # initdb refuses to run as root: run the cluster as the postgres user there
    as_user: list[str] = []
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            return None, "running as root without runuser to start a cluster as postgres"
        as_user = ["runuser", "-u", "postgres", "--"]
        shutil.chown(base, "postgres")
    port = _free_port()
    log = base / "log"
    try:
        subprocess.run(
            # UTF8 whatever the locale (relay refuses a SQL_ASCII database, initdb's
            # default under the C locale)
            [
                *as_user,
                str(bindir / "initdb"),
                "-D",
                str(data),
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--locale",
                "C",
            ],
            check=True,
            capture_output=True,
        )
        opts = f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off"
        pg_ctl = [*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log)]
        subprocess.run(
            [*pg_ctl, "-o", opts, "-w", "start"],
            check=True,
            capture_output=True,
        )
    except (OSError, subprocess.CalledProcessError) as e:
        shutil.rmtree(base, ignore_errors=True)
        return None, f"starting a throwaway cluster failed: {e}"

    def stop() -> None:
        subprocess.run(
            [*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
            check=False,
            capture_output=True,
        )
        shutil.rmtree(base, ignore_errors=True)

    atexit.register(stop)
    url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
    problem = _problem(url)
    if problem is not None:
        return None, f"the throwaway cluster does not answer: {problem}"
    return url, ""


# Tables a running node changes by itself (lease renewals every few seconds, a
# signed tree head every minute), left out of row counts that tests compare
# before and after an attack.
COORDINATION_TABLES = ("leases", "audit_heads")


def row_counts(url: str) -> dict[str, int]:
    """Rows of every table but COORDINATION_TABLES in the schema `url` names (tests
    compare before and after)."""
    schema = dict(parse_qsl(urlsplit(url).query)).get("schema", "public")
    base = urlsplit(url)._replace(query="").geturl()
    with psycopg.connect(base, autocommit=True) as db:
        names = [
            str(r[0])
            for r in db.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = %s ORDER BY 1", (schema,)
            )
        ]
        counts: dict[str, int] = {}
        for n in names:
            if n in COORDINATION_TABLES:
                continue
            row = db.execute(f'SELECT count(*) FROM "{schema}"."{n}"').fetchone()
            counts[n] = int(row[0]) if row else 0
        return counts


def tables_holding(url: str, needle: bytes) -> list[str]:
    """Tables of the schema `url` names with a live row whose text form holds `needle`,
    as text or as a bytea column shows it (hex): what a payload column would hold."""
    schema = dict(parse_qsl(urlsplit(url).query)).get("schema", "public")
    base = urlsplit(url)._replace(query="").geturl()
    as_text = needle.decode("utf-8", errors="replace")
    with psycopg.connect(base, autocommit=True) as db:
        names = [
            str(r[0])
            for r in db.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = %s ORDER BY 1", (schema,)
            )
        ]
        found = []
        for n in names:
            row = db.execute(
                f'SELECT count(*) FROM "{schema}"."{n}" AS r'
                " WHERE strpos(r::text, %s) > 0 OR strpos(r::text, %s) > 0",
                (as_text, needle.hex()),
            ).fetchone()
            if row and row[0]:
                found.append(n)
        return found
