-- What a witnessed head was found to contradict, as SQLite's migration 19: the
-- size of the other kept head (conflict, shrank or forked), NULL if nothing.
ALTER TABLE audit_witnessed ADD COLUMN evidence BIGINT;
UPDATE audit_witnessed SET evidence = proof_from WHERE proof = 'forked';
CREATE INDEX audit_witnessed_evidence ON audit_witnessed (peer, evidence)
    WHERE evidence IS NOT NULL;
