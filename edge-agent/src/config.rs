//! The agent's configuration file (`agent.toml`) and its validation.
//!
//! Parsing is strict (`deny_unknown_fields`): a misspelt key is an error
//! naming the key and its line, not a silently ignored setting. Semantic
//! checks that need more than one field (or the file system) run in
//! [`AgentConfig::validate`] and in each component's `build`; both report
//! the dotted path of the offending field, e.g. `sources[1].rate`.

use std::path::{Path, PathBuf};

use conveyor_shared::config_file::{parse_toml, read_toml, ConfigFileError};
use conveyor_shared::{BrokerUrl, DeviceId};
use serde::Deserialize;
use thiserror::Error;

use crate::sources::SourceConfig;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// This device's id: the `<device_id>` of every topic it uses.
    pub device_id: DeviceId,
    /// Where the agent keeps its state (the durable log). Created if missing.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    pub uplink: UplinkConfig,
    /// The durable local log (in `data_dir/log`).
    #[serde(default)]
    pub log: crate::log::LogConfig,
    /// Where records come from; at least one.
    #[serde(default)]
    pub sources: Vec<SourceConfig>,
    /// Processing stages between the sources and the uplink, applied in
    /// order (`type = "transform"`: WASM transforms; `type = "inference"`).
    #[serde(default)]
    pub stages: Vec<crate::pipeline::StageConfig>,
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("agent-data")
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UplinkConfig {
    /// The hub's MQTT broker, e.g. `mqtt://127.0.0.1:1883`.
    pub url: BrokerUrl,
    /// Flush a batch once it holds this many records.
    #[serde(default = "default_batch_max_records")]
    pub batch_max_records: usize,
    /// Flush a non-empty batch after this long, milliseconds.
    #[serde(default = "default_batch_max_delay_ms")]
    pub batch_max_delay_ms: u64,
    /// Publish a heartbeat with the agent's metrics this often, seconds.
    #[serde(default = "default_heartbeat_secs")]
    pub heartbeat_secs: f64,
    /// MQTT keep-alive, seconds.
    #[serde(default = "default_keep_alive_secs")]
    pub keep_alive_secs: u64,
    /// Batches sent but not yet acknowledged by the hub, at most: the
    /// hub's back-pressure on the agent.
    #[serde(default = "default_max_unacked_batches")]
    pub max_unacked_batches: usize,
    /// Re-send from the oldest unacknowledged record when the hub has not
    /// acknowledged a batch for this long, milliseconds.
    #[serde(default = "default_ack_timeout_ms")]
    pub ack_timeout_ms: u64,
}

fn default_max_unacked_batches() -> usize {
    16
}
fn default_ack_timeout_ms() -> u64 {
    5000
}

fn default_batch_max_records() -> usize {
    200
}
fn default_batch_max_delay_ms() -> u64 {
    20
}
fn default_heartbeat_secs() -> f64 {
    5.0
}
fn default_keep_alive_secs() -> u64 {
    10
}

/// A configuration problem, with the path of the field at fault.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error(transparent)]
    File(#[from] ConfigFileError),
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
}

impl ConfigError {
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl AgentConfig {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let mut config: AgentConfig = read_toml(path)?;
        config.validate()?;
        // Relative paths in the file are relative to the file, not to
        // wherever the agent happens to be started.
        if let Some(dir) = path.parent() {
            config.resolve_paths(dir);
        }
        Ok(config)
    }

    /// Parses and validates config text (paths stay as written).
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let config: AgentConfig = parse_toml(text, Path::new("<config>"))?;
        config.validate()?;
        Ok(config)
    }

    fn resolve_paths(&mut self, base: &Path) {
        if self.data_dir.is_relative() {
            self.data_dir = base.join(&self.data_dir);
        }
        for source in &mut self.sources {
            source.resolve_paths(base);
        }
        for stage in &mut self.stages {
            stage.resolve_paths(base);
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let u = &self.uplink;
        if u.batch_max_records == 0 || u.batch_max_records > 10_000 {
            return Err(ConfigError::invalid(
                "uplink.batch_max_records",
                format!("must be between 1 and 10000, got {}", u.batch_max_records),
            ));
        }
        if u.batch_max_delay_ms == 0 || u.batch_max_delay_ms > 60_000 {
            return Err(ConfigError::invalid(
                "uplink.batch_max_delay_ms",
                format!("must be between 1 and 60000, got {}", u.batch_max_delay_ms),
            ));
        }
        if !(u.heartbeat_secs.is_finite() && u.heartbeat_secs >= 0.1) {
            return Err(ConfigError::invalid(
                "uplink.heartbeat_secs",
                format!("must be at least 0.1, got {}", u.heartbeat_secs),
            ));
        }
        if u.keep_alive_secs == 0 {
            return Err(ConfigError::invalid(
                "uplink.keep_alive_secs",
                "must be at least 1 (seconds)",
            ));
        }
        if u.max_unacked_batches == 0 || u.max_unacked_batches > 1000 {
            return Err(ConfigError::invalid(
                "uplink.max_unacked_batches",
                format!("must be between 1 and 1000, got {}", u.max_unacked_batches),
            ));
        }
        if u.ack_timeout_ms < 100 {
            return Err(ConfigError::invalid(
                "uplink.ack_timeout_ms",
                format!("must be at least 100, got {}", u.ack_timeout_ms),
            ));
        }
        self.log.validate()?;
        if self.sources.is_empty() {
            return Err(ConfigError::invalid(
                "sources",
                "at least one source is required (add a [[sources]] table)",
            ));
        }
        let mut names = std::collections::HashSet::new();
        for (i, source) in self.sources.iter().enumerate() {
            let field = format!("sources[{i}]");
            source.validate(&field)?;
            if !names.insert(source.name()) {
                return Err(ConfigError::invalid(
                    format!("{field}.name"),
                    format!(
                        "source name {:?} is used twice; names must be unique",
                        source.name()
                    ),
                ));
            }
        }
        for (i, stage) in self.stages.iter().enumerate() {
            stage.validate(&format!("stages[{i}]"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
        device_id = "watch-01"
        [uplink]
        url = "mqtt://127.0.0.1:1883"
        [[sources]]
        type = "http"
        name = "env"
        listen = "127.0.0.1:0"
        fields = ["temperature"]
    "#;

    fn err(text: &str) -> String {
        AgentConfig::from_toml(text).unwrap_err().to_string()
    }

    #[test]
    fn a_good_config_parses_with_defaults() {
        let c = AgentConfig::from_toml(GOOD).unwrap();
        assert_eq!(c.device_id.as_str(), "watch-01");
        assert_eq!(c.uplink.batch_max_records, 200);
        assert_eq!(c.uplink.url.port, 1883);
        assert_eq!(c.sources.len(), 1);
    }

    #[test]
    fn errors_name_the_field() {
        let e = err(&GOOD.replace("watch-01", "watch 01"));
        assert!(e.contains("device_id") && e.contains("' '"), "{e}");
        let e = err(&GOOD.replace("mqtt://127.0.0.1:1883", "http://x"));
        assert!(e.contains("url") && e.contains("scheme"), "{e}");
        let e = err(&GOOD.replace("[uplink]", "[uplink]\nbatch_max_records = 0"));
        assert!(e.contains("uplink.batch_max_records"), "{e}");
        let e = err(&GOOD.replace("[uplink]", "[uplink]\nbatch_size = 3"));
        assert!(e.contains("unknown field `batch_size`"), "{e}");
        let e = err(&GOOD.replace("type = \"http\"", "type = \"ftp\""));
        assert!(e.contains("unknown variant `ftp`"), "{e}");
        let e = err(&GOOD.replace("fields = [\"temperature\"]", "fields = []"));
        assert!(e.contains("sources[0].fields"), "{e}");
        let e = err(r#"
            device_id = "d"
            [uplink]
            url = "mqtt://127.0.0.1:1"
        "#);
        assert!(e.contains("sources") && e.contains("at least one"), "{e}");
    }

    #[test]
    fn duplicate_source_names_are_refused() {
        let twice = format!("{GOOD}\n[[sources]]\ntype = \"http\"\nname = \"env\"\nlisten = \"127.0.0.1:0\"\nfields = [\"x\"]\n");
        assert!(err(&twice).contains("sources[1].name"));
    }
}
