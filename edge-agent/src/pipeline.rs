//! The pipeline: the ordered stages between the sources and the uplink.
//!
//! A stage takes one reading and emits zero or more (a filter drops, an
//! inference stage turns a window of readings into one prediction). Each
//! stage type owns its config struct and errors in its own module and is
//! one variant of [`StageConfig`]. The pipeline runs on its own thread (see
//! `agent.rs`), so model inference never stalls the async runtime, and
//! before sequence numbers are assigned, so a record's `seq` is always the
//! order in which it left the pipeline.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use conveyor_shared::control::StageStats;
use serde::{Deserialize, Serialize};

use crate::config::{ConfigError, ConfigErrors};
use crate::inference::{InferenceConfig, ModelSlot};
use crate::sources::Reading;
use crate::transform::{ChainSlot, DeadLetterStore, TransformEngine, TransformStageConfig};

/// A `[[stages]]` table of `agent.toml`, told apart by `type`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum StageConfig {
    /// Runs an ONNX model on windows of a stream (`inference/stage.rs`).
    Inference(InferenceConfig),
    /// Runs a chain of WASM transforms on a stream (`transform/stage.rs`).
    Transform(TransformStageConfig),
}

/// A built stage and the handles the rest of the agent keeps on it.
pub struct BuiltStage {
    pub stage: Box<dyn Stage>,
    /// Read by heartbeats.
    pub monitor: Arc<dyn StageMonitor>,
    /// Where a running stage is changed (a new model, a new chain).
    pub control: StageControl,
}

/// The hot-swap handle of a running stage, by kind.
#[derive(Clone)]
pub enum StageControl {
    Model(ModelSlot),
    Transforms(ChainSlot),
}

/// What building a stage may need from the agent: shared by all stages.
pub struct StageContext {
    data_dir: PathBuf,
    engine: OnceLock<Result<TransformEngine, String>>,
    dead_letters: Arc<DeadLetterStore>,
    cache_write_errors: Arc<AtomicU64>,
}

/// The stages' own storage (dead letters, the compiled-transform cache),
/// as heartbeats report it.
#[derive(Clone)]
pub struct StageStorage {
    dead_letters: Arc<DeadLetterStore>,
    cache_write_errors: Arc<AtomicU64>,
}

impl StageStorage {
    pub fn dead_letter_write_errors(&self) -> u64 {
        self.dead_letters.write_errors()
    }

    pub fn recent_dead_letters(&self) -> Vec<conveyor_shared::control::DeadLetterNote> {
        self.dead_letters.recent()
    }

    pub fn transform_cache_write_errors(&self) -> u64 {
        self.cache_write_errors.load(Ordering::Relaxed)
    }
}

impl StageContext {
    pub fn new(data_dir: &Path) -> Self {
        StageContext {
            data_dir: data_dir.to_path_buf(),
            engine: OnceLock::new(),
            dead_letters: Arc::new(DeadLetterStore::new(data_dir)),
            cache_write_errors: Arc::default(),
        }
    }

    pub fn storage(&self) -> StageStorage {
        StageStorage {
            dead_letters: self.dead_letters.clone(),
            cache_write_errors: self.cache_write_errors.clone(),
        }
    }

    /// The WASM engine (made on first use: an agent without transforms
    /// never starts one), with its compile cache in `data_dir`.
    pub fn transform_engine(&self) -> Result<&TransformEngine, ConfigError> {
        self.engine
            .get_or_init(|| {
                TransformEngine::new(Some(self.data_dir.join("transform-cache")))
                    .map(|e| e.counting_cache_errors(self.cache_write_errors.clone()))
                    .map_err(|e| e.to_string())
            })
            .as_ref()
            .map_err(|e| {
                ConfigError::invalid("stages", format!("cannot start the WASM engine: {e}"))
            })
    }

    pub fn dead_letters(&self) -> Arc<DeadLetterStore> {
        self.dead_letters.clone()
    }
}

impl From<InferenceConfig> for StageConfig {
    fn from(c: InferenceConfig) -> Self {
        StageConfig::Inference(c)
    }
}
impl From<TransformStageConfig> for StageConfig {
    fn from(c: TransformStageConfig) -> Self {
        StageConfig::Transform(c)
    }
}

impl StageConfig {
    pub fn validate(&self, field: &str) -> Result<(), ConfigErrors> {
        match self {
            StageConfig::Inference(c) => c.validate(field),
            StageConfig::Transform(c) => c.validate(field),
        }
    }

    pub(crate) fn resolve_paths(&mut self, base: &Path) {
        match self {
            StageConfig::Inference(c) => c.resolve_paths(base),
            StageConfig::Transform(c) => c.resolve_paths(base),
        }
    }

    pub fn name(&self, index: usize) -> String {
        match self {
            StageConfig::Inference(c) => c.name(index),
            StageConfig::Transform(c) => c.name(index),
        }
    }

    /// Builds the stage (loads and checks its model or modules). `field`
    /// is its path in the config, `stages[i]`.
    pub fn build(
        &self,
        index: usize,
        field: &str,
        ctx: &StageContext,
    ) -> Result<BuiltStage, ConfigError> {
        match self {
            StageConfig::Inference(c) => c.build(index, field),
            StageConfig::Transform(c) => c.build(index, field, ctx),
        }
    }
}

pub trait Stage: Send {
    fn name(&self) -> &str;
    /// Processes one reading, pushing what comes out onto `out`.
    fn process(&mut self, reading: Reading, out: &mut Vec<Reading>);

    /// Processes readings in arrival order. Stages that gain from batching
    /// (WASM transforms: one call per batch) override it.
    fn process_batch(&mut self, readings: Vec<Reading>, out: &mut Vec<Reading>) {
        for r in readings {
            self.process(r, out);
        }
    }
}

/// A stage's counters as heartbeats report them.
pub trait StageMonitor: Send + Sync {
    fn snapshot(&self) -> StageStats;
}

#[derive(Default)]
pub struct Pipeline {
    stages: Vec<Box<dyn Stage>>,
}

/// What the agent keeps of each built stage once the stages run on the
/// pipeline thread.
#[derive(Clone)]
pub struct StageHandle {
    pub config: StageConfig,
    pub monitor: Arc<dyn StageMonitor>,
    pub control: StageControl,
}

impl StageHandle {
    pub fn model_slot(&self) -> Option<&ModelSlot> {
        match &self.control {
            StageControl::Model(s) => Some(s),
            StageControl::Transforms(_) => None,
        }
    }

    pub fn chain_slot(&self) -> Option<&ChainSlot> {
        match &self.control {
            StageControl::Transforms(s) => Some(s),
            StageControl::Model(_) => None,
        }
    }
}

impl Pipeline {
    /// Builds every stage; reports every stage that cannot be built.
    pub fn build(
        configs: &[StageConfig],
        ctx: &StageContext,
    ) -> Result<(Self, Vec<StageHandle>), ConfigErrors> {
        let mut stages = Vec::new();
        let mut handles = Vec::new();
        let mut found = Vec::new();
        for (i, config) in configs.iter().enumerate() {
            let built = match config.build(i, &format!("stages[{i}]"), ctx) {
                Ok(built) => built,
                Err(e) => {
                    found.push(e);
                    continue;
                }
            };
            stages.push(built.stage);
            handles.push(StageHandle {
                config: config.clone(),
                monitor: built.monitor,
                control: built.control,
            });
        }
        ConfigErrors::check(found)?;
        Ok((Pipeline { stages }, handles))
    }

    pub fn from_stages(stages: Vec<Box<dyn Stage>>) -> Self {
        Pipeline { stages }
    }

    pub fn is_empty(&self) -> bool {
        self.stages.is_empty()
    }

    /// Runs `reading` through every stage; what the last stage emits is
    /// appended to `out`.
    pub fn process(&mut self, reading: Reading, out: &mut Vec<Reading>) {
        self.process_batch(vec![reading], out);
    }

    /// Runs `readings` through every stage, stage by stage.
    pub fn process_batch(&mut self, readings: Vec<Reading>, out: &mut Vec<Reading>) {
        let mut current = readings;
        for stage in &mut self.stages {
            let mut next = Vec::with_capacity(current.len());
            stage.process_batch(current, &mut next);
            current = next;
        }
        out.extend(current);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct DropNegative;
    impl Stage for DropNegative {
        fn name(&self) -> &str {
            "drop-negative"
        }
        fn process(&mut self, r: Reading, out: &mut Vec<Reading>) {
            if r.values.iter().all(|v| *v >= 0.0) {
                out.push(r);
            }
        }
    }

    struct Duplicate;
    impl Stage for Duplicate {
        fn name(&self) -> &str {
            "duplicate"
        }
        fn process(&mut self, r: Reading, out: &mut Vec<Reading>) {
            out.push(r.clone());
            out.push(r);
        }
    }

    fn reading(v: f64) -> Reading {
        Reading {
            stream: "s".into(),
            ts_us: 0,
            values: vec![v],
            ..Reading::default()
        }
    }

    #[test]
    fn empty_pipeline_passes_through() {
        let mut out = Vec::new();
        Pipeline::default().process(reading(1.0), &mut out);
        assert_eq!(out, vec![reading(1.0)]);
    }

    #[test]
    fn stages_apply_in_order() {
        let mut p = Pipeline::from_stages(vec![Box::new(DropNegative), Box::new(Duplicate)]);
        let mut out = Vec::new();
        p.process(reading(-1.0), &mut out);
        p.process(reading(2.0), &mut out);
        assert_eq!(out, vec![reading(2.0), reading(2.0)]);
    }

    #[test]
    fn unknown_stage_type_is_refused() {
        let e = toml::from_str::<StageConfig>("type = \"nope\"").unwrap_err();
        assert!(e.to_string().contains("unknown variant `nope`"), "{e}");
    }
}
