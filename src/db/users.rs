//! The `users` table.

use diesel::prelude::*;

use super::models::{NewUser, User};
use super::schema::users;
use crate::domain::UserId;

pub fn find(conn: &mut PgConnection, id: UserId) -> QueryResult<Option<User>> {
    users::table
        .find(id)
        .select(User::as_select())
        .first(conn)
        .optional()
}

/// Inserts the users whose email is not taken yet, then returns all of the
/// given emails' users in id order: running it twice changes nothing.
pub fn ensure(conn: &mut PgConnection, new_users: &[NewUser<'_>]) -> QueryResult<Vec<User>> {
    diesel::insert_into(users::table)
        .values(new_users)
        .on_conflict(users::email)
        .do_nothing()
        .execute(conn)?;
    let emails: Vec<&str> = new_users.iter().map(|user| user.email).collect();
    users::table
        .filter(users::email.eq_any(emails))
        .order(users::id)
        .select(User::as_select())
        .load(conn)
}

pub fn all_ids(conn: &mut PgConnection) -> QueryResult<Vec<UserId>> {
    users::table.order(users::id).select(users::id).load(conn)
}
