-- The tamper-evident audit log (issue 15, docs/audit.md). Entry `seq` is leaf
-- `seq` of an RFC 9162 Merkle tree: `entry` holds the exact bytes hashed into
-- `leaf`. Appended in the transactions of the events they record; never
-- updated, never purged (entries hold ids, hashes and names, no content).
-- No index beside the seq: every append pays for each one, and the look-ups
-- by time or envelope (`relay audit export`, `prove`) are rare and scan.
CREATE TABLE audit_log (
    seq INTEGER PRIMARY KEY,
    at INTEGER NOT NULL,
    kind TEXT NOT NULL,
    envelope BLOB,
    entry BLOB NOT NULL,
    leaf BLOB NOT NULL
);
-- The node's signed tree heads: the latest signed for each size, as the
-- wire array [head bytes, signature].
CREATE TABLE audit_heads (
    size INTEGER PRIMARY KEY,
    at INTEGER NOT NULL,
    head BLOB NOT NULL
);
-- Tree heads peers sent in their batches, kept as evidence of what each one
-- committed to (docs/protocol.md, the tree head extension).
CREATE TABLE audit_witnessed (
    peer TEXT NOT NULL,
    size INTEGER NOT NULL,
    at INTEGER NOT NULL,
    head BLOB NOT NULL,
    seen INTEGER NOT NULL,
    PRIMARY KEY (peer, size, at)
) WITHOUT ROWID;
