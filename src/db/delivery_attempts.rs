//! The `delivery_attempts` table: one row per attempt, the history behind
//! the latest state kept in `notifications`.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use serde::Serialize;
use uuid::Uuid;

use super::schema::delivery_attempts;
use crate::domain::{AttemptOutcome, OrderId};

#[derive(Insertable)]
#[diesel(table_name = delivery_attempts)]
pub struct NewAttempt<'a> {
    pub event_id: Uuid,
    pub consumer: &'a str,
    pub order_id: OrderId,
    pub attempt: i32,
    pub outcome: AttemptOutcome,
    pub error: Option<&'a str>,
    pub smtp_reply: Option<&'a str>,
}

#[derive(Clone, Debug, Queryable, Selectable, Serialize)]
#[diesel(table_name = delivery_attempts, check_for_backend(diesel::pg::Pg))]
pub struct Attempt {
    pub event_id: Uuid,
    pub consumer: String,
    pub attempt: i32,
    pub outcome: AttemptOutcome,
    pub error: Option<String>,
    pub smtp_reply: Option<String>,
    pub created_at: DateTime<Utc>,
}

pub fn record(conn: &mut PgConnection, attempt: &NewAttempt<'_>) -> QueryResult<usize> {
    diesel::insert_into(delivery_attempts::table)
        .values(attempt)
        .execute(conn)
}

/// Records many attempts in one statement.
pub fn record_many(conn: &mut PgConnection, attempts: &[NewAttempt<'_>]) -> QueryResult<usize> {
    diesel::insert_into(delivery_attempts::table)
        .values(attempts)
        .execute(conn)
}

/// An order's attempts, oldest first.
pub fn for_order(conn: &mut PgConnection, order_id: OrderId) -> QueryResult<Vec<Attempt>> {
    delivery_attempts::table
        .filter(delivery_attempts::order_id.eq(order_id))
        .order(delivery_attempts::id)
        .select(Attempt::as_select())
        .load(conn)
}
