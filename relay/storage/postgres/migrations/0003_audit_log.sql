-- The tamper-evident audit log, as SQLite's migration 8 (docs/audit.md).
CREATE TABLE audit_log (
    seq BIGINT PRIMARY KEY,
    at BIGINT NOT NULL,
    kind TEXT NOT NULL,
    envelope BYTEA,
    entry BYTEA NOT NULL,
    leaf BYTEA NOT NULL
);
CREATE TABLE audit_heads (
    size BIGINT PRIMARY KEY,
    at BIGINT NOT NULL,
    head BYTEA NOT NULL
);
CREATE TABLE audit_witnessed (
    peer TEXT COLLATE "C" NOT NULL,
    size BIGINT NOT NULL,
    at BIGINT NOT NULL,
    head BYTEA NOT NULL,
    seen BIGINT NOT NULL,
    PRIMARY KEY (peer, size, at)
);
