//! The shared harness of the integration tests: one isolated [`TestEnv`] per
//! test — its own database, namespace, working directory and real SMTP sink
//! — that runs the real `ordctl` binary against the real PostgreSQL,
//! RabbitMQ and Redis, and removes everything it created when dropped.
//!
//! Its parts: [`env`] (the services and [`TestEnv`]), [`run`] (running the
//! binary, reading its JSON), [`smtp`] (the SMTP sink and its emails),
//! [`orders`] (products, orders and their rows). From a test module:
//!
//! ```ignore
//! let env = common::TestEnv::new();
//! env.migrate_and_seed();
//! let placed = env.place_order(3, "42", &[]); // `place-order --json` output
//! env.run_worker(&[]); // until idle
//! assert_eq!(env.emails().len(), 1);
//! ```

pub mod env;
pub mod orders;
pub mod run;
pub mod smtp;

pub use env::*;
pub use run::*;
pub use smtp::*;
