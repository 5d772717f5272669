-- recipients as a rowid table. As WITHOUT ROWID the table was stored in the
-- order of its key (msg, address), and msg is a random 16-byte id: the rows of
-- one batch of envelopes (consecutive rids) sat on as many random pages, so
-- marking a batch sent, then delivered (a statement per rid, through
-- recipients_rid) dirtied a page per recipient, twice, and COMMIT wrote them
-- all to the WAL. A rowid table keeps rows in insertion order, which is rid
-- order; the key stays unique through its own index. Same columns, same rows.
CREATE TABLE recipients_v8 (
    msg BLOB NOT NULL,
    address TEXT NOT NULL,
    rid INTEGER NOT NULL,
    mailbox TEXT NOT NULL,
    status TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    at INTEGER NOT NULL,
    PRIMARY KEY (msg, address)
);
INSERT INTO recipients_v8 (msg, address, rid, mailbox, status, reason, at)
    SELECT msg, address, rid, mailbox, status, reason, at FROM recipients ORDER BY rid;
DROP TABLE recipients;
ALTER TABLE recipients_v8 RENAME TO recipients;
CREATE INDEX recipients_rid ON recipients (rid);
