-- The live feed `ordctl serve` streams at GET /events: one row per pipeline
-- event (every outbox row, whatever its routing key) and per final delivery
-- outcome (sent, dead-lettered), in the order the feed's readers hand them
-- out. Rows are written only by the triggers below, never directly.
--
-- Why the id is a safe cursor although transactions commit out of order:
-- a trigger row is inserted AFTER the outbox/delivery_attempts row, so its
-- transaction already has an xid when it draws its id from feed_id_seq. A
-- reader that reads the sequence's last_value L and THEN draws a fresh xid
-- N knows every id <= L belongs to a transaction older than N. Once
-- pg_snapshot_xmin(pg_current_snapshot()) > N all of those have ended
-- (committed and visible, or aborted: a hole forever), so ids <= L never
-- change again and can be handed out without a gap (see src/feed.rs).
CREATE TABLE feed (
    id          BIGSERIAL PRIMARY KEY,
    routing_key TEXT NOT NULL,
    payload     JSONB NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Wakes feed readers (LISTEN feed_inserted) as soon as rows commit.
CREATE FUNCTION feed_from_outbox() RETURNS trigger AS $$
BEGIN
    INSERT INTO feed (routing_key, payload) VALUES (NEW.routing_key, NEW.payload);
    PERFORM pg_notify('feed_inserted', '');
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER outbox_to_feed
    AFTER INSERT ON outbox
    FOR EACH ROW EXECUTE FUNCTION feed_from_outbox();

-- Only the final outcomes: retries and duplicates are noise on a dashboard
-- (`ordctl trace` shows them).
CREATE FUNCTION feed_from_delivery_attempt() RETURNS trigger AS $$
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

CREATE TRIGGER delivery_attempts_to_feed
    AFTER INSERT ON delivery_attempts
    FOR EACH ROW
    WHEN (NEW.outcome IN ('sent', 'dead'))
    EXECUTE FUNCTION feed_from_delivery_attempt();
