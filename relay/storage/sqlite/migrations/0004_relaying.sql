-- Relaying (relay.policy.routing): `hop` is the node this node handed an
-- envelope to (its path as far as this node knows it, used to accept
-- receipts from a relay). `certificates` keeps node certificates other
-- nodes carried in batch items, with their validity.
ALTER TABLE envelopes ADD COLUMN hop TEXT;
CREATE TABLE certificates (
    fingerprint TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    not_after INTEGER NOT NULL,
    blob BLOB NOT NULL,
    at INTEGER NOT NULL
) WITHOUT ROWID;
