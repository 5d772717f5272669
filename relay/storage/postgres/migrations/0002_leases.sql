-- Leases for work that one worker of a node does at a time (relay.node.leases),
-- as SQLite's migration 7: held by `holder` until `expires` (unix ms); an
-- expired row is free to take. Coordination state, not data: not in TABLES.
CREATE TABLE leases (
    name TEXT COLLATE "C" PRIMARY KEY,
    holder TEXT COLLATE "C" NOT NULL,
    expires BIGINT NOT NULL
);
