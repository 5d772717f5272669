-- The unread counter kept by the writer, one statement per batch of inbox
-- rows (relay.storage.unread_sql), instead of a trigger per row: each trigger
-- ran a lookup of the envelope and an upsert of the counter for every row
-- inserted, acked or deleted. The counts themselves do not change.
DROP TRIGGER unread_delivered;
DROP TRIGGER unread_acked;
DROP TRIGGER unread_deleted;
