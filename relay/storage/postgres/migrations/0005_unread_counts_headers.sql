-- The unread counter counts an unread message's header as well as its
-- payload, as SQLite's migration 10 (which says why).
CREATE OR REPLACE FUNCTION unread_delivered() RETURNS trigger LANGUAGE plpgsql
    SET search_path FROM CURRENT AS $$
BEGIN
    INSERT INTO unread (mailbox, bytes)
        SELECT NEW.mailbox, e.size + length(e.header) FROM envelopes e WHERE e.rid = NEW.rid
        ON CONFLICT (mailbox) DO UPDATE SET bytes = unread.bytes + excluded.bytes;
    RETURN NULL;
END $$;
CREATE OR REPLACE FUNCTION unread_gone() RETURNS trigger LANGUAGE plpgsql
    SET search_path FROM CURRENT AS $$
BEGIN
    UPDATE unread SET bytes = bytes
        - (SELECT e.size + length(e.header) FROM envelopes e WHERE e.rid = OLD.rid)
        WHERE mailbox = OLD.mailbox;
    RETURN NULL;
END $$;
DELETE FROM unread;
INSERT INTO unread (mailbox, bytes)
    SELECT i.mailbox, sum(e.size + length(e.header)) FROM inbox i JOIN envelopes e ON e.rid = i.rid
    WHERE i.acked IS NULL GROUP BY i.mailbox;
