-- Erasure (relay.storage.erasure, docs/erasure.md). `envelopes.erased` is
-- when an erasure reached this copy (NULL: never): its inbox rows were
-- replaced by one unread tombstone per mailbox, which reads as "erased"
-- and weighs only its header in `unread` (migration 10 counts headers).
-- `erasures` is the record of each erasure asked here, kept after the
-- envelope's own rows are purged: `status` is
-- 'erased' (content gone at `done`) or 'held' (a minimum retention keeps
-- the content until `hold_until`; retention settles it to 'erased').
ALTER TABLE envelopes ADD COLUMN erased INTEGER;
CREATE TABLE erasures (
    origin TEXT NOT NULL,
    id BLOB NOT NULL,
    status TEXT NOT NULL,
    at INTEGER NOT NULL,
    done INTEGER NOT NULL DEFAULT 0,
    hold_until INTEGER NOT NULL DEFAULT 0,
    source TEXT NOT NULL,
    actor TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (origin, id)
) WITHOUT ROWID;
CREATE INDEX erasures_held ON erasures (hold_until) WHERE status = 'held';
DROP TRIGGER unread_delivered;
DROP TRIGGER unread_acked;
DROP TRIGGER unread_deleted;
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
