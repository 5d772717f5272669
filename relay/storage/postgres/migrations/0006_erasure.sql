-- Erasure (relay.storage.erasure, docs/erasure.md), as SQLite's migration 11:
-- `envelopes.erased` is when an erasure reached this copy; its tombstone
-- inbox rows weigh only their header in `unread`; `erasures` records each erasure.
ALTER TABLE envelopes ADD COLUMN erased BIGINT;
CREATE TABLE erasures (
    origin TEXT COLLATE "C" NOT NULL,
    id BYTEA NOT NULL,
    status TEXT COLLATE "C" NOT NULL,
    at BIGINT NOT NULL,
    done BIGINT NOT NULL DEFAULT 0,
    hold_until BIGINT NOT NULL DEFAULT 0,
    source TEXT COLLATE "C" NOT NULL,
    actor TEXT COLLATE "C" NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (origin, id)
);
CREATE INDEX erasures_held ON erasures (hold_until) WHERE status = 'held';
CREATE OR REPLACE FUNCTION unread_delivered() RETURNS trigger LANGUAGE plpgsql
    SET search_path FROM CURRENT AS $$
BEGIN
    INSERT INTO unread (mailbox, bytes)
        SELECT NEW.mailbox, CASE WHEN e.erased IS NULL THEN e.size ELSE 0 END + length(e.header)
        FROM envelopes e WHERE e.rid = NEW.rid
        ON CONFLICT (mailbox) DO UPDATE SET bytes = unread.bytes + excluded.bytes;
    RETURN NULL;
END $$;
CREATE OR REPLACE FUNCTION unread_gone() RETURNS trigger LANGUAGE plpgsql
    SET search_path FROM CURRENT AS $$
BEGIN
    UPDATE unread SET bytes = bytes - (SELECT CASE WHEN e.erased IS NULL THEN e.size ELSE 0 END + length(e.header)
        FROM envelopes e WHERE e.rid = OLD.rid)
        WHERE mailbox = OLD.mailbox;
    RETURN NULL;
END $$;
