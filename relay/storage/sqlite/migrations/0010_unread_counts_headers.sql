-- The unread counter ([limits] mailbox_unread_bytes) counts what an unread
-- message stores, its header as well as its payload: with payload bytes only,
-- messages with empty payloads cost their mailbox nothing against the quota,
-- so a peer could store any number of them.
DROP TRIGGER unread_delivered;
DROP TRIGGER unread_acked;
DROP TRIGGER unread_deleted;
DELETE FROM unread;
INSERT INTO unread (mailbox, bytes)
    SELECT i.mailbox, sum(e.size + length(e.header)) FROM inbox i JOIN envelopes e ON e.rid = i.rid
    WHERE i.acked IS NULL GROUP BY i.mailbox;
CREATE TRIGGER unread_delivered AFTER INSERT ON inbox WHEN NEW.acked IS NULL
BEGIN
    INSERT INTO unread (mailbox, bytes)
        SELECT NEW.mailbox, e.size + length(e.header) FROM envelopes e WHERE e.rid = NEW.rid
        ON CONFLICT (mailbox) DO UPDATE SET bytes = bytes + excluded.bytes;
END;
CREATE TRIGGER unread_acked AFTER UPDATE OF acked ON inbox
    WHEN OLD.acked IS NULL AND NEW.acked IS NOT NULL
BEGIN
    UPDATE unread SET bytes = bytes
        - (SELECT e.size + length(e.header) FROM envelopes e WHERE e.rid = OLD.rid)
        WHERE mailbox = OLD.mailbox;
END;
CREATE TRIGGER unread_deleted AFTER DELETE ON inbox WHEN OLD.acked IS NULL
BEGIN
    UPDATE unread SET bytes = bytes
        - (SELECT e.size + length(e.header) FROM envelopes e WHERE e.rid = OLD.rid)
        WHERE mailbox = OLD.mailbox;
END;
