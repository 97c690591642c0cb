//! One module per subcommand: an `Args` struct (its clap doc comments are
//! the help text) and a `run` that calls one library function and prints.

mod bench;
mod completions;
mod doctor;
mod man;
mod migrate;
mod order;
mod place_order;
mod product;
mod prune;
mod purge;
mod reconcile;
mod relay;
mod replay_dlq;
mod seed;
mod serve;
mod status;
mod tail_queue;
mod trace;
mod worker;

use ordctl::config::Settings;
use ordctl::messaging::topology::Topology;
use ordctl::pipeline;
use ordctl::shutdown::Shutdown;

/// What every subcommand gets: validated settings and the output mode.
pub struct Ctx {
    pub settings: Settings,
    pub json: bool,
}

impl Ctx {
    pub fn topology(&self) -> Topology {
        pipeline::topology(&self.settings)
    }
}

#[derive(clap::Subcommand)]
pub enum Command {
    Bench(bench::Args),
    Migrate(migrate::Args),
    Seed(seed::Args),
    PlaceOrder(place_order::Args),
    Order(order::Args),
    Product(product::Args),
    Relay(relay::Args),
    ReplayDlq(replay_dlq::Args),
    Serve(serve::Args),
    Worker(worker::Args),
    Status(status::Args),
    TailQueue(tail_queue::Args),
    Trace(trace::Args),
    Doctor(doctor::Args),
    Purge(purge::Args),
    Prune(prune::Args),
    Reconcile(reconcile::Args),
    Completions(completions::Args),
    Man(man::Args),
}

impl Command {
    /// Whether SIGINT/SIGTERM should finish in-flight work rather than kill.
    pub fn stops_gracefully(&self) -> bool {
        match self {
            Self::Worker(_)
            | Self::Relay(_)
            | Self::Serve(_)
            | Self::TailQueue(_)
            | Self::Bench(_) => true,
            Self::Status(args) => args.watches(),
            _ => false,
        }
    }

    pub fn run(self, ctx: &Ctx, shutdown: &Shutdown) -> anyhow::Result<()> {
        match self {
            Self::Bench(args) => args.run(ctx, shutdown),
            Self::Migrate(args) => args.run(ctx),
            Self::Seed(args) => args.run(ctx),
            Self::PlaceOrder(args) => args.run(ctx),
            Self::Order(args) => args.run(ctx),
            Self::Product(args) => args.run(ctx),
            Self::Relay(args) => args.run(ctx, shutdown),
            Self::ReplayDlq(args) => args.run(ctx),
            Self::Serve(args) => args.run(ctx, shutdown),
            Self::Worker(args) => args.run(ctx, shutdown),
            Self::Status(args) => args.run(ctx, shutdown),
            Self::TailQueue(args) => args.run(ctx, shutdown),
            Self::Trace(args) => args.run(ctx),
            Self::Doctor(args) => args.run(ctx),
            Self::Purge(args) => args.run(ctx),
            Self::Prune(args) => args.run(ctx),
            Self::Reconcile(args) => args.run(ctx),
            Self::Completions(args) => args.run(),
            Self::Man(args) => args.run(),
        }
    }
}
