-- A queued envelope's own earliest next try (unix ms; 0: none), as SQLite's
-- migration 9: rows a peer deferred with Retry-After wait, the rest flow.
ALTER TABLE queue ADD COLUMN not_before BIGINT NOT NULL DEFAULT 0;
