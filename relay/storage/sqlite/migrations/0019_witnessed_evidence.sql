-- Witnessed heads are pruned (relay.node.retention, [retention]
-- witnessed_heads_days), except what shows a peer's log went wrong. `evidence`
-- is the size of the other kept head a head was found to contradict when it
-- came: the same size with another root (conflict), a larger size seen before
-- (shrank), or its proof's start (forked); NULL for a head that showed nothing.
-- Both heads of each such pair are kept. Heads kept before this migration only
-- know their forked proofs, not which pairs conflicted or shrank: each of them
-- is marked as evidence (its own size, if nothing else), so none is pruned.
ALTER TABLE audit_witnessed ADD COLUMN evidence INTEGER;
UPDATE audit_witnessed
    SET evidence = CASE WHEN proof = 'forked' THEN coalesce(proof_from, size) ELSE size END;
CREATE INDEX audit_witnessed_evidence ON audit_witnessed (peer, evidence)
    WHERE evidence IS NOT NULL;
-- The prune's look-up of the head a forked proof was from (proof in it too, so
-- that SQLite reads the index alone).
CREATE INDEX audit_witnessed_forked ON audit_witnessed (peer, proof_from, proof)
    WHERE proof = 'forked';
-- The prune's candidates, by when they were seen, without reading the table.
CREATE INDEX audit_witnessed_seen ON audit_witnessed (seen);
