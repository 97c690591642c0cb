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
        message_id -> Text,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        sent_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    orders (id) {
        id -> Int8,
        user_id -> Int8,
        amount_minor -> Int8,
        currency -> Text,
        created_at -> Timestamptz,
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
    users (id) {
        id -> Int8,
        name -> Text,
        email -> Text,
        created_at -> Timestamptz,
    }
}

diesel::joinable!(delivery_attempts -> orders (order_id));
diesel::joinable!(notifications -> orders (order_id));
diesel::joinable!(orders -> users (user_id));
diesel::joinable!(outbox -> orders (order_id));

diesel::allow_tables_to_appear_in_same_query!(
    delivery_attempts,
    notifications,
    orders,
    outbox,
    users,
);
