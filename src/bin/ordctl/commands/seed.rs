//! `ordctl seed`

use ordctl::{db, pipeline};

use super::Ctx;
use crate::output;

/// Create demo users (idempotent) and print them.
///
/// Example: `ordctl seed --users 10`
#[derive(clap::Args)]
pub struct Args {
    /// How many demo users: user1@example.com … userN@example.com.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    users: u32,
}

impl Args {
    pub fn run(self, ctx: &Ctx) -> anyhow::Result<()> {
        let users =
            pipeline::seed::seed(&mut db::connect(&ctx.settings.database_url)?, self.users)?;
        if ctx.json {
            return output::json(&users);
        }
        let mut table = output::table(["id", "name", "email"]);
        for user in &users {
            table.add_row(vec![
                user.id.to_string(),
                user.name.clone(),
                user.email.clone(),
            ]);
        }
        output::line(table)
    }
}
