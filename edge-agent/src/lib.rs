//! Conveyor's edge agent.
//!
//! Data flows one way through it: [`sources`] produce readings, the
//! [`pipeline`] transforms them ([`transform`] runs sandboxed WASM
//! transforms, [`inference`] turns windows into predictions), the durable [`log`] gives them sequence
//! numbers and keeps them, and the [`uplink`] streams the log to the hub,
//! deleting only what the hub acknowledges. [`agent`]
//! wires those together from an [`config::AgentConfig`]; [`cli`] is the
//! command line. See ARCHITECTURE.md for the invariants.

pub mod agent;
pub mod cli;
pub mod config;
pub mod inference;
pub mod log;
pub mod ota;
pub mod pipeline;
pub mod reload;
pub mod sources;
pub mod transform;
pub mod uplink;
