//! Hand-written SQL that diesel prepares once per connection and then only
//! executes. diesel never caches `sql_query`, an UPDATE, an upsert or an
//! insert of `Insertable` structs: each call is parsed and planned again,
//! which on the delivery path was a quarter of PostgreSQL's time. A
//! [`prepared`] statement is cached under its SQL text. Statements over
//! many rows take arrays (`unnest`), so their text is the same whatever
//! the batch's size.
//!
//! Except statements that find rows by such an array: those are
//! [`planned_each_time`].

use std::marker::PhantomData;

use diesel::pg::Pg;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::result::Error as DieselError;
use diesel::serialize::ToSql;
use diesel::sql_types::{HasSqlType, Untyped};
use diesel::{QueryResult, RunQueryDsl};

/// `sql` with its binds, run like any diesel query (`execute`, `load` into
/// `QueryableByName` rows). Its placeholders are `$1`, `$2`, … in order,
/// each once.
pub struct Prepared<B> {
    sql: &'static str,
    binds: B,
}

/// `sql` with `binds`, a tuple of [`bind`]s (or `()`).
pub fn prepared<B: Binds>(sql: &'static str, binds: B) -> Prepared<B> {
    Prepared { sql, binds }
}

/// One value bound as SQL type `ST`.
pub struct Bind<ST, T> {
    value: T,
    sql_type: PhantomData<ST>,
}

pub fn bind<ST, T>(value: T) -> Bind<ST, T> {
    Bind {
        value,
        sql_type: PhantomData,
    }
}

/// The binds of a [`Prepared`] statement.
pub trait Binds {
    /// How many values there are.
    fn count(&self) -> usize;

    /// Binds the `n`th value (from 0) where its placeholder is.
    fn push<'b>(&'b self, n: usize, out: AstPass<'_, 'b, Pg>) -> QueryResult<()>;
}

impl Binds for () {
    fn count(&self) -> usize {
        0
    }

    fn push<'b>(&'b self, n: usize, _out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        Err(mismatch(format!("no value for placeholder ${}", n + 1)))
    }
}

macro_rules! tuple_binds {
    ($($n:tt: $ST:ident $T:ident),+) => {
        impl<$($ST, $T),+> Binds for ($(Bind<$ST, $T>,)+)
        where
            $(Pg: HasSqlType<$ST>, $T: ToSql<$ST, Pg>,)+
        {
            fn count(&self) -> usize {
                [$($n),+].len()
            }

            fn push<'b>(&'b self, n: usize, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
                match n {
                    $($n => out.push_bind_param::<$ST, $T>(&self.$n.value),)+
                    _ => Err(mismatch(format!("no value for placeholder ${}", n + 1))),
                }
            }
        }
    };
}

tuple_binds!(0: S0 T0);
tuple_binds!(0: S0 T0, 1: S1 T1);
tuple_binds!(0: S0 T0, 1: S1 T1, 2: S2 T2);
tuple_binds!(0: S0 T0, 1: S1 T1, 2: S2 T2, 3: S3 T3);
tuple_binds!(0: S0 T0, 1: S1 T1, 2: S2 T2, 3: S3 T3, 4: S4 T4);
tuple_binds!(0: S0 T0, 1: S1 T1, 2: S2 T2, 3: S3 T3, 4: S4 T4, 5: S5 T5);
tuple_binds!(0: S0 T0, 1: S1 T1, 2: S2 T2, 3: S3 T3, 4: S4 T4, 5: S5 T5, 6: S6 T6);
tuple_binds!(0: S0 T0, 1: S1 T1, 2: S2 T2, 3: S3 T3, 4: S4 T4, 5: S5 T5, 6: S6 T6, 7: S7 T7);
tuple_binds!(0: S0 T0, 1: S1 T1, 2: S2 T2, 3: S3 T3, 4: S4 T4, 5: S5 T5, 6: S6 T6, 7: S7 T7, 8: S8 T8);

fn mismatch(problem: String) -> DieselError {
    DieselError::QueryBuilderError(problem.into())
}

impl<B: Binds> QueryFragment<Pg> for Prepared<B> {
    /// The SQL with each `$n` replaced by its bind (diesel writes the same
    /// `$n` back); it says nothing against caching, unlike `sql_query`.
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        let mut rest = self.sql;
        let mut n = 0;
        while let Some(at) = rest.find('$') {
            out.push_sql(&rest[..at]);
            let digits = rest[at + 1..]
                .bytes()
                .take_while(u8::is_ascii_digit)
                .count();
            if rest[at + 1..at + 1 + digits].parse::<usize>() != Ok(n + 1) {
                return Err(mismatch(format!(
                    "placeholder {} where ${} was expected",
                    &rest[at..at + 1 + digits],
                    n + 1
                )));
            }
            self.binds.push(n, out.reborrow())?;
            n += 1;
            rest = &rest[at + 1 + digits..];
        }
        out.push_sql(rest);
        if n != self.binds.count() {
            return Err(mismatch(format!(
                "{} values for {n} placeholders",
                self.binds.count()
            )));
        }
        Ok(())
    }
}

/// Not a static id: the statement cache keys it by its SQL text.
impl<B> QueryId for Prepared<B> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<B> Query for Prepared<B> {
    type SqlType = Untyped;
}

impl<B, Conn> RunQueryDsl<Conn> for Prepared<B> {}

/// A statement PostgreSQL plans for its values each time it runs, for
/// statements that find rows by an array of keys (`id = ANY($1)`, a join
/// on `unnest`). A prepared statement's plan is made once per connection
/// from the table's size at that moment: made while a table was small (a
/// new database, a worker or server started on it), such a statement costs
/// least as a sequential scan, and that plan is kept as the table grows,
/// until autovacuum's next ANALYZE. On a new database the worker's batches
/// then scanned `notifications`, `payments` and `orders` whole, and every
/// publishing round the whole outbox (2,849 scans reading 15 million rows
/// in 15 s of `POST /orders`). diesel sends this one unprepared, in one
/// round trip (`PQsendQueryParams`); it is parsed and planned per batch,
/// not per message, while the foreign-key checks and triggers it fires keep
/// their cached plans.
pub fn planned_each_time<Q>(query: Q) -> PlannedEachTime<Q> {
    PlannedEachTime(query)
}

pub struct PlannedEachTime<Q>(Q);

impl<Q: QueryFragment<Pg>> QueryFragment<Pg> for PlannedEachTime<Q> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        out.unsafe_to_cache_prepared();
        self.0.walk_ast(out)
    }
}

impl<Q> QueryId for PlannedEachTime<Q> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<Q: Query> Query for PlannedEachTime<Q> {
    type SqlType = Q::SqlType;
}

impl<Q, Conn> RunQueryDsl<Conn> for PlannedEachTime<Q> {}

#[cfg(test)]
mod tests {
    use super::*;
    use diesel::sql_types::{Array, BigInt, Text};

    fn sql(statement: &impl QueryFragment<Pg>) -> QueryResult<String> {
        let mut builder = diesel::pg::PgQueryBuilder::default();
        statement.to_sql(&mut builder, &Pg)?;
        Ok(diesel::query_builder::QueryBuilder::finish(builder))
    }

    #[test]
    fn placeholders_keep_their_numbers() {
        let statement = prepared(
            "UPDATE t SET a = $1 WHERE b = ANY($2)",
            (bind::<Text, _>("x"), bind::<BigInt, _>(7i64)),
        );
        assert_eq!(
            sql(&statement).unwrap(),
            "UPDATE t SET a = $1 WHERE b = ANY($2)"
        );
    }

    #[test]
    fn statements_planned_each_time_are_not_cached() {
        let ids = vec![1i64, 2];
        let plain = prepared(
            "UPDATE t SET a = 1 WHERE b = ANY($1)",
            (bind::<Array<BigInt>, _>(&ids),),
        );
        assert!(plain.is_safe_to_cache_prepared(&Pg).unwrap());
        let each_time = planned_each_time(prepared(
            "UPDATE t SET a = 1 WHERE b = ANY($1)",
            (bind::<Array<BigInt>, _>(&ids),),
        ));
        assert!(!each_time.is_safe_to_cache_prepared(&Pg).unwrap());
        assert_eq!(
            sql(&each_time).unwrap(),
            "UPDATE t SET a = 1 WHERE b = ANY($1)"
        );
    }

    #[test]
    fn placeholders_out_of_order_or_miscounted_are_errors() {
        let swapped = prepared(
            "SELECT $2, $1",
            (bind::<Text, _>("x"), bind::<Text, _>("y")),
        );
        let missing = prepared("SELECT $1, $2", (bind::<Text, _>("x"),));
        let extra = prepared("SELECT 1", (bind::<Text, _>("x"),));
        for statement in [sql(&swapped).err(), sql(&missing).err(), sql(&extra).err()] {
            assert!(statement.is_some());
        }
    }
}
