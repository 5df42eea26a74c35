//! The agent's configuration file (`agent.toml`) and its validation.
//!
//! Parsing is strict (`deny_unknown_fields`): a misspelt key is an error
//! naming the key and its line, not a silently ignored setting. Semantic
//! checks that need more than one field (or the file system) run in
//! [`AgentConfig::validate`] and in each component's `build`; both report
//! the dotted path of the offending field, e.g. `sources[1].rate`, and
//! both report every problem they find, not just the first
//! ([`ConfigErrors`], shared with the hub): `validate` checks every field,
//! then, if they are all valid, `Agent::build` builds every component.

use std::path::{Path, PathBuf};

use conveyor_shared::config_file::{parse_toml, read_toml};
pub use conveyor_shared::config_file::{ConfigError, ConfigErrors};
use conveyor_shared::uplink_url::{check_topic_name, FluvioTopics};
use conveyor_shared::{BrokerUrl, DeviceId, UplinkUrl};
use conveyor_transport::tls::ClientTls;
use serde::{Deserialize, Serialize};

use crate::sources::SourceConfig;

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
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
    /// Labels the hub selects devices by (`cloud-hub deploy --tag
    /// store=7`), reported in the agent's state.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub tags: std::collections::BTreeMap<String, String>,
    /// Over-the-air updates from the hub. Without it the agent runs what
    /// this file says and ignores the hub's desired state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ota: Option<crate::ota::OtaConfig>,
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("agent-data")
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UplinkConfig {
    /// The hub's MQTT broker, e.g. `mqtt://127.0.0.1:1883`, or
    /// `mqtts://hub.example:8883` over TLS (with `ca_file`); or a Fluvio
    /// cluster, `fluvio://127.0.0.1:9003` (a build with the `fluvio`
    /// feature; its topics in `[uplink.fluvio]`).
    pub url: UplinkUrl,
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
    /// The device's secret (`cloud-hub device add` writes it), which it
    /// proves itself with at connect (username: its device id); also its
    /// key to the hub's artifact downloads. Relative to this file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// The CA (PEM) the hub's certificate must be signed by, for an
    /// `mqtts://` url and an `https://` `[ota] url`: the agent trusts this
    /// file and nothing else (`cloud-hub device add` copies the hub's own
    /// CA beside the secret). Relative to this file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// With a `fluvio://` url: the records and downlink topics (the hub's
    /// `[fluvio]` names the same).
    #[serde(default, skip_serializing_if = "is_default")]
    pub fluvio: FluvioTopics,
}

fn is_default<T: Default + PartialEq>(t: &T) -> bool {
    *t == T::default()
}

impl UplinkConfig {
    /// The uplink to the hub at `url`, every other setting at its default.
    pub fn new(url: impl Into<UplinkUrl>) -> Self {
        UplinkConfig {
            url: url.into(),
            batch_max_records: default_batch_max_records(),
            batch_max_delay_ms: default_batch_max_delay_ms(),
            heartbeat_secs: default_heartbeat_secs(),
            keep_alive_secs: default_keep_alive_secs(),
            max_unacked_batches: default_max_unacked_batches(),
            ack_timeout_ms: default_ack_timeout_ms(),
            password_file: None,
            ca_file: None,
            fluvio: FluvioTopics::default(),
        }
    }

    /// The secret in `password_file` (trimmed), if one is set: a missing,
    /// unreadable or empty file is a config error naming the field.
    pub fn secret(&self) -> Result<Option<String>, ConfigError> {
        let Some(path) = &self.password_file else {
            return Ok(None);
        };
        let field = "uplink.password_file";
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::invalid(field, format!("cannot read {}: {e}", path.display()))
        })?;
        let secret = text.trim();
        if secret.is_empty() || secret.len() > 1024 || secret.chars().any(char::is_control) {
            return Err(ConfigError::invalid(
                field,
                format!(
                    "{} does not hold a secret (one line, as `cloud-hub device add` writes it)",
                    path.display()
                ),
            ));
        }
        Ok(Some(secret.to_string()))
    }

    /// The CA in `ca_file`, if one is set: a missing file, or one without
    /// a certificate, is a config error naming the field.
    pub fn tls(&self) -> Result<Option<ClientTls>, ConfigError> {
        let Some(path) = &self.ca_file else {
            return Ok(None);
        };
        ClientTls::from_ca_file(path)
            .map(Some)
            .map_err(|e| ConfigError::invalid("uplink.ca_file", e.to_string()))
    }
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

impl AgentConfig {
    /// Reads, parses and validates a config file: a file that does not
    /// parse is one error (with its line); one that does is checked whole
    /// and every invalid field is reported.
    pub fn load(path: &Path) -> Result<Self, ConfigErrors> {
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
    pub fn from_toml(text: &str) -> Result<Self, ConfigErrors> {
        let config: AgentConfig = parse_toml(text, Path::new("<config>"))?;
        config.validate()?;
        Ok(config)
    }

    fn resolve_paths(&mut self, base: &Path) {
        if self.data_dir.is_relative() {
            self.data_dir = base.join(&self.data_dir);
        }
        for p in [&mut self.uplink.password_file, &mut self.uplink.ca_file]
            .into_iter()
            .flatten()
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        for source in &mut self.sources {
            source.resolve_paths(base);
        }
        for stage in &mut self.stages {
            stage.resolve_paths(base);
        }
    }

    /// Checks every field that can be checked without I/O and reports all
    /// the problems found.
    pub fn validate(&self) -> Result<(), ConfigErrors> {
        let mut found = Vec::new();
        let mut invalid =
            |field: &str, message: String| found.push(ConfigError::invalid(field, message));
        let u = &self.uplink;
        if u.batch_max_records == 0 || u.batch_max_records > 10_000 {
            invalid(
                "uplink.batch_max_records",
                format!("must be between 1 and 10000, got {}", u.batch_max_records),
            );
        }
        if u.batch_max_delay_ms == 0 || u.batch_max_delay_ms > 60_000 {
            invalid(
                "uplink.batch_max_delay_ms",
                format!("must be between 1 and 60000, got {}", u.batch_max_delay_ms),
            );
        }
        if !(u.heartbeat_secs.is_finite() && u.heartbeat_secs >= 0.1) {
            invalid(
                "uplink.heartbeat_secs",
                format!("must be at least 0.1, got {}", u.heartbeat_secs),
            );
        }
        if u.keep_alive_secs == 0 {
            invalid(
                "uplink.keep_alive_secs",
                "must be at least 1 (seconds)".into(),
            );
        }
        if u.max_unacked_batches == 0 || u.max_unacked_batches > 1000 {
            invalid(
                "uplink.max_unacked_batches",
                format!("must be between 1 and 1000, got {}", u.max_unacked_batches),
            );
        }
        if u.ack_timeout_ms < 100 {
            invalid(
                "uplink.ack_timeout_ms",
                format!("must be at least 100, got {}", u.ack_timeout_ms),
            );
        }
        if let UplinkUrl::Fluvio(url) = &u.url {
            if !conveyor_transport::FLUVIO {
                invalid(
                    "uplink.url",
                    format!("{url} needs the Fluvio transport, which this edge-agent was built without (cargo feature `fluvio`)"),
                );
            }
            if u.ca_file.is_some()
                && self
                    .ota
                    .as_ref()
                    .is_none_or(|o| !o.url.starts_with("https://"))
            {
                invalid(
                    "uplink.ca_file",
                    "a Fluvio link is plain TCP (its TLS is not built); remove ca_file or use mqtts://".into(),
                );
            }
        }
        for (field, name) in [
            ("uplink.fluvio.records", &u.fluvio.records),
            ("uplink.fluvio.downlink", &u.fluvio.downlink),
        ] {
            if let Err(e) = check_topic_name(name) {
                invalid(field, format!("is not a Fluvio topic name: {e}"));
            }
        }
        if u.url.tls() && u.ca_file.is_none() {
            invalid(
                "uplink.ca_file",
                "is required with an mqtts:// url: the CA (PEM) that signed the hub's certificate \
                 (`cloud-hub device add` writes the hub's own beside the secret, hub-ca.pem)"
                    .into(),
            );
        }
        ConfigErrors::gather(self.log.validate(), &mut found);
        if self.sources.is_empty() {
            found.push(ConfigError::invalid(
                "sources",
                "at least one source is required (add a [[sources]] table)",
            ));
        }
        let mut names = std::collections::HashSet::new();
        for (i, source) in self.sources.iter().enumerate() {
            let field = format!("sources[{i}]");
            ConfigErrors::gather(source.validate(&field), &mut found);
            if !names.insert(source.name()) {
                found.push(ConfigError::invalid(
                    format!("{field}.name"),
                    format!(
                        "source name {:?} is used twice; names must be unique",
                        source.name()
                    ),
                ));
            }
        }
        let mut stage_names = std::collections::HashSet::new();
        for (i, stage) in self.stages.iter().enumerate() {
            ConfigErrors::gather(stage.validate(&format!("stages[{i}]")), &mut found);
            if !stage_names.insert(stage.name(i)) {
                found.push(ConfigError::invalid(
                    format!("stages[{i}].name"),
                    format!(
                        "stage name {:?} is used twice; names must be unique (the hub's desired state names stages)",
                        stage.name(i)
                    ),
                ));
            }
        }
        for (k, v) in &self.tags {
            let plain = |s: &str| {
                !s.is_empty()
                    && s.len() <= 64
                    && s.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
            };
            if !plain(k) || !plain(v) {
                found.push(ConfigError::invalid(
                    format!("tags.{k}"),
                    "tag names and values are 1-64 of A-Z a-z 0-9 . _ -",
                ));
            }
        }
        if let Some(ota) = &self.ota {
            ConfigErrors::gather(ota.validate("ota"), &mut found);
            if ota.url.starts_with("https://") && self.uplink.ca_file.is_none() {
                found.push(ConfigError::invalid(
                    "ota.url",
                    "an https:// hub needs uplink.ca_file: the CA (PEM) that signed the hub's certificate",
                ));
            }
        }
        ConfigErrors::check(found)
    }
}

/// Writing configs from code (the e2e tests, the demo): typed values
/// rendered to the very file the agent reads, e.g. (not a doctest, which
/// would be one more binary to link: the unit test
/// `typed_configs_round_trip_through_toml` runs this and more)
///
/// ```text
/// use edge_agent::config::AgentConfig;
/// use edge_agent::sources::ReplayConfig;
///
/// let config = AgentConfig::for_device("watch-1")
///     .uplink("mqtt://127.0.0.1:1884")
///     .data_dir("state")
///     .source(ReplayConfig {
///         rate: Some(200.0),
///         ..ReplayConfig::new("motion", "BasicMotions_TEST.ts")
///     });
/// let toml = config.to_toml();
/// assert_eq!(AgentConfig::from_toml(&toml).unwrap(), config);
/// ```
///
/// The constructors and setters panic on an invalid device id or URL: they
/// are for programs that write configs they know, not for user input
/// (which goes through [`AgentConfig::load`]). Settings without a setter
/// are public fields (`config.uplink.ack_timeout_ms = 1000`).
impl AgentConfig {
    /// Device `id`, sending to a hub's broker at its default address
    /// (`mqtt://127.0.0.1:1883`), every setting at its default, no
    /// sources or stages yet.
    pub fn for_device(id: &str) -> Self {
        AgentConfig {
            device_id: DeviceId::new(id)
                .unwrap_or_else(|e| panic!("{id:?} is not a device id: {e}")),
            data_dir: default_data_dir(),
            uplink: UplinkConfig::new(BrokerUrl {
                host: "127.0.0.1".into(),
                port: 1883,
                tls: false,
            }),
            log: Default::default(),
            sources: Vec::new(),
            stages: Vec::new(),
            tags: Default::default(),
            ota: None,
        }
    }

    /// Sends to the hub at `url` (`mqtt://host:port`, `fluvio://host:port`).
    pub fn uplink(mut self, url: &str) -> Self {
        self.uplink.url =
            UplinkUrl::parse(url).unwrap_or_else(|e| panic!("{url:?} is not an uplink URL: {e}"));
        self
    }

    /// Changes the other uplink settings.
    pub fn uplink_with(mut self, change: impl FnOnce(&mut UplinkConfig)) -> Self {
        change(&mut self.uplink);
        self
    }

    /// Keeps its state in `dir` (relative to the config file).
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = dir.into();
        self
    }

    pub fn log(mut self, log: crate::log::LogConfig) -> Self {
        self.log = log;
        self
    }

    /// Adds a source (a [`crate::sources::ReplayConfig`], ...).
    pub fn source(mut self, source: impl Into<SourceConfig>) -> Self {
        self.sources.push(source.into());
        self
    }

    /// Adds a stage after the others (a [`crate::inference::InferenceConfig`], ...).
    pub fn stage(mut self, stage: impl Into<crate::pipeline::StageConfig>) -> Self {
        self.stages.push(stage.into());
        self
    }

    /// The config as `agent.toml` text, which [`AgentConfig::load`] reads
    /// back to an equal config. Valid or not: it is checked when read.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("an agent config is representable in TOML")
    }
}

/// A small valid config (one HTTP source, device `d1`) with `extra`
/// TOML appended (stages, usually): the unit tests' common fixture.
#[cfg(test)]
pub(crate) fn test_config(extra: &str) -> AgentConfig {
    AgentConfig::from_toml(&format!(
        r#"
        device_id = "d1"
        [uplink]
        url = "mqtt://127.0.0.1:1883"
        [[sources]]
        type = "http"
        name = "motion"
        listen = "127.0.0.1:0"
        fields = ["x"]
        {extra}
        "#
    ))
    .unwrap()
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
        assert_eq!(c.uplink.url.mqtt().map(|u| u.port), Some(1883));
        assert_eq!(c.sources.len(), 1);
    }

    #[test]
    fn the_device_secret_is_read_from_its_file_and_a_bad_one_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let mut u = UplinkConfig::new(BrokerUrl::parse("mqtt://127.0.0.1:1883").unwrap());
        assert_eq!(u.secret().unwrap(), None);
        u.password_file = Some(dir.path().join("missing.secret"));
        let e = u.secret().unwrap_err().to_string();
        assert!(e.starts_with("uplink.password_file: cannot read"), "{e}");
        let f = dir.path().join("d.secret");
        std::fs::write(&f, "\n  \n").unwrap();
        u.password_file = Some(f.clone());
        assert!(u
            .secret()
            .unwrap_err()
            .to_string()
            .contains("does not hold a secret"));
        std::fs::write(&f, "cvd_abc\n").unwrap();
        assert_eq!(u.secret().unwrap().as_deref(), Some("cvd_abc"));
        // Relative to the config file.
        let c = AgentConfig::load(&{
            let p = dir.path().join("agent.toml");
            std::fs::write(
                &p,
                GOOD.replace("[uplink]", "[uplink]\npassword_file = \"d.secret\""),
            )
            .unwrap();
            p
        })
        .unwrap();
        assert_eq!(c.uplink.password_file.as_deref(), Some(f.as_path()));
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
    fn every_invalid_field_is_reported_at_once() {
        let three = GOOD
            .replace(
                "[uplink]",
                "[uplink]\nbatch_max_records = 0\nack_timeout_ms = 5",
            )
            .replace("fields = [\"temperature\"]", "fields = []");
        let e = AgentConfig::from_toml(&three).unwrap_err();
        let fields: Vec<&str> = e.fields().iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "uplink.batch_max_records",
                "uplink.ack_timeout_ms",
                "sources[0].fields"
            ]
        );
        let text = e.to_string();
        assert_eq!(text.lines().count(), 3, "{text}");
        assert!(text.contains("must be at least 100, got 5"), "{text}");
        // A syntax error is still one error, with its line.
        let e = err(&GOOD.replace("[uplink]", "[uplink\nbatch_max_records = 0"));
        assert!(e.contains("line 3"), "{e}");
    }

    /// Every config type written and read back: nothing lost, nothing
    /// added, every field (defaults and options too) through the strict
    /// parser.
    #[test]
    fn typed_configs_round_trip_through_toml() {
        use crate::inference::InferenceConfig;
        use crate::log::{FullPolicy, LogConfig};
        use crate::sources::{HttpSourceConfig, MqttSourceConfig, ReplayConfig};
        use crate::transform::{ChainEntry, OnDisabled, TransformStageConfig};

        let minimal = AgentConfig::for_device("d1").source(HttpSourceConfig::new(
            "env",
            "127.0.0.1:0".parse().unwrap(),
            &["t"],
        ));
        let full = AgentConfig::for_device("watch-01")
            .uplink("mqtt://[::1]:1884")
            .uplink_with(|u| {
                u.batch_max_records = 64;
                u.heartbeat_secs = 0.25;
                u.ack_timeout_ms = 1000;
            })
            .data_dir("state")
            .log(LogConfig {
                max_bytes: 65536,
                max_age_secs: Some(60),
                full_policy: FullPolicy::Block,
                ..Default::default()
            })
            .source(ReplayConfig {
                stream: Some("m".into()),
                rate: Some(0.0),
                sample_rate_hz: Some(10.0),
                looping: true,
                limit: Some(1000),
                ..ReplayConfig::new("motion", "data/x.ts")
            })
            .source(MqttSourceConfig {
                timestamp_field: Some("ts_ms".into()),
                client_id: Some("c".into()),
                ..MqttSourceConfig::new(
                    "vibration",
                    BrokerUrl::parse("mqtt://127.0.0.1:1").unwrap(),
                    "plant/+/vibration",
                    &["rms", "peak"],
                )
            })
            .source(HttpSourceConfig {
                path: "/in".into(),
                keep_payload: true,
                ..HttpSourceConfig::new("pos", "127.0.0.1:8181".parse().unwrap(), &[])
            })
            .stage(InferenceConfig {
                name: Some("classifier".into()),
                stream: Some("m".into()),
                output_stream: Some("m.p".into()),
                stride: Some(10),
                forward_readings: true,
                escalate_below: Some(0.9),
                escalate_to: Some("hub-model".into()),
                ..InferenceConfig::new("models/edge.int8.json")
            })
            .stage(TransformStageConfig {
                name: Some("prep".into()),
                batch_size: 1,
                on_disabled: OnDisabled::Drop,
                ..TransformStageConfig::new(
                    "pos",
                    vec![
                        ChainEntry::new("a.wasm"),
                        ChainEntry::new("b.wasm")
                            .with("scale", 1.5)
                            .with("tag", "x"),
                    ],
                )
            });
        for config in [minimal, full] {
            let text = config.to_toml();
            let back = AgentConfig::from_toml(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
            assert_eq!(back, config, "{text}");
            // And a written file reads back the same (what the agent does).
            assert_eq!(back.to_toml(), text);
        }
        // A hand-written file survives the trip too.
        let c = AgentConfig::from_toml(GOOD).unwrap();
        assert_eq!(AgentConfig::from_toml(&c.to_toml()).unwrap(), c);
    }

    #[test]
    fn duplicate_source_names_are_refused() {
        let twice = format!("{GOOD}\n[[sources]]\ntype = \"http\"\nname = \"env\"\nlisten = \"127.0.0.1:0\"\nfields = [\"x\"]\n");
        assert!(err(&twice).contains("sources[1].name"));
    }
}
