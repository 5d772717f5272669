-- What a witnessed head was found to contradict, as SQLite's migration 19: the
-- size of the other kept head (conflict, shrank or forked), NULL if nothing;
-- every head kept before is evidence (its own size, if not a forked proof's).
ALTER TABLE audit_witnessed ADD COLUMN evidence BIGINT;
UPDATE audit_witnessed
    SET evidence = CASE WHEN proof = 'forked' THEN coalesce(proof_from, size) ELSE size END;
CREATE INDEX audit_witnessed_evidence ON audit_witnessed (peer, evidence)
    WHERE evidence IS NOT NULL;
CREATE INDEX audit_witnessed_forked ON audit_witnessed (peer, proof_from, proof)
    WHERE proof = 'forked';
CREATE INDEX audit_witnessed_seen ON audit_witnessed (seen);
