-- What a consistency proof said about a witnessed head, as SQLite's migration
-- 15: 'consistent' with the kept head of `proof_from` entries, 'forked', or ''.
ALTER TABLE audit_witnessed ADD COLUMN proof_from BIGINT;
ALTER TABLE audit_witnessed ADD COLUMN proof TEXT NOT NULL DEFAULT '';
