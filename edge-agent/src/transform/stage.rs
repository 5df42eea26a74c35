//! `[[stages]] type = "transform"`: a chain of WASM transforms on one
//! stream.
//!
//! The stage owns its chain on the pipeline thread. A replacement chain
//! (SIGHUP, later OTA) is built off that thread with the same
//! [`TransformStageConfig::build_chain`] the agent starts with and handed
//! over through the [`ChainSlot`]; the stage adopts it between two
//! batches, so every record is run by exactly one version of each
//! transform and none is lost. Links whose module and config did not
//! change are carried over with their state (a half-full window stays).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use conveyor_shared::control::StageStats;
use serde::{Deserialize, Serialize};

use super::chain::{Chain, FailurePolicy, Link, OnDisabled, TransformCounters};
use super::dead_letter::DeadLetterStore;
use super::instance::Limits;
use super::module::TransformEngine;
use crate::config::{ConfigError, ConfigErrors};
use crate::pipeline::{BuiltStage, Stage, StageContext, StageControl, StageMonitor};
use crate::sources::Reading;

/// One transform of the chain.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ChainEntry {
    /// The `.wasm` module. Relative to the config file.
    pub wasm: PathBuf,
    /// Given to the module's `conveyor_init` as a JSON object.
    #[serde(default)]
    pub config: toml::Table,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TransformStageConfig {
    /// Name in logs, heartbeats and dead letters (default `transform-<index>`).
    #[serde(default)]
    pub name: Option<String>,
    /// The stream whose records go through the chain; others pass by.
    pub stream: String,
    /// The transforms, applied in order: each sees what the one before emitted.
    pub chain: Vec<ChainEntry>,
    /// Fuel per record per call (about one unit per WASM instruction).
    #[serde(default = "default_fuel")]
    pub fuel_per_record: u64,
    /// Linear memory a transform may grow to, MiB.
    #[serde(default = "default_memory_mb")]
    pub memory_limit_mb: u32,
    /// Bytes of output one call may emit.
    #[serde(default = "default_max_output")]
    pub max_output_bytes: usize,
    /// Records per call, at most.
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// Failed records in a row before a transform is disabled.
    #[serde(default = "default_max_failures")]
    pub max_consecutive_failures: u32,
    /// What a disabled transform does to records: `pass` or `drop`.
    #[serde(default)]
    pub on_disabled: OnDisabled,
}

fn default_fuel() -> u64 {
    Limits::default().fuel_per_record
}
fn default_memory_mb() -> u32 {
    (Limits::default().memory_bytes >> 20) as u32
}
fn default_max_output() -> usize {
    Limits::default().max_output_bytes
}
fn default_batch() -> usize {
    256
}
fn default_max_failures() -> u32 {
    5
}

impl ChainEntry {
    /// The module at `wasm`, with an empty config.
    pub fn new(wasm: impl Into<PathBuf>) -> Self {
        ChainEntry {
            wasm: wasm.into(),
            config: toml::Table::new(),
        }
    }

    /// Adds `key = value` to the module's config.
    pub fn with(mut self, key: &str, value: impl Into<toml::Value>) -> Self {
        self.config.insert(key.into(), value.into());
        self
    }
}

impl TransformStageConfig {
    /// A stage running `chain` on `stream`, every limit at its default.
    pub fn new(stream: &str, chain: Vec<ChainEntry>) -> Self {
        TransformStageConfig {
            name: None,
            stream: stream.into(),
            chain,
            fuel_per_record: default_fuel(),
            memory_limit_mb: default_memory_mb(),
            max_output_bytes: default_max_output(),
            batch_size: default_batch(),
            max_consecutive_failures: default_max_failures(),
            on_disabled: OnDisabled::default(),
        }
    }

    pub fn name(&self, index: usize) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| format!("transform-{index}"))
    }

    pub(crate) fn resolve_paths(&mut self, base: &Path) {
        for e in &mut self.chain {
            if e.wasm.is_relative() {
                e.wasm = base.join(&e.wasm);
            }
        }
    }

    /// Checks every field; reports all the problems.
    pub fn validate(&self, field: &str) -> Result<(), ConfigErrors> {
        let mut found = Vec::new();
        let mut invalid =
            |key: &str, msg: &str| found.push(ConfigError::invalid(format!("{field}.{key}"), msg));
        if self.stream.is_empty()
            || self.stream.len() > conveyor_transform_sdk::wire::MAX_STREAM_BYTES
        {
            invalid("stream", "must be 1-256 bytes");
        }
        if self.chain.is_empty() {
            invalid(
                "chain",
                "list at least one transform, e.g. chain = [{ wasm = \"scale.wasm\" }]",
            );
        }
        if self.fuel_per_record == 0 {
            invalid("fuel_per_record", "must be at least 1");
        }
        if !(1..=4096).contains(&self.memory_limit_mb) {
            invalid("memory_limit_mb", "must be 1-4096");
        }
        if self.max_output_bytes < 64 {
            invalid("max_output_bytes", "must be at least 64");
        }
        if !(1..=65_536).contains(&self.batch_size) {
            invalid("batch_size", "must be 1-65536");
        }
        if self.max_consecutive_failures == 0 {
            invalid("max_consecutive_failures", "must be at least 1");
        }
        ConfigErrors::check(found)
    }

    pub fn limits(&self) -> Limits {
        Limits {
            fuel_per_record: self.fuel_per_record,
            memory_bytes: (self.memory_limit_mb as usize) << 20,
            max_output_bytes: self.max_output_bytes,
        }
    }

    fn policy(&self) -> FailurePolicy {
        FailurePolicy {
            max_consecutive_failures: self.max_consecutive_failures,
            on_disabled: self.on_disabled,
        }
    }

    /// Loads, checks and starts every transform of the chain: the one code
    /// path for start and for a hot swap. `keep` says, for each entry,
    /// whether the running chain's link at the same place may be kept
    /// (same module bytes, same config, same limits).
    pub fn build_chain(
        &self,
        field: &str,
        engine: &TransformEngine,
        running: Option<&ChainInfo>,
    ) -> Result<Vec<NewLink>, ConfigError> {
        let limits = self.limits();
        let mut links = Vec::with_capacity(self.chain.len());
        for (i, entry) in self.chain.iter().enumerate() {
            let at = |key: &str| format!("{field}.chain[{i}].{key}");
            let module = engine.load(&entry.wasm).map_err(|e| {
                ConfigError::invalid(at("wasm"), format!("{}: {e}", entry.wasm.display()))
            })?;
            let config_json = serde_json::to_string(&entry.config).expect("TOML tables are JSON");
            if let Some(run) = running {
                let same = run.links.get(i).is_some_and(|l| {
                    l.sha256 == module.sha256
                        && l.config_json == config_json
                        && run.limits == limits
                });
                if same {
                    links.push(NewLink::Keep(i));
                    continue;
                }
                if let Some(clash) = run
                    .links
                    .iter()
                    .find(|l| l.tag == module.meta.tag() && l.sha256 != module.sha256)
                {
                    return Err(ConfigError::invalid(
                        at("wasm"),
                        format!(
                            "{} says it is {}, which is running with other bytes (sha256 {} vs {}); \
                             a changed module needs a new version",
                            entry.wasm.display(),
                            clash.tag,
                            &module.sha256[..12],
                            &clash.sha256[..12]
                        ),
                    ));
                }
            }
            let link = Link::new(engine, Arc::new(module), limits, config_json)
                .map_err(|e| ConfigError::invalid(at("config"), e.message))?;
            links.push(NewLink::New(Box::new(link)));
        }
        Ok(links)
    }

    pub fn build(
        &self,
        index: usize,
        field: &str,
        ctx: &StageContext,
    ) -> Result<BuiltStage, ConfigError> {
        let engine = ctx.transform_engine()?;
        let links = self.build_chain(field, engine, None).map(|links| {
            links
                .into_iter()
                .filter_map(|l| match l {
                    NewLink::New(l) => Some(*l),
                    NewLink::Keep(_) => None,
                })
                .collect::<Vec<_>>()
        })?;
        let chain = Chain { links };
        let name = self.name(index);
        let info = Arc::new(Mutex::new(ChainInfo::of(&chain, self.limits())));
        let monitor = Arc::new(TransformMonitor {
            name: name.clone(),
            info: info.clone(),
            records_in: AtomicU64::new(0),
            records_out: AtomicU64::new(0),
            swaps: AtomicU64::new(0),
        });
        let pending = Arc::new(Mutex::new(None));
        let stage = TransformStage {
            name,
            stream: self.stream.clone(),
            batch_size: self.batch_size,
            policy: self.policy(),
            chain,
            pending: pending.clone(),
            monitor: monitor.clone(),
            dead_letters: ctx.dead_letters(),
        };
        Ok(BuiltStage {
            stage: Box::new(stage),
            monitor,
            control: StageControl::Transforms(ChainSlot {
                pending,
                info,
                engine: engine.clone(),
            }),
        })
    }
}

/// An entry of a replacement chain.
pub enum NewLink {
    /// Keep the running link at this index (and its state).
    Keep(usize),
    New(Box<Link>),
}

/// A replacement chain waiting for the stage, with its limits.
type PendingChain = Arc<Mutex<Option<(Vec<NewLink>, Limits)>>>;

/// What the rest of the agent knows of a running chain.
#[derive(Debug, Clone)]
pub struct ChainInfo {
    pub links: Vec<LinkInfo>,
    pub limits: Limits,
}

#[derive(Debug, Clone)]
pub struct LinkInfo {
    pub tag: String,
    pub sha256: String,
    pub config_json: String,
    pub counters: Arc<TransformCounters>,
}

impl ChainInfo {
    fn of(chain: &Chain, limits: Limits) -> Self {
        ChainInfo {
            links: chain
                .links
                .iter()
                .map(|l| LinkInfo {
                    tag: l.module().meta.tag(),
                    sha256: l.module().sha256.clone(),
                    config_json: l.config_json().to_string(),
                    counters: l.counters().clone(),
                })
                .collect(),
            limits,
        }
    }
}

/// Where a replacement chain is offered to a running transform stage.
#[derive(Clone)]
pub struct ChainSlot {
    pending: PendingChain,
    info: Arc<Mutex<ChainInfo>>,
    engine: TransformEngine,
}

impl ChainSlot {
    pub fn current(&self) -> ChainInfo {
        self.info.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn engine(&self) -> &TransformEngine {
        &self.engine
    }

    /// Builds the chain `config` describes and offers it to the stage,
    /// which adopts it before its next batch. Returns the new chain's
    /// `name@version`s, or `None` when nothing changed; on error the
    /// running chain stays.
    pub fn replace(
        &self,
        config: &TransformStageConfig,
        field: &str,
    ) -> Result<Option<Vec<String>>, ConfigError> {
        let running = self.current();
        let links = config.build_chain(field, &self.engine, Some(&running))?;
        let unchanged = links.len() == running.links.len()
            && links
                .iter()
                .enumerate()
                .all(|(i, l)| matches!(l, NewLink::Keep(k) if *k == i));
        if unchanged {
            return Ok(None);
        }
        let tags = links
            .iter()
            .map(|l| match l {
                NewLink::Keep(i) => running.links[*i].tag.clone(),
                NewLink::New(l) => l.module().meta.tag(),
            })
            .collect();
        *self.pending.lock().unwrap_or_else(|p| p.into_inner()) = Some((links, config.limits()));
        Ok(Some(tags))
    }
}

struct TransformMonitor {
    name: String,
    info: Arc<Mutex<ChainInfo>>,
    records_in: AtomicU64,
    records_out: AtomicU64,
    swaps: AtomicU64,
}

impl StageMonitor for TransformMonitor {
    fn snapshot(&self) -> StageStats {
        let info = self.info.lock().unwrap_or_else(|p| p.into_inner()).clone();
        StageStats {
            name: self.name.clone(),
            kind: "transform".into(),
            records_in: self.records_in.load(Ordering::Relaxed),
            records_out: self.records_out.load(Ordering::Relaxed),
            swaps: self.swaps.load(Ordering::Relaxed),
            transforms: info.links.iter().map(|l| l.counters.snapshot()).collect(),
            ..StageStats::default()
        }
    }
}

pub struct TransformStage {
    name: String,
    stream: String,
    batch_size: usize,
    policy: FailurePolicy,
    chain: Chain,
    pending: PendingChain,
    monitor: Arc<TransformMonitor>,
    dead_letters: Arc<DeadLetterStore>,
}

impl TransformStage {
    /// Adopts a replacement chain, if one is waiting.
    fn adopt_pending(&mut self) {
        let Some((new, limits)) = self.pending.try_lock().ok().and_then(|mut p| p.take()) else {
            return;
        };
        let mut old: Vec<Option<Link>> = self.chain.links.drain(..).map(Some).collect();
        let mut links = Vec::with_capacity(new.len());
        for n in new {
            match n {
                NewLink::Keep(i) => match old.get_mut(i).and_then(Option::take) {
                    Some(l) => links.push(l),
                    None => {
                        // Cannot happen (indices come from the running
                        // chain, which only this thread changes); refuse
                        // the swap whole rather than run half a chain.
                        tracing::error!(stage = %self.name, "replacement chain refers to a link that is gone; keeping the running chain");
                        self.chain.links = old.into_iter().flatten().collect();
                        return;
                    }
                },
                NewLink::New(l) => links.push(*l),
            }
        }
        self.chain = Chain { links };
        let tags = self.chain.tags();
        *self.monitor.info.lock().unwrap_or_else(|p| p.into_inner()) =
            ChainInfo::of(&self.chain, limits);
        self.monitor.swaps.fetch_add(1, Ordering::Relaxed);
        tracing::info!(stage = %self.name, chain = ?tags, "transform chain swapped");
    }
}

impl Stage for TransformStage {
    fn name(&self) -> &str {
        &self.name
    }

    fn process(&mut self, reading: Reading, out: &mut Vec<Reading>) {
        self.process_batch(vec![reading], out);
    }

    // Records of other streams (and prediction records) are passed on
    // first, then what the chain made of this stream's records: order is
    // kept within each stream, not across streams.
    fn process_batch(&mut self, readings: Vec<Reading>, out: &mut Vec<Reading>) {
        self.adopt_pending();
        let mut mine = Vec::new();
        for r in readings {
            // Predictions do not cross the ABI: they pass by.
            if *r.stream == *self.stream && r.prediction.is_none() {
                mine.push(r);
            } else {
                out.push(r);
            }
        }
        if mine.is_empty() {
            return;
        }
        self.monitor
            .records_in
            .fetch_add(mine.len() as u64, Ordering::Relaxed);
        let before = out.len();
        let mut dead = Vec::new();
        let mut rest = mine.into_iter().peekable();
        while rest.peek().is_some() {
            let batch: Vec<Reading> = rest.by_ref().take(self.batch_size).collect();
            self.chain
                .run(batch, self.policy, &self.name, out, &mut dead);
        }
        self.monitor
            .records_out
            .fetch_add((out.len() - before) as u64, Ordering::Relaxed);
        self.dead_letters.append(&dead);
    }
}
