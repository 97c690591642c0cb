//! Demo users for trying the pipeline out.

use diesel::PgConnection;

use crate::db::models::{NewUser, User};
use crate::db::users;

/// Creates demo users 1..=n (`user{i}@example.com`) unless they exist, and
/// returns them: running it twice changes nothing.
pub fn seed(conn: &mut PgConnection, n: u32) -> anyhow::Result<Vec<User>> {
    let rows: Vec<(String, String)> = (1..=n)
        .map(|i| (format!("Demo User {i}"), format!("user{i}@example.com")))
        .collect();
    let new_users: Vec<NewUser<'_>> = rows
        .iter()
        .map(|(name, email)| NewUser { name, email })
        .collect();
    let mut created = Vec::with_capacity(new_users.len());
    // Bounded statements: Postgres allows 65535 bind parameters per query.
    for chunk in new_users.chunks(10_000) {
        created.extend(users::ensure(conn, chunk)?);
    }
    Ok(created)
}
