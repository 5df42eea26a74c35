//! Fleet rollouts: a new model or transform given to a stage on many
//! devices in waves, each wave soaked and gated, rolled back by itself
//! when a gate fails or too many devices do.
//!
//! - [`waves`]: `1,10%,50%,100%`, parsed and resolved against a target.
//! - [`machine`]: the rollout state machine, plain data (time and events
//!   in, actions out), tested without I/O and persisted as it is.
//!
//! - [`gates`]: what a soaking device must hold (accuracy against the
//!   model it replaced, heartbeats, no restarts), judged from a sample.
//! - [`shadow`]: the gate a candidate must hold running beside a
//!   device's model before it takes over (agreement, errors).
//! - [`store`]: each rollout persisted whole after every step.
//! - [`figures`]: the gates' figures over time, summed over the devices
//!   judged (what the dashboard charts).
//! - [`driver`]: feeds the machines (reports, the clock, operators'
//!   commands) and does what they ask (sets desired states through
//!   [`crate::ota::deploy::set_and_publish`]).
//!
//! The HTTP routes are in `api_rollouts.rs`, the CLI in
//! `ota_cli/rollout.rs`.

pub mod driver;
pub mod figures;
pub mod gates;
pub mod machine;
pub mod shadow;
pub mod store;
pub mod waves;

pub use machine::{Action, DevicePhase, Event, Policy, Rollout, State};
