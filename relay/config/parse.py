"""node.toml text -> frozen, validated config (DESIGN §9). Pure: reads no file.

Invariants:
- `parse_config` returns a `Config` only when the text has no problem at all;
  otherwise it raises `ConfigErrors` listing every problem found, in file
  order, each as `FILE:LINE: key: reason`. Nothing is silently ignored: an
  unknown key or table is a problem, and so is a type, range or reference
  error.
- The files the text names (key, TLS, certificates, revocation list) are not
  read here: `parse_document` lists them as FileChecks, which
  relay.config.files runs for `load_config` and `validate_config`.
- Every country code is checked against ISO 3166-1 alpha-2; group names are
  expanded (recursively, cycles refused) so `Config.policy` holds only codes.
- Paths (key file, database, certificates) are absolute, resolved against the
  directory of the config file.
"""

from __future__ import annotations

import dataclasses
import datetime
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from relay.config.model import (
    DAY_MS,
    Authority,
    Config,
    FederationConfig,
    LimitsConfig,
    LogConfig,
    Mailbox,
    MetricsConfig,
    NodeConfig,
    Peer,
    RelayConfig,
    RetentionConfig,
    RetiredKey,
    RetiredSealKey,
    Route,
    StorageConfig,
    TrustConfig,
)
from relay.config.policy_tables import _PolicyTables
from relay.config.storage import parse_storage_url
from relay.config.table import _Report, _Table
from relay.config.tomledit import TomlLocator
from relay.config.values import (
    _one_of,
    _public_key_error,
    _sha256_error,
    country_error,
    mailbox_name_error,
    node_name_error,
    node_pattern_error,
    parse_listen,
    url_error,
)
from relay.errors import ConfigError, ConfigErrors, MalformedError
from relay.policy.residency import Policy
from relay.protocol.keystr import key_id, parse_public_key
from relay.protocol.sealing import parse_seal_key

# Tables and keys that later issues will add. Listed here so that using them
# now says "not supported yet" rather than "unknown"; supporting one means
# moving it from here into the parser.
_LATER_TABLES: dict[str, str] = {}
_LATER_NODE_KEYS: dict[str, str] = {}
SEAL_MODES = ("required", "preferred", "off")
_TLS_KEYS = ("tls_cert", "tls_key", "ca_file")  # [node] keys, in tls_files_errors order


# --- parse -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KeyFileCheck:
    """`[node] key_file` must hold a private key that is neither revoked nor
    sharing a key id with a retired key (`retired` is (where, key) pairs)."""

    file: Path
    revoked: tuple[str, ...]
    retired: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class TlsFilesCheck:
    """`[node] tls_cert`, `tls_key`, `ca_file`: paired, readable, matching."""

    tls_cert: Path | None
    tls_key: Path | None
    ca_file: Path | None


@dataclass(frozen=True, slots=True)
class OwnCertificateCheck:
    """One of `[node] certificates`: one certificate line, for this node."""

    file: Path
    node_name: str | None


@dataclass(frozen=True, slots=True)
class TrustFilesCheck:
    """`[trust]`: an explicit directory or revocation list must exist; a
    revocation list that exists must parse."""

    certificates_dir: Path
    explicit_dir: bool
    revoked: Path
    explicit_revoked: bool


@dataclass(frozen=True, slots=True)
class PasswordFileCheck:
    """`[storage] password_file`: a regular file no group or other may read."""

    file: Path


@dataclass(frozen=True, slots=True)
class SealKeyFileCheck:
    """`[node] seal_key_file` / `retired_seal_key_files`: each a usable seal key file,
    none of them revoked."""

    key: str  # which [node] key names the files
    files: tuple[Path, ...]
    revoked: tuple[str, ...]


FileCheck = (
    KeyFileCheck
    | TlsFilesCheck
    | OwnCertificateCheck
    | TrustFilesCheck
    | PasswordFileCheck
    | SealKeyFileCheck
)


@dataclass(frozen=True, slots=True)
class ParsedConfig:
    """What the text alone says: the config (None if unusable), the problems
    found so far, and the file checks still to run (relay.config.files)."""

    config: Config | None
    report: _Report
    checks: tuple[FileCheck, ...]


def parse_config(text: str, file: Path) -> Config:
    """Validate `text` as if it were the content of `file` (relative paths resolve there).

    Pure: no file is read, so the files node.toml names are not checked;
    relay.config.files.load_config and validate_config do that too.
    ConfigErrors if the text has any problem.
    """
    parsed = parse_document(text, file)
    return raise_problems(parsed.report, parsed.config)


def parse_document(text: str, file: Path) -> ParsedConfig:
    """Parse and check `text` without reading any file; ConfigErrors only for bad TOML."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        msg = str(e)
        m = re.search(r"\s*\(at line (\d+), column (\d+)\)$", msg)
        line = int(m.group(1)) if m else text.count("\n") + 1
        reason = f"{msg[: m.start()]} at column {m.group(2)}" if m else msg
        raise ConfigErrors([ConfigError(str(file), line, "(syntax)", reason)]) from None
    report = _Report(str(file), TomlLocator(text))
    parser = _Parser(report, file)
    config = parser.parse(_Table(data, (), report))
    return ParsedConfig(config, report, tuple(parser.checks))


def raise_problems(report: _Report, config: Config | None) -> Config:
    """`config` if no problem was reported, else ConfigErrors in file order."""
    if report.errors or config is None:
        raise ConfigErrors(sorted(report.errors, key=lambda e: e.line))
    return config


class _Parser(_PolicyTables):
    """Reads each table in turn; reports problems rather than stopping at the first."""

    def __init__(self, report: _Report, file: Path) -> None:
        self.report = report
        self.file = file
        self.jurisdiction = ""
        self.checks: list[FileCheck] = []

    def parse(self, top: _Table) -> Config | None:
        if "node" not in top.data:
            self.report.add(("node",), "missing [node] table")
        node_t = top.table("node")
        node = self.node(node_t) if node_t is not None else None
        if node is not None:
            self.jurisdiction = node.jurisdiction
        mailboxes = self.mailboxes(top.tables("mailboxes"))
        policy = self.policy(self.sub(top, "policy"), {m.name for m in mailboxes})
        retention = self.retention(self.sub(top, "retention"))
        federation = self.federation(self.sub(top, "federation"))
        peers = self.peers(top.tables("peers"), node.name if node else None)
        log = self.log(self.sub(top, "log"))
        metrics = self.metrics(self.sub(top, "metrics"))
        routes = self.routes(top.tables("routes"), node.name if node else None)
        relay_cfg = self.relay(self.sub(top, "relay"))
        authorities = self.authorities(top.tables("authorities"), policy)
        trust = self.trust(self.sub(top, "trust"))
        limits = self.limits(self.sub(top, "limits"))
        storage = self.storage(self.sub(top, "storage"), node_t)
        top.done(_LATER_TABLES)
        if node is None or policy is None:
            return None
        if storage is not None and storage.sqlite_path is not None:
            node = dataclasses.replace(node, database=storage.sqlite_path)
        return Config(
            self.file,
            node,
            policy,
            retention,
            federation,
            peers,
            mailboxes,
            log,
            metrics,
            routes=routes,
            relay=relay_cfg,
            authorities=authorities,
            trust=trust,
            limits=limits,
            storage_table=storage,
        )

    def sub(self, top: _Table, key: str) -> _Table:
        """An optional table; absent (or reported as mistyped) reads as empty."""
        return top.table(key) or _Table({}, (key,), self.report)

    def resolve(self, value: str) -> Path:
        return (self.file.parent / value).absolute()

    # -- [node] ---------------------------------------------------------------

    def node(self, t: _Table) -> NodeConfig | None:
        name = t.string("name", required=True, check=node_name_error)
        jurisdiction = t.string("jurisdiction", required=True, check=country_error)
        listen = t.string("listen", required=True)
        host, port = "", 0
        if listen is not None:
            try:
                host, port = parse_listen(listen)
            except ValueError as e:
                t.error("listen", str(e))
                listen = None
        public_url = t.string("public_url", check=url_error)
        key_value = t.string("key_file", required=True)
        key_file = None if key_value is None else self.resolve(key_value)
        retired, revoked = self.node_keys(t, key_file)
        tls_files = {k: self.resolve(v) if (v := t.string(k)) else None for k in _TLS_KEYS}
        self.checks.append(TlsFilesCheck(*tls_files.values()))
        database = self.resolve(t.string("database") or "relay.db")
        max_body = t.integer("max_body_bytes", 16 * 1024 * 1024, 1024, 2**31)
        lifetime = t.duration_ms("queue_lifetime", 5 * DAY_MS)
        certificates: list[Path] = []
        for value in t.strings("certificates") or []:
            cert = self.resolve(value)
            self.checks.append(OwnCertificateCheck(cert, name))
            certificates.append(cert)
        admin = t.string("admin_token_sha256", check=_sha256_error)
        seal_file, retired_seal, revoked_seal = self.seal_keys(t)
        t.done(_LATER_NODE_KEYS)
        if name is None or jurisdiction is None or listen is None or key_file is None:
            return None
        scheme = "https" if tls_files["tls_cert"] is not None else "http"
        return NodeConfig(
            name=name,
            jurisdiction=jurisdiction,
            listen_host=host,
            listen_port=port,
            public_url=(public_url or f"{scheme}://{listen}").rstrip("/"),
            key_file=key_file,
            database=database,
            max_body_bytes=max_body,
            queue_lifetime_ms=lifetime,
            certificates=tuple(certificates),
            admin_token_sha256=admin,
            retired_keys=retired,
            revoked_keys=revoked,
            tls_cert=tls_files["tls_cert"],
            tls_key=tls_files["tls_key"],
            ca_file=tls_files["ca_file"],
            seal_key_file=seal_file,
            retired_seal_keys=retired_seal,
            revoked_seal_keys=revoked_seal,
        )

    def seal_keys(
        self, t: _Table
    ) -> tuple[Path | None, tuple[RetiredSealKey, ...], tuple[str, ...]]:
        """`[node] seal_key_file`, `retired_seal_key_files`, `revoked_seal_keys`.

        A retired entry is `{file = ..., valid_until = ...}` (what `relay seal
        rotate` writes) or a bare path: a key retired before seal keys had a
        grace period, which opens until it is revoked.
        """
        value = t.string("seal_key_file")
        current = None if value is None else self.resolve(value)
        retired = self.retired_seal_keys(t)
        files = [r.file for r in retired]
        if current is not None and current in files:
            t.error("retired_seal_key_files", f"{current} is also the seal_key_file")
        if len(set(files)) != len(files):
            t.error("retired_seal_key_files", "a file is listed twice")
        revoked = t.strings("revoked_seal_keys") or []
        for key in revoked:
            try:
                parse_seal_key(key)
            except MalformedError as e:
                t.error("revoked_seal_keys", e.detail)
        if current is not None:
            self.checks.append(SealKeyFileCheck("seal_key_file", (current,), tuple(revoked)))
        if retired:
            self.checks.append(
                SealKeyFileCheck("retired_seal_key_files", tuple(files), tuple(revoked))
            )
        return current, retired, tuple(revoked)

    def retired_seal_keys(self, t: _Table) -> tuple[RetiredSealKey, ...]:
        """`[node] retired_seal_key_files`: paths or `{file, valid_until}` tables."""
        out: list[RetiredSealKey] = []
        for i, entry in enumerate(t.raw("retired_seal_key_files", list) or []):
            where = f"retired_seal_key_files[{i}]"
            if isinstance(entry, str):
                out.append(RetiredSealKey(self.resolve(entry)))
                continue
            if not isinstance(entry, dict):
                t.error(
                    "retired_seal_key_files",
                    f"{where}: expected {{file = ..., valid_until = ...}} or a path",
                )
                continue
            if extra := sorted(set(entry) - {"file", "valid_until"}):
                t.error("retired_seal_key_files", f"{where}: unknown key {extra[0]!r}")
                continue
            file, until = entry.get("file"), entry.get("valid_until")
            if not isinstance(file, str) or not file:
                t.error("retired_seal_key_files", f"{where}: file: expected a path string")
                continue
            if (until_ms := _valid_until_ms(t, "retired_seal_key_files", where, until)) is None:
                continue
            out.append(RetiredSealKey(self.resolve(file), until_ms))
        return tuple(out)

    def node_keys(
        self, t: _Table, key_file: Path | None
    ) -> tuple[tuple[RetiredKey, ...], tuple[str, ...]]:
        """`[node] retired_keys` and `revoked_keys` (relay.policy.keyring says what they mean).

        Every key appears once across the retired and revoked keys, and key ids
        are distinct, since the node document is keyed by key id. The same
        against the signing key needs `key_file` read: a KeyFileCheck.
        """
        seen: dict[str, str] = {}
        revoked: list[str] = []
        for key in t.strings("revoked_keys") or []:
            if (reason := _public_key_error(key)) is not None:
                t.error("revoked_keys", reason)
            elif key in revoked:
                t.error("revoked_keys", f"key {key!r} listed twice")
            else:
                revoked.append(key)
        retired: list[RetiredKey] = []
        entries = t.raw("retired_keys", list) or []
        for i, entry in enumerate(entries):
            where = f"retired_keys[{i}]"
            if not isinstance(entry, dict):
                t.error("retired_keys", f"{where}: expected {{key = ..., valid_until = ...}}")
                continue
            if extra := sorted(set(entry) - {"key", "valid_until"}):
                t.error("retired_keys", f"{where}: unknown key {extra[0]!r}")
            value, until = entry.get("key"), entry.get("valid_until")
            retired_key = value if isinstance(value, str) else ""
            fault = _public_key_error(retired_key) if retired_key else "key: expected a string"
            if fault is None and retired_key in revoked:
                fault = f"{retired_key} is also in revoked_keys; a key is retired or revoked"
            elif fault is None and key_id(retired_key) in seen:
                what = seen[key_id(retired_key)]
                fault = f"{retired_key} has the key id {key_id(retired_key)!r} of {what}"
            if fault is not None:
                t.error("retired_keys", f"{where}: {fault}")
                continue
            if (until_ms := _valid_until_ms(t, "retired_keys", where, until)) is None:
                continue
            seen[key_id(retired_key)] = where
            retired.append(RetiredKey(retired_key, until_ms))
        if key_file is not None:
            places = tuple(zip(seen.values(), (r.key for r in retired), strict=True))
            self.checks.append(KeyFileCheck(key_file, tuple(revoked), places))
        return tuple(retired), tuple(revoked)

    # -- [retention], [federation], [log] -----------------------------------------

    def retention(self, t: _Table) -> RetentionConfig:
        d = RetentionConfig()
        days = {
            "content_min_days": t.integer("content_min_days", d.content_min_days, 0, 36500),
            "content_max_days": t.integer("content_max_days", d.content_max_days, 0, 36500),
            "metadata_min_days": t.integer("metadata_min_days", d.metadata_min_days, 0, 36500),
            "metadata_max_days": t.integer("metadata_max_days", d.metadata_max_days, 0, 36500),
        }
        for kind in ("content", "metadata"):
            low, high = days[f"{kind}_min_days"], days[f"{kind}_max_days"]
            if low > high:
                t.error(
                    f"{kind}_min_days",
                    f"{kind}_min_days ({low}) is greater than {kind}_max_days ({high})",
                )
        witnessed = t.integer("witnessed_heads_days", d.witnessed_heads_days, 1, 36500)
        t.done()
        return RetentionConfig(**days, witnessed_heads_days=witnessed)

    def federation(self, t: _Table) -> FederationConfig:
        d = FederationConfig()
        retry_min = t.duration_ms("retry_min", d.retry_min_ms)
        retry_max = t.duration_ms("retry_max", d.retry_max_ms)
        if retry_min > retry_max:
            t.error("retry_min", "retry_min is longer than retry_max")
        config = FederationConfig(
            batch_envelopes=t.integer("batch_envelopes", d.batch_envelopes, 1, 10_000),
            batch_bytes=t.integer("batch_bytes", d.batch_bytes, 1024, 2**31),
            retry_min_ms=retry_min,
            retry_max_ms=retry_max,
            request_timeout_ms=t.duration_ms("request_timeout", d.request_timeout_ms),
            connect_timeout_ms=t.duration_ms("connect_timeout", d.connect_timeout_ms),
            receipt_window_ms=t.duration_ms("receipt_window", d.receipt_window_ms, lo=0),
            seal=self.seal_mode(t, d.seal),
            delivery_results=t.boolean("delivery_results", d.delivery_results),
        )
        t.done()
        return config

    def seal_mode(self, t: _Table, default: str) -> str:
        mode = t.string("seal") or default
        if mode not in SEAL_MODES:
            t.error("seal", f"{mode!r} is not one of {', '.join(map(repr, SEAL_MODES))}")
            return default
        return mode

    def limits(self, t: _Table) -> LimitsConfig:
        d = LimitsConfig()
        config = LimitsConfig(
            client_rate=t.integer("client_rate", d.client_rate, 0, 10**9),
            client_burst=t.integer("client_burst", d.client_burst, 1, 10**9),
            peer_rate=t.integer("peer_rate", d.peer_rate, 0, 10**9),
            peer_burst=t.integer("peer_burst", d.peer_burst, 1, 10**9),
            max_queued=t.integer("max_queued", d.max_queued, 0, 2**62),
            max_pending_writes=t.integer("max_pending_writes", d.max_pending_writes, 0, 10**9),
            max_connections=t.integer("max_connections", d.max_connections, 0, 10**7),
            header_timeout_ms=t.duration_ms("header_timeout", d.header_timeout_ms, lo=100),
            body_timeout_ms=t.duration_ms("body_timeout", d.body_timeout_ms, lo=100),
            idle_timeout_ms=t.duration_ms("idle_timeout", d.idle_timeout_ms, lo=100),
            inbox_page_bytes=t.integer("inbox_page_bytes", d.inbox_page_bytes, 1024, 2**31),
            mailbox_unread_bytes=t.integer(
                "mailbox_unread_bytes", d.mailbox_unread_bytes, 0, 2**62
            ),
            peer_bytes_per_s=t.integer("peer_bytes_per_s", d.peer_bytes_per_s, 0, 2**40),
            principal_write_share=t.integer(
                "principal_write_share", d.principal_write_share, 1, 100
            ),
            client_body_bytes=t.integer("client_body_bytes", d.client_body_bytes, 1024, 2**31),
            unauthenticated_body_bytes=t.integer(
                "unauthenticated_body_bytes", d.unauthenticated_body_bytes, 0, 2**31
            ),
        )
        t.done()
        return config

    def log(self, t: _Table) -> LogConfig:
        d = LogConfig()
        log_format = t.string("format", check=_one_of("text", "json"))
        level = t.string("level", check=_one_of("debug", "info", "warning", "error"))
        t.done()
        return LogConfig(format=log_format or d.format, level=level or d.level)

    def metrics(self, t: _Table) -> MetricsConfig:
        listen = t.string("listen")
        host: str | None = None
        port = 0
        if listen is not None:
            try:
                host, port = parse_listen(listen)
            except ValueError as e:
                t.error("listen", str(e))
        token = t.string("token_sha256", check=_sha256_error)
        mailbox_labels = t.boolean("mailbox_labels", MetricsConfig().mailbox_labels)
        t.done()
        return MetricsConfig(
            listen_host=host, listen_port=port, token_sha256=token, mailbox_labels=mailbox_labels
        )

    def storage(self, t: _Table, node_t: _Table | None) -> StorageConfig | None:
        """`[storage]`; None when it names no url (the `[node] database` file is used)."""
        url = t.string("url")
        password = t.string("password_file")
        t.done()
        password_file = self.resolve(password) if password else None
        if url is None:
            if password_file is not None:
                t.error("password_file", "set only together with a postgresql:// url")
            return None
        if node_t is not None and "database" in node_t.data:
            t.error(
                "url",
                "[node] database is set too: remove it from [node] "
                '(url replaces it; url = "sqlite:PATH" names a SQLite file)',
            )
            return None
        try:
            storage = parse_storage_url(url, self.file.parent)
        except ValueError as e:
            t.error("url", str(e))
            return None
        if password_file is not None and storage.sqlite_path is not None:
            t.error("password_file", "set only with a postgresql:// url; SQLite has no password")
            return None
        if password_file is not None:
            self.checks.append(PasswordFileCheck(password_file))
        return dataclasses.replace(storage, password_file=password_file)

    # -- [[routes]], [relay], [[authorities]], [trust] ---------------------------

    def routes(self, tables: list[_Table], own_name: str | None) -> tuple[Route, ...]:
        routes: list[Route] = []
        first: dict[str, int] = {}
        for r in tables:
            to = r.string("to", required=True, check=node_pattern_error)
            via = r.string("via", required=True, check=node_name_error)
            if to is not None and to in first:
                r.error(
                    "to",
                    f"a route to {to!r} is already at line {first[to]}; the first match "
                    "wins, so this one would never apply",
                )
                to = None
            elif to is not None:
                first[to] = self.line((*r.path, "to"))
            if via is not None and via == own_name:
                r.error("via", f"{via!r} is this node itself; a route must lead elsewhere")
                via = None
            elif via is not None and via == to:
                r.error("via", f"{via!r} is the destination itself; without a route it is direct")
                via = None
            r.done()
            if to is not None and via is not None:
                routes.append(Route(to, via))
        return tuple(routes)

    def relay(self, t: _Table) -> RelayConfig:
        lists: dict[str, tuple[str, ...]] = {}
        for key in ("for_origins", "for_destinations"):
            values = t.strings(key) or []
            for value in values:
                if (reason := node_pattern_error(value)) is not None:
                    t.error(key, reason)
            lists[key] = tuple(dict.fromkeys(values))
        t.done()
        return RelayConfig(lists["for_origins"], lists["for_destinations"])

    def authorities(self, tables: list[_Table], policy: Policy | None) -> tuple[Authority, ...]:
        groups = policy.groups if policy else {}
        out: list[Authority] = []
        first: dict[str, int] = {}
        for a in tables:
            name = a.string("name", required=True, check=node_name_error)
            name = self.first_use(a, "name", name, "authority", first)
            key = a.string("key", required=True, check=_public_key_error)
            codes: frozenset[str] = frozenset()
            names = a.strings("jurisdictions", required=True)
            if names is not None and not names:
                a.error("jurisdictions", "an authority must be trusted for at least one")
            elif names is not None:
                codes = self.expand(names, groups, set(groups), a, "jurisdictions")
            a.done()
            if name is not None and key is not None and codes:
                out.append(Authority(name, key, codes))
        return tuple(out)

    def trust(self, t: _Table) -> TrustConfig:
        explicit_dir = t.string("certificates_dir")
        explicit_revoked = t.string("revoked")
        t.done()
        certificates_dir = self.resolve(explicit_dir or "certs")
        revoked = self.resolve(explicit_revoked or "revoked.txt")
        self.checks.append(
            TrustFilesCheck(
                certificates_dir, explicit_dir is not None, revoked, explicit_revoked is not None
            )
        )
        return TrustConfig(certificates_dir, revoked)

    # -- [[peers]], [[mailboxes]] ---------------------------------------------

    def peers(self, tables: list[_Table], own_name: str | None) -> tuple[Peer, ...]:
        peers: list[Peer] = []
        first: dict[str, int] = {}
        for p in tables:
            name = p.string("name", required=True, check=node_name_error)
            if name is not None and name == own_name:
                p.error("name", f"peer {name!r} has this node's own name")
                name = None
            else:
                name = self.first_use(p, "name", name, "peer", first)
            url = p.string("url", check=url_error)
            jurisdiction = p.string("jurisdiction", required=True, check=country_error)
            keys = p.strings("keys", required=True)
            if keys is not None and not keys:
                p.error("keys", "a peer needs at least one key")
            for i, key in enumerate(keys or []):
                try:
                    parse_public_key(key)
                except MalformedError as e:
                    p.error("keys", e.detail)
                    continue
                if key in (keys or [])[:i]:
                    p.error("keys", f"key {key!r} listed twice")
            revoked = p.strings("revoked_keys") or []
            for i, key in enumerate(revoked):
                if (reason := _public_key_error(key)) is not None:
                    p.error("revoked_keys", reason)
                elif key in revoked[:i]:
                    p.error("revoked_keys", f"key {key!r} listed twice")
                elif key in (keys or []):
                    p.error(
                        "revoked_keys",
                        f"key {key!r} is also in keys; a revoked key is removed from keys",
                    )
            seal_keys = p.strings("seal_keys") or []
            for i, key in enumerate(seal_keys):
                try:
                    parse_seal_key(key)
                except MalformedError as e:
                    p.error("seal_keys", e.detail)
                if key in seal_keys[:i]:
                    p.error("seal_keys", f"seal key {key[:40]!r}... listed twice")
            p.done()
            if name is not None and jurisdiction is not None and keys:
                url_ = url.rstrip("/") if url else None
                peers.append(
                    Peer(name, url_, jurisdiction, tuple(keys), tuple(revoked), tuple(seal_keys))
                )
        return tuple(peers)

    def mailboxes(self, tables: list[_Table]) -> tuple[Mailbox, ...]:
        mailboxes: list[Mailbox] = []
        first: dict[str, int] = {}
        for m in tables:
            name = m.string("name", required=True, check=mailbox_name_error)
            name = self.first_use(m, "name", name, "mailbox", first)
            token = m.string("token_sha256", required=True, check=_sha256_error)
            webhook = m.string("webhook", check=url_error)
            webhook_j = m.string("webhook_jurisdiction", check=country_error)
            if webhook_j is not None and "webhook" not in m.data:
                m.error("webhook_jurisdiction", "set only together with webhook")
            m.done()
            if name is not None and token is not None:
                mailboxes.append(Mailbox(name, token, webhook, webhook_j))
        return tuple(mailboxes)


def _valid_until_ms(t: _Table, key: str, where: str, until: object) -> int | None:
    """A retired key entry's `valid_until` in unix ms; None (reported) unless it is a
    TOML date-time with a UTC offset."""
    if not isinstance(until, datetime.datetime) or until.utcoffset() is None:
        t.error(
            key,
            f"{where}: valid_until: expected a date-time with a UTC offset, "
            "such as 2030-01-31T12:00:00Z",
        )
        return None
    return int(until.timestamp() * 1000)
