-- inbox.seq never handed out twice. Apps page GET /v1/inbox "after seq N" and
-- webhooks keep the last seq they handled; as a plain INTEGER PRIMARY KEY a new
-- row took max(seq) + 1, so once retention had deleted the
-- newest rows, the next message got a seq at or below a cursor already given
-- out and was skipped. AUTOINCREMENT keeps the largest seq ever used in
-- sqlite_sequence. Same columns, same rows, same seqs; the counter starts past
-- every seq still known here: the rows' and the webhooks' cursors. (PostgreSQL's
-- identity sequence never went back: no counterpart there.)
CREATE TABLE inbox_v18 (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    mailbox TEXT NOT NULL,
    rid INTEGER NOT NULL,
    delivered INTEGER NOT NULL,
    acked INTEGER
);
INSERT INTO inbox_v18 (seq, mailbox, rid, delivered, acked)
    SELECT seq, mailbox, rid, delivered, acked FROM inbox ORDER BY seq;
DROP TABLE inbox;
ALTER TABLE inbox_v18 RENAME TO inbox;
CREATE UNIQUE INDEX inbox_once ON inbox (mailbox, rid);
CREATE INDEX inbox_unacked ON inbox (mailbox, seq) WHERE acked IS NULL;
DELETE FROM sqlite_sequence WHERE name IN ('inbox', 'inbox_v18');
INSERT INTO sqlite_sequence (name, seq) SELECT 'inbox', max(
    (SELECT coalesce(max(seq), 0) FROM inbox),
    (SELECT coalesce(max(cursor), 0) FROM webhook_state)
);
