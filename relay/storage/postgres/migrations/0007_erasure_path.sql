-- Erasure across the federation, as SQLite's migration 12: the erasure envelope
-- of each erasure and the node it answers, and the latest answer of each node
-- this one sent the request to.
ALTER TABLE erasures ADD COLUMN request BYTEA;
ALTER TABLE erasures ADD COLUMN upstream TEXT COLLATE "C";
CREATE INDEX erasures_request ON erasures (request) WHERE request IS NOT NULL;
CREATE TABLE erasure_answers (
    request BYTEA NOT NULL,
    writer TEXT COLLATE "C" NOT NULL,
    created BIGINT NOT NULL,
    header BYTEA NOT NULL,
    signature BYTEA NOT NULL,
    payload BYTEA NOT NULL,
    PRIMARY KEY (request, writer)
);
