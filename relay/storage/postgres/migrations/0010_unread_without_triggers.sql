-- The unread counter kept by the writer, one statement per batch of inbox
-- rows (relay.storage.unread_sql), instead of a trigger per row, as SQLite's
-- migration 16. The counts themselves do not change.
DROP TRIGGER unread_delivered ON inbox;
DROP TRIGGER unread_acked ON inbox;
DROP TRIGGER unread_deleted ON inbox;
DROP FUNCTION unread_delivered();
DROP FUNCTION unread_gone();
