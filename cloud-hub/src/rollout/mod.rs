//! Fleet rollouts: a new model or transform given to a stage on many
//! devices in waves, each wave soaked and gated, rolled back by itself
//! when a gate fails or too many devices do.
//!
//! - [`waves`]: `1,10%,50%,100%`, parsed and resolved against a target.
//! - [`machine`]: the rollout state machine, plain data (time and events
//!   in, actions out), tested without I/O and persisted as it is.
//!
//! The driver that feeds the machine (reports, ticks, commands) and does
//! what it asks (signs and publishes desired states through
//! [`crate::ota::devices::DeviceStore::set`]) lives beside them.

pub mod machine;
pub mod waves;

pub use machine::{Action, DevicePhase, Event, Policy, Rollout, State};
