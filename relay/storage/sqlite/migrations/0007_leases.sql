-- Leases for work that one worker of a node does at a time (relay.node.leases):
-- a destination's sender, the background jobs, a worker's own presence. A row
-- is held by `holder` until `expires` (unix ms); an expired row is free to
-- take. Coordination state, not data: not in TABLES, not copied or backed up
-- as mail is.
CREATE TABLE leases (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    expires INTEGER NOT NULL
) WITHOUT ROWID;
