"""PostgreSQL storage URLs: `postgresql://user@host:port/db?schema=NAME`.

No driver import here: relay.storage.backends reads URLs without loading
psycopg. `schema` is ours (default `public`): several nodes, or tests, share
one database, each in its own schema. Every other query parameter is passed
to libpq as is (`sslmode`, `connect_timeout`, ...). A password in the URL is
accepted for one-off commands but never shown: `display` leaves it out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from relay.errors import StoreError

SCHEMES = ("postgresql", "postgres")
_SCHEMA = re.compile(r"[a-z_][a-z0-9_]{0,62}")


@dataclass(frozen=True, slots=True)
class PgTarget:
    """A parsed storage URL."""

    conninfo: str  # what libpq gets: the URL without `schema`
    schema: str
    display: str  # the URL without its password, for logs and errors


def is_postgres_url(target: str) -> bool:
    """True if `target` names a PostgreSQL database (postgresql:// or postgres://)."""
    return any(target.startswith(f"{s}://") for s in SCHEMES)


def parse_url(url: str) -> PgTarget:
    """Split `url` into libpq's part and our schema; StoreError naming what is wrong."""
    parts = urlsplit(url)
    shown = _without_password(url)
    if parts.scheme not in SCHEMES:
        raise StoreError(f"{shown}: a PostgreSQL storage URL starts with postgresql://")
    if not parts.path.strip("/"):
        raise StoreError(f"{shown}: name the database, as in postgresql://user@host/relay")
    query = parse_qsl(parts.query, keep_blank_values=True)
    schemas = [v for k, v in query if k == "schema"]
    if len(schemas) > 1:
        raise StoreError(f"{shown}: schema is given {len(schemas)} times")
    schema = schemas[0] if schemas else "public"
    if not _SCHEMA.fullmatch(schema):
        raise StoreError(
            f"{shown}: schema {schema!r} must be lowercase letters, digits and _"
            " (at most 63, not starting with a digit)"
        )
    rest = urlencode([(k, v) for k, v in query if k != "schema"])
    conninfo = urlunsplit((parts.scheme, parts.netloc, parts.path, rest, parts.fragment))
    return PgTarget(conninfo=conninfo, schema=schema, display=shown)


def _without_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    user = parts.username or ""
    return urlunsplit((parts.scheme, f"{user}@{host}", parts.path, parts.query, parts.fragment))
