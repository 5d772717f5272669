-- Retention (relay.node.retention): `discard` marks content that a deletion
-- path wants gone but a minimum retention still holds. Every purge is
-- recorded in `purges` with what it deleted.
ALTER TABLE envelopes ADD COLUMN discard INTEGER NOT NULL DEFAULT 0;
CREATE INDEX envelopes_payload ON envelopes (payload_sha);
CREATE INDEX envelopes_received ON envelopes (received);
CREATE INDEX envelopes_content ON envelopes (received) WHERE payload_sha IS NOT NULL;
CREATE INDEX envelopes_discard ON envelopes (received)
    WHERE discard = 1 AND payload_sha IS NOT NULL;
CREATE INDEX decisions_at ON decisions (at);
CREATE TABLE purges (
    seq INTEGER PRIMARY KEY,
    at INTEGER NOT NULL,
    source TEXT NOT NULL,
    contents INTEGER NOT NULL DEFAULT 0,
    payloads INTEGER NOT NULL DEFAULT 0,
    payload_bytes INTEGER NOT NULL DEFAULT 0,
    ended INTEGER NOT NULL DEFAULT 0,
    envelopes INTEGER NOT NULL DEFAULT 0,
    inbox INTEGER NOT NULL DEFAULT 0,
    recipients INTEGER NOT NULL DEFAULT 0,
    decisions INTEGER NOT NULL DEFAULT 0
);
