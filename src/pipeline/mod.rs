//! The use cases, one module each; the binary's subcommands call these.

pub mod orders;
pub mod place_order;
pub mod products;
pub mod prune;
pub mod publishing;
pub mod purge;
pub mod reconcile;
pub mod relay;
pub mod replay;
pub mod seed;
pub mod status;
pub mod trace;
pub mod worker;

use crate::config::Settings;
use crate::messaging::topology::Topology;

/// The namespace's topology with every registered consumer.
pub fn topology(settings: &Settings) -> Topology {
    let mut topology = Topology::new(settings.namespace.clone(), crate::consumers::specs());
    topology.queue_type = settings.queue_type;
    topology
}
