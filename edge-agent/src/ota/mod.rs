//! Over-the-air updates at the edge: the hub decides what each stage runs.
//!
//! - [`config`]: `[ota]` in `agent.toml` (trusted hub keys, the hub's HTTP
//!   address, the cache's bound).
//! - [`plan`]: what a verified desired state changes, as plain data.
//! - [`fetch`]: manifests and files from the hub's HTTP API, resumable.
//! - [`cache`]: content-addressed artifacts in `data_dir/ota/artifacts`.
//! - [`applied`]: what was applied, persisted, and laid over `agent.toml`
//!   at start-up and on SIGHUP.
//! - [`reconciler`]: the task that carries it out and reports each phase.
//!
//! Without `[ota]` none of this runs: the agent does not subscribe to its
//! desired state and runs what its file says.

pub mod applied;
pub mod cache;
pub mod config;
pub mod fetch;
pub mod plan;
pub mod reconciler;

pub use applied::Applied;
pub use config::OtaConfig;
pub use reconciler::{OtaShared, Reconciler};

use std::sync::{Arc, Mutex};

use crate::config::AgentConfig;

/// The OTA state of an agent about to start: `agent.toml` and what the hub
/// applied. `None` without `[ota]`.
pub fn shared_for(config: &AgentConfig) -> Option<Arc<OtaShared>> {
    let ota = config.ota.clone()?;
    Some(Arc::new(OtaShared {
        base: Mutex::new(config.clone()),
        applied: Mutex::new(Applied::load(&config.data_dir)),
        cache: cache::ArtifactCache::new(&config.data_dir),
        config: ota,
    }))
}
