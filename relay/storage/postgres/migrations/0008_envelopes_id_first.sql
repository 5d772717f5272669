-- envelopes keyed (id, origin) instead of (origin, id), without the separate
-- index on id (as SQLite's migration 14): the one unique index serves
-- lookups by (origin, id) and by id alone, and an envelope insert updates
-- one random-keyed index fewer. ON CONFLICT (origin, id) still names it:
-- PostgreSQL infers a unique index from its set of columns.
ALTER TABLE envelopes ADD CONSTRAINT envelopes_id_origin_key UNIQUE (id, origin);
ALTER TABLE envelopes DROP CONSTRAINT envelopes_origin_id_key;
DROP INDEX envelopes_id;
