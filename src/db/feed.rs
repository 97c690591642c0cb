//! The `feed` table: every pipeline event and final delivery outcome, in
//! cursor order, written by triggers (see the migration for why its id is a
//! gap-free cursor once settled, and `crate::feed` for the reader).

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Bool, Text};

use super::schema::feed;

/// The Postgres channel the feed triggers notify.
pub const CHANNEL: &str = "feed_inserted";

#[derive(Clone, Debug, Queryable, Selectable)]
#[diesel(table_name = feed, check_for_backend(diesel::pg::Pg))]
pub struct FeedRow {
    pub id: i64,
    pub routing_key: String,
    pub payload: serde_json::Value,
    pub created_at: DateTime<Utc>,
}

/// Rows with `after < id <= up_to`, in id order, at most `limit`.
pub fn between(
    conn: &mut PgConnection,
    after: i64,
    up_to: i64,
    limit: i64,
) -> QueryResult<Vec<FeedRow>> {
    feed::table
        .filter(feed::id.gt(after).and(feed::id.le(up_to)))
        .order(feed::id)
        .limit(limit)
        .select(FeedRow::as_select())
        .load(conn)
}

/// Rows written before `cutoff`: what `ordctl prune` deletes.
pub fn count_older_than(conn: &mut PgConnection, cutoff: DateTime<Utc>) -> QueryResult<i64> {
    feed::table
        .filter(feed::created_at.lt(cutoff))
        .count()
        .get_result(conn)
}

/// Deletes the rows written before `cutoff`; returns how many went. The
/// cursor sequence goes on, so later ids never repeat a deleted one.
pub fn delete_older_than(conn: &mut PgConnection, cutoff: DateTime<Utc>) -> QueryResult<i64> {
    diesel::delete(feed::table.filter(feed::created_at.lt(cutoff)))
        .execute(conn)
        .map(|deleted| deleted as i64)
}

/// The highest id handed out by the feed's sequence so far, committed or
/// not (sequences ignore transactions): 0 before the first row.
pub fn last_allocated(conn: &mut PgConnection) -> QueryResult<i64> {
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    diesel::sql_query("SELECT CASE WHEN is_called THEN last_value ELSE 0 END AS n FROM feed_id_seq")
        .get_result::<Row>(conn)
        .map(|row| row.n)
}

/// A fresh transaction id (`pg_current_xact_id()`, as text): every xid
/// assigned before this call is smaller. Must run as its own statement
/// after [`last_allocated`]. Costs one xid (this statement's transaction),
/// whose commit does not wait for the disk: it wrote nothing, and only the
/// id matters.
pub fn fresh_xid(conn: &mut PgConnection) -> QueryResult<String> {
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = Text)]
        xid: String,
    }
    diesel::sql_query(
        "SELECT pg_current_xact_id()::text AS xid, \
             set_config('synchronous_commit', 'off', true) AS lazily",
    )
    .get_result::<Row>(conn)
    .map(|row| row.xid)
}

/// Whether every transaction older than `xid` has ended (committed or
/// aborted): then nothing any of them wrote can still appear.
pub fn settled(conn: &mut PgConnection, xid: &str) -> QueryResult<bool> {
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = Bool)]
        settled: bool,
    }
    diesel::sql_query("SELECT pg_snapshot_xmin(pg_current_snapshot()) > $1::xid8 AS settled")
        .bind::<Text, _>(xid)
        .get_result::<Row>(conn)
        .map(|row| row.settled)
}
