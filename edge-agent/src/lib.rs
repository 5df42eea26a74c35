//! Conveyor's edge agent.
//!
//! Data flows one way through it: [`sources`] produce readings, the
//! [`pipeline`] transforms them, and the [`uplink`] gives them sequence
//! numbers ([`seq`]) and streams them to the hub in batches. [`agent`]
//! wires those together from an [`config::AgentConfig`]; [`cli`] is the
//! command line. See ARCHITECTURE.md for the invariants.

pub mod agent;
pub mod cli;
pub mod config;
mod mqtt_client;
pub mod pipeline;
pub mod seq;
pub mod signal;
pub mod sources;
pub mod uplink;
