//! Conveyor's end-to-end tests, one module per scenario, in one test
//! binary: each `tests/*.rs` file used to be a binary of its own, and each
//! linked the whole stack (and ran the harness's `cargo build` of the
//! binaries once more). Run one scenario with
//! `cargo test -p conveyor-e2e --test e2e faults::`.

mod aarch64;
mod bad_input;
mod boundaries;
mod cascade;
mod dashboard;
mod demo;
mod edge_inference;
mod edge_storage_faults;
mod exactly_once;
mod faults;
mod fluvio;
mod keys;
mod ota;
mod ota_faults;
mod ota_hub;
mod rollouts;
mod security;
mod sources_and_brokers;
mod storage_faults;
mod third_party_clients;
mod tls;
mod wasm_transforms;
