//! Conveyor's hub.
//!
//! Messages arrive from the device side (`conveyor_transport`: embedded
//! rumqttd, or an external broker), go through [`ingest`] into the [`store`] and the device
//! [`registry`], and are served by the [`api`] with [`metrics`]. [`hub`]
//! starts and stops all of it from a [`config::HubConfig`] (the
//! `conveyor-demo` package runs a hub with real edge agents). See
//! ARCHITECTURE.md for the invariants.

pub mod api;
pub mod api_artifacts;
pub mod api_audit;
pub mod api_auth;
pub mod api_desired;
pub mod api_fleet;
pub mod api_identities;
pub mod api_results;
pub mod api_rollouts;
pub mod api_tags;
pub mod audit;
pub mod cascade;
pub mod config;
pub mod dashboard;
pub mod fleet;
pub mod fluvio;
pub mod https;
pub mod hub;
pub mod identity;
pub mod identity_cli;
pub mod inference;
pub mod ingest;
pub mod journal;
pub mod keys;
pub mod metrics;
pub mod ota;
pub mod ota_cli;
pub mod registry;
pub mod rollout;
pub mod store;
pub mod tls;
pub mod trend;
