//! ordctl: an event-driven order-notification pipeline on PostgreSQL,
//! RabbitMQ, Redis and SMTP.
//!
//! An order and its outbox event are committed in one transaction, published
//! to RabbitMQ with a publisher confirm (or later by the relay), consumed by a
//! worker that looks the customer up through a Redis cache and sends a
//! confirmation email. The `ordctl` binary is a thin shell over this crate:
//! every process role is one subcommand.

pub mod cache;
pub mod config;
pub mod consumers;
pub mod db;
pub mod doctor;
pub mod domain;
pub mod error;
pub mod fanout;
pub mod feed;
pub mod http;
pub mod mail;
pub mod messaging;
pub mod orders;
pub mod pipeline;
pub mod reconnect;
pub mod secrets;
pub mod send_rate;
pub mod shutdown;
