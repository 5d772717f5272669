-- envelopes keyed (id, origin) instead of (origin, id), without the separate
-- index on id. The unique key was (origin, id) and lookups by id alone (a
-- client's ack by id, queue refs, the digests of ids already stored) needed a
-- second index on id; both sit on random keys, so every envelope insert
-- dirtied a page in each. Turned round, the one unique index serves both
-- kinds of lookup. SQLite cannot change a table's UNIQUE constraint, so the
-- table is rebuilt: same columns, same rows, same rids, in rid order. The
-- unread triggers on inbox name envelopes and would stop the rename, so they
-- are dropped for it and made again as migration 11 made them.
DROP TRIGGER unread_delivered;
DROP TRIGGER unread_acked;
DROP TRIGGER unread_deleted;
CREATE TABLE envelopes_v14 (
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
    discard INTEGER NOT NULL DEFAULT 0,
    hop TEXT,
    erased INTEGER,
    UNIQUE (id, origin)
);
INSERT INTO envelopes_v14 (rid, origin, id, hdigest, header, signature, payload_sha, trace,
        kind, sender, dest, created, expires, received, size, residency, from_peer, rule_id,
        policy_hash, discard, hop, erased)
    SELECT rid, origin, id, hdigest, header, signature, payload_sha, trace,
        kind, sender, dest, created, expires, received, size, residency, from_peer, rule_id,
        policy_hash, discard, hop, erased
    FROM envelopes ORDER BY rid;
DROP TABLE envelopes;
ALTER TABLE envelopes_v14 RENAME TO envelopes;
CREATE INDEX envelopes_payload ON envelopes (payload_sha);
CREATE INDEX envelopes_received ON envelopes (received);
CREATE INDEX envelopes_content ON envelopes (received) WHERE payload_sha IS NOT NULL;
CREATE INDEX envelopes_discard ON envelopes (received)
    WHERE discard = 1 AND payload_sha IS NOT NULL;
CREATE TRIGGER unread_delivered AFTER INSERT ON inbox WHEN NEW.acked IS NULL
BEGIN
    INSERT INTO unread (mailbox, bytes)
        SELECT NEW.mailbox, CASE WHEN e.erased IS NULL THEN e.size ELSE 0 END + length(e.header)
        FROM envelopes e WHERE e.rid = NEW.rid
        ON CONFLICT (mailbox) DO UPDATE SET bytes = bytes + excluded.bytes;
END;
CREATE TRIGGER unread_acked AFTER UPDATE OF acked ON inbox
    WHEN OLD.acked IS NULL AND NEW.acked IS NOT NULL
BEGIN
    UPDATE unread SET bytes = bytes - (SELECT CASE WHEN e.erased IS NULL THEN e.size ELSE 0 END + length(e.header)
        FROM envelopes e WHERE e.rid = OLD.rid)
        WHERE mailbox = OLD.mailbox;
END;
CREATE TRIGGER unread_deleted AFTER DELETE ON inbox WHEN OLD.acked IS NULL
BEGIN
    UPDATE unread SET bytes = bytes - (SELECT CASE WHEN e.erased IS NULL THEN e.size ELSE 0 END + length(e.header)
        FROM envelopes e WHERE e.rid = OLD.rid)
        WHERE mailbox = OLD.mailbox;
END;
