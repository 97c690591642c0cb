DROP TABLE notifications;
DROP TRIGGER outbox_notify_on_insert ON outbox;
DROP FUNCTION outbox_notify();
DROP TABLE outbox;
DROP TABLE orders;
DROP TABLE users;
