-- The outbox and feed triggers no longer NOTIFY. A transaction that sends a
-- notification holds one lock, for the whole cluster, from just before its
-- commit until its commit is on disk, so every committing writer (each
-- order placed, each delivery batch) waited for the flushes of all the
-- others instead of sharing one: pgbench's order transaction at 16 clients
-- ran 2-4x slower with them. The writers now wake relays and feed readers
-- after their commit (`db::notify_readers`), in a statement of its own; the
-- readers' periodic sweeps still cover a writer that did not.
DROP TRIGGER outbox_notify_on_insert ON outbox;
DROP FUNCTION outbox_notify();

CREATE OR REPLACE FUNCTION feed_from_outbox() RETURNS trigger AS $$
BEGIN
    INSERT INTO feed (routing_key, payload) VALUES (NEW.routing_key, NEW.payload);
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE OR REPLACE FUNCTION feed_from_delivery_attempt() RETURNS trigger AS $$
BEGIN
    INSERT INTO feed (routing_key, payload) VALUES (
        'delivery.' || NEW.outcome,
        jsonb_build_object(
            'type', 'delivery.' || NEW.outcome,
            'occurred_at', NEW.created_at,
            'event_id', NEW.event_id,
            'order_id', NEW.order_id,
            'consumer', NEW.consumer,
            'attempt', NEW.attempt,
            'error', NEW.error
        )
    );
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;
