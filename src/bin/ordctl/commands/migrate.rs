//! `ordctl migrate`

use ordctl::db;
use ordctl::secrets::redact;
use serde::Serialize;

use super::Ctx;
use crate::output;

/// Create the database if missing and apply the embedded migrations.
///
/// Idempotent: a second run applies nothing. Example: `ordctl migrate`
#[derive(clap::Args)]
pub struct Args {}

#[derive(Serialize)]
struct Migrated {
    database: String,
    created_database: bool,
    applied: Vec<String>,
}

impl Args {
    pub fn run(self, ctx: &Ctx) -> anyhow::Result<()> {
        let url = &ctx.settings.database_url;
        let created_database = db::create_database_if_missing(url)?;
        let applied = db::run_migrations(&mut db::connect(url)?)?;
        let result = Migrated {
            database: redact(url),
            created_database,
            applied,
        };
        if ctx.json {
            return output::json(&result);
        }
        if result.created_database {
            output::line(format!("created database {}", result.database))?;
        }
        if result.applied.is_empty() {
            return output::line("database is up to date: no migrations to apply");
        }
        for name in &result.applied {
            output::line(format!("applied {name}"))?;
        }
        Ok(())
    }
}
