-- payloads as a rowid table: in a WITHOUT ROWID table every 1 KiB body
-- spilled into its own overflow page (4.5 KB on disk per message) and
-- commits slowed as the table grew. A rowid table keeps small bodies
-- inline in its leaves. sha stays unique (payloads are stored once).
CREATE TABLE payloads_v5 (
    id INTEGER PRIMARY KEY,
    sha BLOB NOT NULL UNIQUE,
    body BLOB NOT NULL
);
INSERT INTO payloads_v5 (sha, body) SELECT sha, body FROM payloads;
DROP TABLE payloads;
ALTER TABLE payloads_v5 RENAME TO payloads;
