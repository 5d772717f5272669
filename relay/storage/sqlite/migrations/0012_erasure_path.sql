-- Erasure across the federation (relay.federation.erasing, docs/erasure.md).
-- `erasures.request` is the id of the erasure envelope (the one this node sent,
-- at the origin; the one it received, elsewhere) and `upstream` the node it
-- answers (NULL at the origin). `erasure_answers` keeps, per request, the
-- latest signed answer of each node this node sent the request to, as
-- received: the origin reads the path's answers from it, a relay passes it
-- on in its own answer.
ALTER TABLE erasures ADD COLUMN request BLOB;
ALTER TABLE erasures ADD COLUMN upstream TEXT;
CREATE INDEX erasures_request ON erasures (request) WHERE request IS NOT NULL;
CREATE TABLE erasure_answers (
    request BLOB NOT NULL,
    writer TEXT NOT NULL,
    created INTEGER NOT NULL,
    header BLOB NOT NULL,
    signature BLOB NOT NULL,
    payload BLOB NOT NULL,
    PRIMARY KEY (request, writer)
) WITHOUT ROWID;
