//! The pipeline's consumers, registered in one list. The topology, the
//! worker, `status`, `trace`, `tail-queue` and `replay-dlq` all read
//! [`REGISTRY`], so adding a consumer is one module with a [`Handler`] and
//! its [`ConsumerSpec`], plus one line here.

pub mod delivery;
pub mod notifications;
pub mod payments;
pub mod staff_alerts;

use std::sync::Arc;

use lettre::message::Mailbox;

use crate::cache::{ProductCache, SentMarks, UserCache};
use crate::db::PgPool;
use crate::error::InvalidInput;
use crate::mail::Mailer;
use crate::messaging::consumer::Handler;
use crate::messaging::topology::ConsumerSpec;

/// What handlers are built from: the worker's shared resources and options.
pub struct Deps {
    pub db: PgPool,
    pub users: Arc<UserCache>,
    pub products: Arc<ProductCache>,
    pub mailer: Arc<Mailer>,
    /// Emails the SMTP server accepted, kept in Redis in case the `sent`
    /// row cannot be committed.
    pub sent_marks: Arc<SentMarks>,
    /// Sender of every email.
    pub from: Mailbox,
    /// Where `staff-alerts` sends low-stock alerts.
    pub staff: Mailbox,
    /// The simulated payment gateway's transient failure rate (0–1).
    pub payment_fail_rate: f64,
}

/// One registered consumer: what it subscribes to and how to build it.
pub struct Consumer {
    pub spec: ConsumerSpec,
    pub build: fn(&Deps) -> Box<dyn Handler>,
}

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
