-- Webhooks (relay.node.webhooks): per mailbox, the last inbox seq handled
-- (POSTed and acked, or refused by residency) and the retry state.
CREATE TABLE webhook_state (
    mailbox TEXT PRIMARY KEY,
    cursor INTEGER NOT NULL DEFAULT 0,
    failures INTEGER NOT NULL DEFAULT 0,
    next_try INTEGER NOT NULL DEFAULT 0,
    last_error TEXT NOT NULL DEFAULT '',
    delivered INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
