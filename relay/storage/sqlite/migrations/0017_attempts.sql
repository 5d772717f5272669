-- Each delivery attempt of each envelope: the next hop, when it started and
-- ended, and what came of it (accepted, duplicate, rejected with the peer's
-- code, deferred, retry or unreachable with the error, split). `relay trace`
-- lists them. Written by the sender in the transaction that records the
-- attempt's outcome; an envelope keeps at most its latest 20 (the sender
-- trims on each failed attempt); the rows go with the envelope's (retention)
-- and with its copies (erasure). rid is the envelope's.
CREATE TABLE attempts (
    seq INTEGER PRIMARY KEY,
    rid INTEGER NOT NULL,
    hop TEXT NOT NULL,
    started INTEGER NOT NULL,
    ended INTEGER NOT NULL,
    outcome TEXT NOT NULL,
    code TEXT NOT NULL DEFAULT '',
    error TEXT NOT NULL DEFAULT '',
    batch_size INTEGER NOT NULL
);
CREATE INDEX attempts_rid ON attempts (rid);
