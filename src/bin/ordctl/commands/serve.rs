//! `ordctl serve`

use std::net::SocketAddr;

use ordctl::http::credentials::AdminToken;
use ordctl::http::{self, ServeOptions};
use ordctl::shutdown::Shutdown;

use super::Ctx;

/// Serve the HTTP API and the live admin dashboard until SIGINT/SIGTERM
/// (then finish in-flight requests and exit 0).
///
/// Example: `ORDCTL_ADMIN_TOKEN=s3cret-admin ordctl serve --listen 127.0.0.1:8080`,
/// then open http://127.0.0.1:8080/ and
/// `curl -d '{"user_id": 3, "amount": "42.00"}' http://127.0.0.1:8080/orders`
#[derive(clap::Args)]
pub struct Args {
    /// Address and port to listen on (port 0: any free port, logged at start).
    #[arg(long, env = "ORDCTL_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,

    /// Token for the admin routes and the dashboard's login (at least 8
    /// characters). Unset: one is generated and printed once at start-up.
    /// Prefer the environment variable: flags show up in `ps`.
    #[arg(long, env = "ORDCTL_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,

    /// PostgreSQL connections: how many orders are placed at once.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(2..=256))]
    pool_size: u32,
}

impl Args {
    pub fn run(self, ctx: &Ctx, shutdown: &Shutdown) -> anyhow::Result<()> {
        let admin_token = match self.admin_token.as_deref() {
            Some(raw) => AdminToken::parse(raw)?,
            None => {
                let token = AdminToken::generate();
                // Once, on stderr, and not through the logger: a log
                // shipper never sees it.
                eprintln!(
                    "admin token (generated; set ORDCTL_ADMIN_TOKEN to choose one): {}",
                    token.reveal()
                );
                token
            }
        };
        let options = ServeOptions {
            listen: self.listen,
            admin_token,
            pool_size: self.pool_size,
        };
        http::serve(&ctx.settings, options, shutdown)
    }
}
