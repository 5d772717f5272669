-- A queued envelope's own earliest next try (unix ms; 0: none). A peer that
-- leaves some envelopes of a batch out and answers Retry-After (a full
-- mailbox, protocol.md choice 24a) defers those rows only; the rest of the
-- queue to that peer keeps flowing.
ALTER TABLE queue ADD COLUMN not_before INTEGER NOT NULL DEFAULT 0;
