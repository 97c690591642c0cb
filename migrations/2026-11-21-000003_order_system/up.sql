-- The order system around the email: products with stock, the items of an
-- order, its status and payment, and a delivery log kept per consumer.

CREATE TABLE products (
    id                  BIGSERIAL PRIMARY KEY,
    name                TEXT NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    price_minor         BIGINT NOT NULL CHECK (price_minor > 0),
    currency            TEXT NOT NULL DEFAULT 'USD' CHECK (currency ~ '^[A-Z]{3}$'),
    -- Stock is taken by a conditional UPDATE in the order's transaction;
    -- the CHECK is the backstop that makes overselling impossible.
    stock               INTEGER NOT NULL CHECK (stock >= 0),
    low_stock_threshold INTEGER NOT NULL CHECK (low_stock_threshold >= 0),
    -- false: the threshold follows the stock (half of it after each add or
    -- restock); true: it was set explicitly and stays.
    threshold_fixed     BOOLEAN NOT NULL DEFAULT false,
    created_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at          TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE order_items (
    order_id         BIGINT NOT NULL REFERENCES orders (id),
    product_id       BIGINT NOT NULL REFERENCES products (id),
    quantity         INTEGER NOT NULL CHECK (quantity > 0),
    -- The price when the order was placed; later price changes do not move it.
    unit_price_minor BIGINT NOT NULL CHECK (unit_price_minor > 0),
    PRIMARY KEY (order_id, product_id)
);

CREATE INDEX order_items_product_id_idx ON order_items (product_id);

ALTER TABLE orders
    ADD COLUMN status TEXT NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'paid', 'shipped', 'delivered', 'cancelled')),
    ADD COLUMN updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- A client's Idempotency-Key: the same key places one order, ever.
    ADD COLUMN idempotency_key TEXT UNIQUE;

CREATE INDEX orders_status_idx ON orders (status, id);

-- One payment per order, whatever redelivers the order.created event: the
-- unique order_id is what makes charging idempotent.
CREATE TABLE payments (
    id             BIGSERIAL PRIMARY KEY,
    order_id       BIGINT NOT NULL UNIQUE REFERENCES orders (id),
    event_id       UUID NOT NULL,
    status         TEXT NOT NULL CHECK (status IN ('succeeded', 'declined')),
    amount_minor   BIGINT NOT NULL CHECK (amount_minor > 0),
    currency       TEXT NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    -- The (simulated) gateway's reference for the charge or the decline.
    reference      TEXT NOT NULL,
    decline_reason TEXT,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- The delivery log and its attempts are per consumer: the same event is
-- handled once by each consumer bound to it.
ALTER TABLE notifications ADD COLUMN consumer TEXT NOT NULL DEFAULT 'notifications';
ALTER TABLE notifications ALTER COLUMN consumer DROP DEFAULT;
ALTER TABLE notifications DROP CONSTRAINT notifications_event_id_key;
ALTER TABLE notifications ADD CONSTRAINT notifications_event_id_consumer_key UNIQUE (event_id, consumer);
-- Only email consumers have a Message-ID.
ALTER TABLE notifications ALTER COLUMN message_id DROP NOT NULL;

ALTER TABLE delivery_attempts ADD COLUMN consumer TEXT NOT NULL DEFAULT 'notifications';
ALTER TABLE delivery_attempts ALTER COLUMN consumer DROP DEFAULT;
