//! `[inference]` in `hub.toml`: the device and the models the hub serves.
//!
//! ```toml
//! [inference]
//! device = "cpu"            # or "cuda" (a build with the `cuda` feature and a GPU)
//!
//! [[inference.models]]
//! metadata = "models/basicmotions/hub.fp32.json"
//! max_batch = 8             # most windows per model call
//! max_delay_ms = 5          # longest a request waits for others to join
//! workers = 2               # threads running batches of this model
//! queue = 1024              # requests waiting before new ones are refused
//! ```

use std::path::{Path, PathBuf};

use conveyor_shared::ConfigError;
use serde::Deserialize;

use super::backend::Device;

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InferenceConfig {
    #[serde(default)]
    pub device: Device,
    #[serde(default)]
    pub models: Vec<ServedModelConfig>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServedModelConfig {
    /// The model's metadata file; the ONNX file it names sits beside it.
    /// Relative to the config file.
    pub metadata: PathBuf,
    #[serde(default = "default_max_batch")]
    pub max_batch: usize,
    #[serde(default = "default_max_delay_ms")]
    pub max_delay_ms: u64,
    #[serde(default = "default_workers")]
    pub workers: usize,
    #[serde(default = "default_queue")]
    pub queue: usize,
}

impl ServedModelConfig {
    /// A model with the default batching limits.
    pub fn new(metadata: impl Into<PathBuf>) -> Self {
        ServedModelConfig {
            metadata: metadata.into(),
            max_batch: default_max_batch(),
            max_delay_ms: default_max_delay_ms(),
            workers: default_workers(),
            queue: default_queue(),
        }
    }
}

/// On a CPU, batches beyond 8-32 windows bring no throughput and cost
/// latency (tract slows down at 128): BENCHMARKS.md, hub inference.
fn default_max_batch() -> usize {
    8
}
fn default_max_delay_ms() -> u64 {
    5
}
fn default_workers() -> usize {
    2
}
fn default_queue() -> usize {
    1024
}

/// Largest `max_batch` accepted.
pub const MAX_BATCH_LIMIT: usize = 4096;

impl InferenceConfig {
    pub fn resolve_paths(&mut self, base: &Path) {
        for m in &mut self.models {
            if m.metadata.is_relative() {
                m.metadata = base.join(&m.metadata);
            }
        }
    }

    /// Checks the numbers; adds every problem (with its dotted field) to
    /// `found`.
    pub fn validate(&self, found: &mut Vec<ConfigError>) {
        for (i, m) in self.models.iter().enumerate() {
            let mut invalid = |name: &str, message: String| {
                found.push(ConfigError::invalid(
                    format!("inference.models[{i}].{name}"),
                    message,
                ))
            };
            if m.metadata.as_os_str().is_empty() {
                invalid("metadata", "must not be empty".into());
            }
            if !(1..=MAX_BATCH_LIMIT).contains(&m.max_batch) {
                invalid(
                    "max_batch",
                    format!(
                        "must be between 1 and {MAX_BATCH_LIMIT}, got {}",
                        m.max_batch
                    ),
                );
            }
            if m.max_delay_ms > 10_000 {
                invalid(
                    "max_delay_ms",
                    format!("must be at most 10000 (10 s), got {}", m.max_delay_ms),
                );
            }
            if !(1..=256).contains(&m.workers) {
                invalid(
                    "workers",
                    format!("must be between 1 and 256, got {}", m.workers),
                );
            }
            if m.queue == 0 {
                invalid("queue", "must be at least 1".into());
            }
        }
    }
}
