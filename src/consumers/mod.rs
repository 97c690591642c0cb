//! The pipeline's consumers, registered in one list. The topology, the
//! worker, `status`, `trace`, `tail-queue` and `replay-dlq` all read
//! [`REGISTRY`], so adding a consumer is one module with a [`Consume`]
//! (its [`ConsumerSpec`], its events and its effect), plus one line here.

pub mod delivery;
pub mod handler;
pub mod notifications;
pub mod payments;
pub mod staff_alerts;

use crate::error::InvalidInput;
use crate::messaging::topology::ConsumerSpec;

pub use handler::{Consume, Consumer, Deps, Logged};

/// Every consumer of the pipeline.
pub const REGISTRY: &[Consumer] = &[
    notifications::CONSUMER,
    payments::CONSUMER,
    staff_alerts::CONSUMER,
];

/// The specs of every registered consumer, in registry order.
pub fn specs() -> Vec<ConsumerSpec> {
    REGISTRY.iter().map(|consumer| consumer.spec).collect()
}

/// Looks up consumers by name, e.g. from `--consumers notifications,payments`.
pub fn select(names: &[String]) -> Result<Vec<&'static Consumer>, InvalidInput> {
    if names.is_empty() {
        return Ok(REGISTRY.iter().collect());
    }
    let mut selected: Vec<&'static Consumer> = Vec::new();
    for name in names {
        let consumer = find(name)?;
        if !selected
            .iter()
            .any(|known| known.spec.name == consumer.spec.name)
        {
            selected.push(consumer);
        }
    }
    Ok(selected)
}

/// The consumer called `name`; an unknown name is invalid input that lists
/// the known ones.
pub fn find(name: &str) -> Result<&'static Consumer, InvalidInput> {
    REGISTRY
        .iter()
        .find(|consumer| consumer.spec.name == name)
        .ok_or_else(|| {
            let known: Vec<&str> = REGISTRY.iter().map(|c| c.spec.name).collect();
            InvalidInput::new(format!(
                "unknown consumer {name:?}: expected one of {}",
                known.join(", ")
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consumer_names_are_unique_and_valid_queue_suffixes() {
        let names: Vec<&str> = REGISTRY.iter().map(|c| c.spec.name).collect();
        let mut unique = names.clone();
        unique.dedup();
        assert_eq!(names, unique);
        for name in names {
            assert!(
                name.bytes().all(|b| b.is_ascii_lowercase() || b == b'-'),
                "{name}"
            );
        }
    }

    #[test]
    fn selecting_consumers_rejects_unknown_names_and_drops_repeats() {
        assert_eq!(select(&[]).unwrap().len(), REGISTRY.len());
        let picked = select(&["notifications".into(), "notifications".into()]).unwrap();
        assert_eq!(picked.len(), 1);
        let Err(error) = select(&["nope".into()]) else {
            panic!("an unknown consumer was accepted");
        };
        assert!(
            error.to_string().contains("unknown consumer \"nope\""),
            "{error}"
        );
    }
}
