//! Sources: where records come from.
//!
//! Each source lives in one file that owns its config struct, its
//! validation and its run loop; adding a source is one file plus one
//! variant in [`SourceConfig`]. A running source only ever talks to the
//! rest of the agent through its [`SourceOutput`]: it emits readings into
//! the pipeline's bounded channel (so a slow uplink slows the sources down
//! instead of growing memory) and counts what it had to reject.

mod http;
mod json_reading;
mod mqtt;
mod replay;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use conveyor_process::LogEvery;
use conveyor_shared::control::SourceStats;
use conveyor_shared::DeviceId;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};

use crate::config::{ConfigError, ConfigErrors};

pub use http::HttpSourceConfig;
pub use mqtt::MqttSourceConfig;
pub use replay::ReplayConfig;

/// One reading as a source produced it, before it gets a sequence number.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Reading {
    pub stream: Arc<str>,
    pub ts_us: i64,
    pub values: Vec<f64>,
    pub label: String,
    /// Set by an inference stage on the record it emits for a window.
    pub prediction: Option<conveyor_shared::Prediction>,
    /// An opaque document the source kept (e.g. a point-of-sale JSON).
    pub payload: Vec<u8>,
    /// `name@version` of each WASM transform that made this record, in order.
    pub transforms: Vec<Arc<str>>,
    /// Set by an inference stage on a prediction it was not sure enough
    /// of: the window for the hub's model (the edge-to-hub cascade).
    pub escalation: Option<conveyor_shared::Escalation>,
}

impl Reading {
    /// The wire record (its `seq` is assigned by the log).
    pub fn into_record(self) -> conveyor_shared::Record {
        conveyor_shared::Record {
            stream: self.stream.to_string(),
            seq: 0,
            source_ts_us: self.ts_us,
            values: self.values,
            label: self.label,
            prediction: self.prediction,
            payload: self.payload,
            transforms: self.transforms.iter().map(|t| t.to_string()).collect(),
            escalation: self.escalation,
        }
    }
}

/// The `[[sources]]` tables of `agent.toml`, told apart by `type`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum SourceConfig {
    /// Replays a recorded data file (UEA/UCR `.ts` or `.csv`).
    Replay(ReplayConfig),
    /// Subscribes to a local MQTT broker carrying JSON sensor readings.
    Mqtt(MqttSourceConfig),
    /// Accepts JSON readings POSTed over HTTP.
    Http(HttpSourceConfig),
}

impl From<ReplayConfig> for SourceConfig {
    fn from(c: ReplayConfig) -> Self {
        SourceConfig::Replay(c)
    }
}
impl From<MqttSourceConfig> for SourceConfig {
    fn from(c: MqttSourceConfig) -> Self {
        SourceConfig::Mqtt(c)
    }
}
impl From<HttpSourceConfig> for SourceConfig {
    fn from(c: HttpSourceConfig) -> Self {
        SourceConfig::Http(c)
    }
}

impl SourceConfig {
    pub fn name(&self) -> &str {
        match self {
            SourceConfig::Replay(c) => &c.name,
            SourceConfig::Mqtt(c) => &c.name,
            SourceConfig::Http(c) => &c.name,
        }
    }

    /// The stream name records of this source carry (defaults to the name).
    pub fn stream(&self) -> &str {
        let (stream, name) = match self {
            SourceConfig::Replay(c) => (&c.stream, &c.name),
            SourceConfig::Mqtt(c) => (&c.stream, &c.name),
            SourceConfig::Http(c) => (&c.stream, &c.name),
        };
        stream.as_deref().unwrap_or(name)
    }

    pub(crate) fn resolve_paths(&mut self, base: &Path) {
        if let SourceConfig::Replay(c) = self {
            if c.path.is_relative() {
                c.path = base.join(&c.path);
            }
        }
    }

    /// Checks that need no I/O; reports every problem. `field` is this
    /// source's path, `sources[i]`.
    pub fn validate(&self, field: &str) -> Result<(), ConfigErrors> {
        let mut found = Vec::new();
        if self.name().is_empty() {
            found.push(ConfigError::invalid(
                format!("{field}.name"),
                "must not be empty",
            ));
        }
        if self.stream().is_empty() {
            found.push(ConfigError::invalid(
                format!("{field}.stream"),
                "must not be empty",
            ));
        }
        match self {
            SourceConfig::Replay(c) => c.validate(field, &mut found),
            SourceConfig::Mqtt(c) => c.validate(field, &mut found),
            SourceConfig::Http(c) => c.validate(field, &mut found),
        }
        ConfigErrors::check(found)
    }

    /// Builds the source: loads files, resolves addresses. Binds no port and
    /// opens no connection, so `edge-agent check` can call it too.
    pub fn build(&self, field: &str, ctx: &SourceContext) -> Result<Box<dyn Source>, ConfigError> {
        match self {
            SourceConfig::Replay(c) => c.build(field, ctx),
            SourceConfig::Mqtt(c) => c.build(field, ctx),
            SourceConfig::Http(c) => c.build(field, ctx),
        }
    }
}

/// What a source may know about the agent it runs in.
#[derive(Debug, Clone)]
pub struct SourceContext {
    pub device_id: DeviceId,
}

pub type SourceFuture = Pin<Box<dyn Future<Output = Result<(), SourceError>> + Send>>;

/// A built source, ready to run.
pub trait Source: Send {
    fn name(&self) -> &str;
    /// Values per reading, where the source knows it before running (a
    /// replayed file does); lets `check` match sources against models.
    fn channels(&self) -> Option<usize> {
        None
    }
    /// Runs until the source is exhausted, `shutdown` turns true, or the
    /// pipeline is gone.
    fn run(self: Box<Self>, out: SourceOutput, shutdown: watch::Receiver<bool>) -> SourceFuture;
}

/// A source failed in a way it cannot recover from by itself.
#[derive(Debug, thiserror::Error)]
#[error("source {source_name}: {message}")]
pub struct SourceError {
    pub source_name: String,
    pub message: String,
}

/// Counters of one source, shared with the heartbeat.
#[derive(Debug, Default)]
pub struct SourceCounters {
    records: AtomicU64,
    rejected: AtomicU64,
}

impl SourceCounters {
    pub fn snapshot(&self) -> SourceStats {
        SourceStats {
            records: self.records.load(Ordering::Relaxed),
            rejected: self.rejected.load(Ordering::Relaxed),
        }
    }
}

/// Snapshot of every source's counters, keyed by source name.
pub fn stats_snapshot(counters: &[(String, Arc<SourceCounters>)]) -> BTreeMap<String, SourceStats> {
    counters
        .iter()
        .map(|(n, c)| (n.clone(), c.snapshot()))
        .collect()
}

/// A source's handle on the pipeline.
#[derive(Clone)]
pub struct SourceOutput {
    source: Arc<str>,
    stream: Arc<str>,
    tx: mpsc::Sender<Reading>,
    counters: Arc<SourceCounters>,
}

/// The pipeline has shut down; the source should stop.
#[derive(Debug)]
pub struct PipelineClosed;

impl SourceOutput {
    pub fn new(
        source: &str,
        stream: &str,
        tx: mpsc::Sender<Reading>,
        counters: Arc<SourceCounters>,
    ) -> Self {
        SourceOutput {
            source: source.into(),
            stream: stream.into(),
            tx,
            counters,
        }
    }

    /// Hands one reading to the pipeline, waiting while it is full.
    pub async fn emit(
        &self,
        ts_us: i64,
        values: Vec<f64>,
        label: String,
        payload: Vec<u8>,
    ) -> Result<(), PipelineClosed> {
        let reading = Reading {
            stream: self.stream.clone(),
            ts_us,
            values,
            label,
            payload,
            ..Reading::default()
        };
        self.tx.send(reading).await.map_err(|_| PipelineClosed)?;
        self.counters.records.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Counts and logs a reading the source could not accept.
    pub fn reject(&self, reason: &dyn std::fmt::Display) {
        let n = self.counters.rejected.fetch_add(1, Ordering::Relaxed) + 1;
        // The first rejections are logged in full; after that one line per
        // thousand, so a misbehaving sensor cannot flood the log.
        if LogEvery::FIRST_10_THEN_EVERY_1000.should_log(n) {
            tracing::warn!(source = %self.source, rejected_total = n, "rejected a reading: {reason}");
        }
    }

    pub fn source_name(&self) -> &str {
        &self.source
    }
}
