-- What a consistency proof said about a witnessed head (docs/protocol.md §19,
-- Relay-Tree-Proof): `proof` is 'consistent' (the head extends the kept head
-- of `proof_from` entries), 'forked' (the peer's proof showed it does not), or
-- '' (no proof came, or none could be checked). Heads kept before stay ''.
ALTER TABLE audit_witnessed ADD COLUMN proof_from INTEGER;
ALTER TABLE audit_witnessed ADD COLUMN proof TEXT NOT NULL DEFAULT '';
