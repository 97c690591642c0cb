// @generated automatically by Diesel CLI.

diesel::table! {
    delivery_attempts (id) {
        id -> Int8,
        event_id -> Uuid,
        order_id -> Int8,
        attempt -> Int4,
        outcome -> Text,
        error -> Nullable<Text>,
        smtp_reply -> Nullable<Text>,
        created_at -> Timestamptz,
        consumer -> Text,
    }
}

diesel::table! {
    feed (id) {
        id -> Int8,
        routing_key -> Text,
        payload -> Jsonb,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    notifications (id) {
        id -> Int8,
        event_id -> Uuid,
        order_id -> Int8,
        status -> Text,
        attempts -> Int4,
        last_error -> Nullable<Text>,
        smtp_reply -> Nullable<Text>,
        message_id -> Nullable<Text>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        sent_at -> Nullable<Timestamptz>,
        consumer -> Text,
    }
}

diesel::table! {
    order_items (order_id, product_id) {
        order_id -> Int8,
        product_id -> Int8,
        quantity -> Int4,
        unit_price_minor -> Int8,
    }
}

diesel::table! {
    orders (id) {
        id -> Int8,
        user_id -> Int8,
        amount_minor -> Int8,
        currency -> Text,
        created_at -> Timestamptz,
        status -> Text,
        updated_at -> Timestamptz,
        idempotency_key -> Nullable<Text>,
    }
}

diesel::table! {
    outbox (id) {
        id -> Int8,
        event_id -> Uuid,
        order_id -> Int8,
        routing_key -> Text,
        payload -> Jsonb,
        created_at -> Timestamptz,
        published_at -> Nullable<Timestamptz>,
        attempts -> Int4,
        last_error -> Nullable<Text>,
    }
}

diesel::table! {
    payments (id) {
        id -> Int8,
        order_id -> Int8,
        event_id -> Uuid,
        status -> Text,
        amount_minor -> Int8,
        currency -> Text,
        reference -> Text,
        decline_reason -> Nullable<Text>,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    products (id) {
        id -> Int8,
        name -> Text,
        price_minor -> Int8,
        currency -> Text,
        stock -> Int4,
        low_stock_threshold -> Int4,
        threshold_fixed -> Bool,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    users (id) {
        id -> Int8,
        name -> Text,
        email -> Text,
        created_at -> Timestamptz,
    }
}

diesel::joinable!(delivery_attempts -> orders (order_id));
diesel::joinable!(notifications -> orders (order_id));
diesel::joinable!(order_items -> orders (order_id));
diesel::joinable!(order_items -> products (product_id));
diesel::joinable!(orders -> users (user_id));
diesel::joinable!(outbox -> orders (order_id));
diesel::joinable!(payments -> orders (order_id));

diesel::allow_tables_to_appear_in_same_query!(
    delivery_attempts,
    feed,
    notifications,
    order_items,
    orders,
    outbox,
    payments,
    products,
    users,
);
