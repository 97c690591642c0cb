//! The use cases, one module each; the binary's subcommands call these.

pub mod notify;
pub mod place_order;
pub mod relay;
pub mod seed;
pub mod status;
pub mod worker;

use crate::domain::Namespace;
use crate::messaging::topology::Topology;

/// The namespace's topology with every consumer the pipeline has.
pub fn topology(namespace: Namespace) -> Topology {
    Topology::new(namespace, vec![notify::SPEC])
}
