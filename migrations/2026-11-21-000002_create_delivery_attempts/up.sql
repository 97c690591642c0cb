-- Every attempt to deliver an event, in order: what `ordctl trace` shows.
-- `notifications` keeps the latest state; this keeps the history.
CREATE TABLE delivery_attempts (
    id          BIGSERIAL PRIMARY KEY,
    event_id    UUID NOT NULL,
    order_id    BIGINT NOT NULL REFERENCES orders (id),
    attempt     INTEGER NOT NULL,
    outcome     TEXT NOT NULL CHECK (outcome IN ('sent', 'duplicate', 'retrying', 'dead', 'replayed')),
    error       TEXT,
    smtp_reply  TEXT,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX delivery_attempts_order_id_idx ON delivery_attempts (order_id, id);
