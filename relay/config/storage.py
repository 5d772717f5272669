"""`[storage] url`: which database holds a node's state (parsed, never opened). Pure.

Two forms:
- `sqlite:PATH`: a SQLite file, PATH relative to the node directory unless
  absolute. The default is `sqlite:relay.db` (or `[node] database`).
- `postgresql://[USER@]HOST[:PORT]/DBNAME[?schema=NAME&sslmode=MODE]`
  (`postgres://` is the same; without USER, the server is told the user
  the node runs as). No password: node.toml is world-readable, so
  a password comes from `[storage] password_file` or RELAY_STORAGE_PASSWORD
  (relay.node.opening reads them).

`parse_storage_url` raises ValueError with the reason a URL is refused.
"""

from __future__ import annotations

import re
import urllib.parse
from pathlib import Path

from relay.config.model import StorageConfig

PASSWORD_ENV = "RELAY_STORAGE_PASSWORD"
_SCHEMES = ("postgresql", "postgres")
_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
_NO_PASSWORD = (
    "node.toml is world-readable, so it must not hold the database password; "
    f"put it in [storage] password_file (mode 0600) or {PASSWORD_ENV}"
)


def parse_storage_url(url: str, base: Path) -> StorageConfig:
    """`url` from node.toml in directory `base`; ValueError with the reason if refused."""
    if url.startswith("sqlite:"):
        return StorageConfig(url, sqlite_path=(base / _sqlite_path(url)).absolute())
    scheme = url.split(":", 1)[0] if ":" in url else ""
    if scheme not in _SCHEMES:
        raise ValueError(
            f"bad storage url {_shown(url)}: use sqlite:PATH or postgresql://USER@HOST/DBNAME"
        )
    _check_postgresql(url)
    return StorageConfig(url)


def _sqlite_path(url: str) -> str:
    path = url.removeprefix("sqlite:")
    if not path:
        raise ValueError("bad storage url 'sqlite:': no path (e.g. sqlite:relay.db)")
    if path.startswith("//"):
        raise ValueError(
            f"bad storage url {url!r}: write sqlite:PATH, as in sqlite:relay.db "
            "or sqlite:/var/lib/relay/relay.db"
        )
    if "\x00" in path:
        raise ValueError("bad storage url: the path holds a NUL character")
    return path


def _check_postgresql(url: str) -> None:
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise ValueError(f"bad storage url {_shown(url)}: {e}") from None
    if parts.password is not None:
        raise ValueError(f"storage url {_shown(url)} holds a password: {_NO_PASSWORD}")
    if not parts.hostname:
        raise ValueError(f"bad storage url {url!r}: no host (postgresql://USER@HOST/DBNAME)")
    if port == 0:
        raise ValueError(f"bad storage url {url!r}: port 0")
    database = urllib.parse.unquote(parts.path.removeprefix("/"))
    if not database or "/" in database:
        raise ValueError(
            f"bad storage url {url!r}: name one database (postgresql://USER@HOST/DBNAME)"
        )
    if parts.fragment:
        raise ValueError(f"bad storage url {url!r}: no #fragment allowed")
    try:
        query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True, strict_parsing=True)
    except ValueError:
        query = [] if not parts.query else [("", parts.query)]
    seen: set[str] = set()
    for key, value in query:
        if key in seen:
            raise ValueError(f"bad storage url {url!r}: {key} given twice")
        seen.add(key)
        if key == "password":
            raise ValueError(f"storage url {_shown(url)} holds a password: {_NO_PASSWORD}")
        if key == "schema" and not _IDENTIFIER.fullmatch(value):
            raise ValueError(
                f"bad storage url {url!r}: schema {value!r} is not a lowercase SQL "
                "identifier (a-z, 0-9, _; at most 63)"
            )
        if key == "sslmode" and value not in _SSLMODES:
            raise ValueError(
                f"bad storage url {url!r}: sslmode {value!r} is not one of {', '.join(_SSLMODES)}"
            )
        if key not in ("schema", "sslmode"):
            raise ValueError(
                f"bad storage url {url!r}: unknown parameter {key!r} (known: schema, sslmode)"
            )


def _shown(url: str) -> str:
    """`url` for an error message, with any password replaced by `***`."""
    try:
        parts = urllib.parse.urlsplit(url)
        secret = parts.password
    except ValueError:
        return "(unparsable)"
    query = re.sub(r"(^|&)password=[^&]*", r"\1password=***", parts.query)
    netloc = parts.netloc
    if secret is not None:
        userinfo, _, hostport = netloc.rpartition("@")
        netloc = f"{userinfo.split(':', 1)[0]}:***@{hostport}"
    return repr(urllib.parse.urlunsplit(parts._replace(netloc=netloc, query=query)))
