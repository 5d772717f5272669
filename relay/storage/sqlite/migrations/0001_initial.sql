-- The tables of the first release (DESIGN §8).
CREATE TABLE envelopes (
    rid INTEGER PRIMARY KEY,
    origin TEXT NOT NULL,
    id BLOB NOT NULL,
    hdigest BLOB NOT NULL,
    header BLOB NOT NULL,
    signature BLOB NOT NULL,
    payload_sha BLOB,
    trace BLOB NOT NULL,
    kind TEXT NOT NULL,
    sender TEXT NOT NULL,
    dest TEXT NOT NULL,
    created INTEGER NOT NULL,
    expires INTEGER NOT NULL,
    received INTEGER NOT NULL,
    size INTEGER NOT NULL,
    residency TEXT NOT NULL,
    from_peer TEXT,
    rule_id TEXT NOT NULL DEFAULT '',
    policy_hash TEXT NOT NULL DEFAULT '',
    UNIQUE (origin, id)
);
CREATE INDEX envelopes_id ON envelopes (id);
CREATE TABLE payloads (
    sha BLOB PRIMARY KEY,
    body BLOB NOT NULL
) WITHOUT ROWID;
CREATE TABLE queue (
    rid INTEGER PRIMARY KEY,
    hop TEXT NOT NULL,
    enqueued INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT NOT NULL DEFAULT '',
    held INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX queue_hop ON queue (hop, rid);
CREATE TABLE inbox (
    seq INTEGER PRIMARY KEY,
    mailbox TEXT NOT NULL,
    rid INTEGER NOT NULL,
    delivered INTEGER NOT NULL,
    acked INTEGER
);
CREATE UNIQUE INDEX inbox_once ON inbox (mailbox, rid);
CREATE INDEX inbox_unacked ON inbox (mailbox, seq) WHERE acked IS NULL;
CREATE TABLE recipients (
    msg BLOB NOT NULL,
    address TEXT NOT NULL,
    rid INTEGER NOT NULL,
    mailbox TEXT NOT NULL,
    status TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    at INTEGER NOT NULL,
    PRIMARY KEY (msg, address)
) WITHOUT ROWID;
CREATE INDEX recipients_rid ON recipients (rid);
CREATE TABLE pending_receipts (
    seq INTEGER PRIMARY KEY,
    origin TEXT NOT NULL,
    status TEXT NOT NULL,
    reason TEXT NOT NULL,
    residency TEXT NOT NULL,
    id BLOB NOT NULL,
    recipients BLOB NOT NULL,
    at INTEGER NOT NULL
);
CREATE TABLE batches (
    peer TEXT NOT NULL,
    batch BLOB NOT NULL,
    results BLOB NOT NULL,
    at INTEGER NOT NULL,
    PRIMARY KEY (peer, batch)
) WITHOUT ROWID;
CREATE TABLE nonces (
    peer TEXT NOT NULL,
    nonce TEXT NOT NULL,
    at INTEGER NOT NULL,
    PRIMARY KEY (peer, nonce)
) WITHOUT ROWID;
CREATE TABLE peer_state (
    peer TEXT PRIMARY KEY,
    failures INTEGER NOT NULL DEFAULT 0,
    next_try INTEGER NOT NULL DEFAULT 0,
    last_error TEXT NOT NULL DEFAULT '',
    last_ok INTEGER NOT NULL DEFAULT 0,
    delivered INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE idempotency (
    mailbox TEXT NOT NULL,
    key TEXT NOT NULL,
    response TEXT NOT NULL,
    at INTEGER NOT NULL,
    PRIMARY KEY (mailbox, key)
) WITHOUT ROWID;
CREATE TABLE decisions (
    seq INTEGER PRIMARY KEY,
    at INTEGER NOT NULL,
    point TEXT NOT NULL,
    envelope BLOB,
    peer TEXT NOT NULL DEFAULT '',
    outcome TEXT NOT NULL,
    rule TEXT NOT NULL DEFAULT '',
    reason TEXT NOT NULL DEFAULT '',
    policy_hash TEXT NOT NULL DEFAULT ''
);
CREATE INDEX decisions_envelope ON decisions (envelope);
