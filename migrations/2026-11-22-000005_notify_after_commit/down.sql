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
    PERFORM pg_notify('feed_inserted', '');
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE OR REPLACE FUNCTION feed_from_outbox() RETURNS trigger AS $$
BEGIN
    INSERT INTO feed (routing_key, payload) VALUES (NEW.routing_key, NEW.payload);
    PERFORM pg_notify('feed_inserted', '');
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE FUNCTION outbox_notify() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('outbox_inserted', '');
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER outbox_notify_on_insert
    AFTER INSERT ON outbox
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();
