//! The `[log]` table of `agent.toml`.

use serde::{Deserialize, Serialize};

use crate::config::{ConfigError, ConfigErrors};

/// What to do when the log reaches `max_bytes`, or its disk is full, or
/// it cannot be written at all.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FullPolicy {
    /// Delete the oldest records (counted) to make room: telemetry. When
    /// nothing can be written, new readings are dropped (counted).
    #[default]
    DropOldest,
    /// Stop taking readings until the hub acknowledges (or the disk has
    /// room again): back-pressure.
    Block,
}

/// The `[log]` table of `agent.toml`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// Bound on the records held, in bytes (encoded size).
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,
    /// Records older than this (by source timestamp) are dropped and
    /// counted. Unset: no age bound.
    pub max_age_secs: Option<u64>,
    #[serde(default)]
    pub full_policy: FullPolicy,
    /// The storage engine's page cache: what the log may keep in memory, bytes.
    #[serde(default = "default_cache_bytes")]
    pub cache_bytes: u64,
}

fn default_max_bytes() -> u64 {
    256 * 1024 * 1024
}
fn default_cache_bytes() -> u64 {
    4 * 1024 * 1024
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            max_bytes: default_max_bytes(),
            max_age_secs: None,
            full_policy: FullPolicy::default(),
            cache_bytes: default_cache_bytes(),
        }
    }
}

impl LogConfig {
    /// Checks every field; reports all the problems.
    pub fn validate(&self) -> Result<(), ConfigErrors> {
        let mut found = Vec::new();
        if self.max_bytes < 4096 {
            found.push(ConfigError::invalid(
                "log.max_bytes",
                format!("must be at least 4096, got {}", self.max_bytes),
            ));
        }
        if self.max_age_secs == Some(0) {
            found.push(ConfigError::invalid(
                "log.max_age_secs",
                "must be at least 1 (or left out)",
            ));
        }
        if self.cache_bytes < 64 * 1024 {
            found.push(ConfigError::invalid(
                "log.cache_bytes",
                format!("must be at least 65536, got {}", self.cache_bytes),
            ));
        }
        ConfigErrors::check(found)
    }
}
