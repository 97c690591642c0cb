//! The handlers, one module per resource.

pub mod dashboard;
pub mod events;
pub mod fields;
pub mod health;
pub mod orders;
pub mod products;
