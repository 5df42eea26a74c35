//! The inference stage: windows of a stream in, one prediction record per
//! window out.
//!
//! The model sits behind a [`ModelSlot`] (a watch channel). The stage looks
//! at the slot only when a window is complete and before running it, so a
//! swap takes effect between two windows: the window being filled is kept,
//! and every window is run by exactly one model, whose id and version its
//! prediction record carries. Loading a new model (parsing, optimising)
//! happens off the pipeline thread; the stage only picks up the result.
//!
//! A second slot holds a shadow: a candidate model given every window the
//! stage's model is given, whose answers are only counted
//! ([`super::shadow`]), never sent on. That is how a rollout tries a
//! candidate on live data before it lets it decide anything.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use conveyor_model::{ModelError, ModelRunner, OnnxModel, Scores};
use conveyor_process::LogEvery;
use conveyor_shared::control::StageStats;
use conveyor_shared::{Escalation, Prediction};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::shadow::{Answer, ShadowTally};
use super::window::{Row, StreamWindows, Windower};
use crate::config::{ConfigError, ConfigErrors};
use crate::pipeline::{BuiltStage, Stage, StageControl, StageMonitor};
use crate::sources::Reading;

/// `[[stages]] type = "inference"`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct InferenceConfig {
    /// Name in logs and heartbeats (default `inference-<index>`).
    #[serde(default)]
    pub name: Option<String>,
    /// The model's metadata file (`models/<dataset>/<model>.json`); the
    /// ONNX file it names sits beside it. Relative to the config file.
    pub model: PathBuf,
    /// Only this stream is windowed; others pass through. Default: every
    /// stream, each with its own windows.
    #[serde(default)]
    pub stream: Option<String>,
    /// Stream name of the prediction records (default
    /// `<input stream>.predictions`).
    #[serde(default)]
    pub output_stream: Option<String>,
    /// Readings between window starts (default: the model's metadata).
    #[serde(default)]
    pub stride: Option<usize>,
    /// Also send the raw readings upstream (default false: only
    /// predictions travel, which is the bandwidth the edge saves).
    #[serde(default)]
    pub forward_readings: bool,
    /// The edge-to-hub cascade: a prediction whose confidence is below
    /// this (0..=1) is escalated, its record carrying the raw window for
    /// the hub model `escalate_to`. Unset: the edge's answer is final.
    #[serde(default)]
    pub escalate_below: Option<f32>,
    /// The hub model (its metadata `id`) that decides escalated windows.
    #[serde(default)]
    pub escalate_to: Option<String>,
    /// Also send every Nth window to the hub model `escalate_to` as a
    /// sample for the teacher, whatever the edge's confidence: the hub
    /// counts how often the edge model agrees with it (what a rollout's
    /// teacher gate compares). Unset: no samples.
    #[serde(default)]
    pub teacher_every: Option<u32>,
    /// A candidate model's metadata file, run beside `model` on the same
    /// windows without acting on it (a shadow run): the heartbeat says
    /// how often it agrees with `model`, and both models' confidence and
    /// latency. Set by a rollout's shadow phase, or by hand to try a
    /// model on live data. It must take the same input shape.
    #[serde(default)]
    pub shadow: Option<PathBuf>,
}

/// Largest escalation window, in values (4 bytes each): well inside one
/// uplink batch (`MAX_BATCH_BYTES`, 1 MiB).
pub const MAX_ESCALATION_VALUES: usize = 64 * 1024;

impl InferenceConfig {
    /// A stage running the model whose metadata file is `model`, every
    /// other setting at its default.
    pub fn new(model: impl Into<PathBuf>) -> Self {
        InferenceConfig {
            name: None,
            model: model.into(),
            stream: None,
            output_stream: None,
            stride: None,
            forward_readings: false,
            escalate_below: None,
            escalate_to: None,
            teacher_every: None,
            shadow: None,
        }
    }

    pub fn name(&self, index: usize) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| format!("inference-{index}"))
    }

    pub(crate) fn resolve_paths(&mut self, base: &Path) {
        if self.model.is_relative() {
            self.model = base.join(&self.model);
        }
        if let Some(shadow) = self.shadow.as_mut().filter(|s| s.is_relative()) {
            *shadow = base.join(&*shadow);
        }
    }

    /// Checks every field; reports all the problems.
    pub fn validate(&self, field: &str) -> Result<(), ConfigErrors> {
        let mut found = Vec::new();
        if self.stride == Some(0) {
            found.push(ConfigError::invalid(
                format!("{field}.stride"),
                "must be at least 1",
            ));
        }
        if matches!(&self.output_stream, Some(s) if s.is_empty()) {
            found.push(ConfigError::invalid(
                format!("{field}.output_stream"),
                "must not be empty",
            ));
        }
        match (self.escalate_below, &self.escalate_to) {
            (None, None) => {}
            (Some(t), Some(to)) => {
                if !(0.0..=1.0).contains(&t) {
                    found.push(ConfigError::invalid(
                        format!("{field}.escalate_below"),
                        format!("must be a confidence between 0 and 1, got {t}"),
                    ));
                }
                if to.is_empty() {
                    found.push(ConfigError::invalid(
                        format!("{field}.escalate_to"),
                        "must name a hub model id, e.g. \"basicmotions-hub\"",
                    ));
                }
            }
            (Some(_), None) => found.push(ConfigError::invalid(
                format!("{field}.escalate_to"),
                "is required with escalate_below: the id of the hub model that decides",
            )),
            (None, Some(_)) if self.teacher_every.is_none() => found.push(ConfigError::invalid(
                format!("{field}.escalate_below"),
                "is required with escalate_to (or teacher_every): the confidence under which to escalate",
            )),
            (None, Some(to)) if to.is_empty() => found.push(ConfigError::invalid(
                format!("{field}.escalate_to"),
                "must name a hub model id, e.g. \"basicmotions-hub\"",
            )),
            (None, Some(_)) => {}
        }
        match (self.teacher_every, &self.escalate_to) {
            (Some(0), _) => found.push(ConfigError::invalid(
                format!("{field}.teacher_every"),
                "must be at least 1 (every Nth window is sampled)",
            )),
            (Some(_), None) => found.push(ConfigError::invalid(
                format!("{field}.escalate_to"),
                "is required with teacher_every: the id of the hub model that scores the samples",
            )),
            _ => {}
        }
        ConfigErrors::check(found)
    }

    /// The hub model windows go to (escalated or sampled), once
    /// validated.
    fn cascade(&self) -> Option<&str> {
        self.escalate_to.as_deref()
    }

    /// Whether a window with `confidence`, the `n`th of the stage (from
    /// 0), goes to the hub: (below the threshold, sampled).
    fn to_hub(&self, confidence: f32, n: u64) -> (bool, bool) {
        let unsure = self.escalate_below.is_some_and(|t| confidence < t);
        let sampled = self
            .teacher_every
            .is_some_and(|every| n % u64::from(every.max(1)) == 0);
        (unsure, sampled)
    }

    /// Loads the model this config names: the one code path for start and
    /// for a hot swap.
    pub fn load_model(&self) -> Result<Arc<OnnxModel>, ModelError> {
        OnnxModel::load(&self.model, 1).map(Arc::new)
    }

    /// Loads the shadow this config names, if any (the same code path).
    pub fn load_shadow(&self) -> Result<Option<Arc<OnnxModel>>, ModelError> {
        self.shadow
            .as_ref()
            .map(|p| OnnxModel::load(p, 1).map(Arc::new))
            .transpose()
    }

    pub fn build(&self, index: usize, field: &str) -> Result<BuiltStage, ConfigError> {
        let model = self
            .load_model()
            .map_err(|e| ConfigError::invalid(format!("{field}.model"), e.to_string()))?;
        if self.cascade().is_some() {
            let values = model.meta().channels * model.meta().window;
            if values > MAX_ESCALATION_VALUES {
                return Err(ConfigError::invalid(
                    format!("{field}.escalate_below"),
                    format!(
                        "the model's window is {values} values; an escalated window may hold at most \
                         {MAX_ESCALATION_VALUES} (one uplink batch)"
                    ),
                ));
            }
        }
        let shadow = self
            .load_shadow()
            .map_err(|e| ConfigError::invalid(format!("{field}.shadow"), e.to_string()))?;
        if let Some(candidate) = &shadow {
            fits(&model, candidate)
                .map_err(|e| ConfigError::invalid(format!("{field}.shadow"), e.to_string()))?;
        }
        let name = self.name(index);
        let (slot, swaps) = watch::channel(model.clone());
        let (shadow_slot, shadow_swaps) = watch::channel(None);
        let counters = Arc::new(InferenceCounters::new(&name, &model));
        let stage = InferenceStage::new(self.clone(), model, swaps, shadow_swaps, counters.clone())
            .map_err(|e| ConfigError::invalid(format!("{field}.model"), e.to_string()))?;
        let slot = ModelSlot {
            tx: slot,
            shadow: shadow_slot,
        };
        if let Some(candidate) = shadow {
            slot.shadow.send_replace(Some(candidate));
        }
        Ok(BuiltStage {
            stage: Box::new(stage),
            monitor: counters,
            control: StageControl::Model(slot),
        })
    }
}

/// The handle through which a running stage's model (and its shadow) is
/// replaced.
#[derive(Clone)]
pub struct ModelSlot {
    tx: watch::Sender<Arc<OnnxModel>>,
    shadow: watch::Sender<Option<Arc<OnnxModel>>>,
}

/// Whether `new` takes the input `old` does (a stage's models all must).
fn fits(old: &OnnxModel, new: &OnnxModel) -> Result<(), SwapError> {
    let (o, n) = (old.meta(), new.meta());
    if (o.channels, o.window) != (n.channels, n.window) {
        return Err(SwapError::Incompatible {
            old: format!("{}@{}", o.id, o.version),
            new: format!("{}@{}", n.id, n.version),
            old_c: o.channels,
            old_w: o.window,
            new_c: n.channels,
            new_w: n.window,
        });
    }
    Ok(())
}

/// Why a replacement model was refused (the old one keeps running).
#[derive(Debug, thiserror::Error)]
pub enum SwapError {
    #[error(transparent)]
    Load(#[from] ModelError),
    #[error(
        "model {new} takes {new_c} channels x {new_w} readings but the running model {old} takes \
         {old_c} x {old_w}; a model with another input shape needs a restart"
    )]
    Incompatible {
        old: String,
        new: String,
        old_c: usize,
        old_w: usize,
        new_c: usize,
        new_w: usize,
    },
}

impl ModelSlot {
    pub fn current(&self) -> Arc<OnnxModel> {
        self.tx.borrow().clone()
    }

    /// Offers `model` to the stage, which adopts it before its next
    /// window. Refused if its input shape differs from the running one's.
    pub fn replace(&self, model: Arc<OnnxModel>) -> Result<(), SwapError> {
        fits(&self.current(), &model)?;
        self.tx.send_replace(model);
        Ok(())
    }

    /// The shadow offered to the stage, if any.
    pub fn shadow(&self) -> Option<Arc<OnnxModel>> {
        self.shadow.borrow().clone()
    }

    /// Offers `model` as the stage's shadow (`None`: stop the shadow run),
    /// taken up before the next window; a new one starts a new tally.
    /// Refused if its input shape differs from the running model's.
    pub fn set_shadow(&self, model: Option<Arc<OnnxModel>>) -> Result<(), SwapError> {
        if let Some(m) = &model {
            fits(&self.current(), m)?;
        }
        self.shadow.send_replace(model);
        Ok(())
    }
}

/// The stage's counters, read by heartbeats from the uplink task.
pub struct InferenceCounters {
    name: String,
    model: Mutex<(String, String)>,
    readings: AtomicU64,
    windows: AtomicU64,
    predictions: AtomicU64,
    swaps: AtomicU64,
    wrong_channels: AtomicU64,
    failed: AtomicU64,
    escalated: AtomicU64,
    shadow: Mutex<Option<ShadowTally>>,
}

impl InferenceCounters {
    fn new(name: &str, model: &OnnxModel) -> Self {
        InferenceCounters {
            name: name.to_string(),
            model: Mutex::new((model.meta().id.clone(), model.meta().version.clone())),
            readings: AtomicU64::new(0),
            windows: AtomicU64::new(0),
            predictions: AtomicU64::new(0),
            swaps: AtomicU64::new(0),
            wrong_channels: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            escalated: AtomicU64::new(0),
            shadow: Mutex::new(None),
        }
    }
}

impl StageMonitor for InferenceCounters {
    fn snapshot(&self) -> StageStats {
        let (model_id, model_version) = self.model.lock().expect("not poisoned").clone();
        let mut dropped = BTreeMap::new();
        for (reason, n) in [
            ("wrong_channels", &self.wrong_channels),
            ("inference_failed", &self.failed),
        ] {
            let n = n.load(Ordering::Relaxed);
            if n > 0 {
                dropped.insert(reason.to_string(), n);
            }
        }
        StageStats {
            name: self.name.clone(),
            kind: "inference".into(),
            model_id,
            model_version,
            records_in: self.readings.load(Ordering::Relaxed),
            windows: self.windows.load(Ordering::Relaxed),
            records_out: self.predictions.load(Ordering::Relaxed),
            swaps: self.swaps.load(Ordering::Relaxed),
            escalated: self.escalated.load(Ordering::Relaxed),
            dropped,
            shadow: self
                .shadow
                .lock()
                .expect("not poisoned")
                .as_ref()
                .map(ShadowTally::stats),
            ..StageStats::default()
        }
    }
}

pub struct InferenceStage {
    config: InferenceConfig,
    runner: ModelRunner,
    swaps: watch::Receiver<Arc<OnnxModel>>,
    windows: StreamWindows,
    counters: Arc<InferenceCounters>,
    output_streams: Vec<(Arc<str>, Arc<str>)>,
    shadow_swaps: watch::Receiver<Option<Arc<OnnxModel>>>,
    /// The candidate run beside the model, if any, and its failed
    /// windows (for the log; the tally counts them too).
    shadow: Option<ModelRunner>,
    shadow_errors: u64,
}

impl InferenceStage {
    pub fn new(
        config: InferenceConfig,
        model: Arc<OnnxModel>,
        swaps: watch::Receiver<Arc<OnnxModel>>,
        shadow_swaps: watch::Receiver<Option<Arc<OnnxModel>>>,
        counters: Arc<InferenceCounters>,
    ) -> Result<Self, ModelError> {
        Ok(InferenceStage {
            config,
            runner: model.runner()?,
            swaps,
            windows: StreamWindows::default(),
            counters,
            output_streams: Vec::new(),
            shadow_swaps,
            shadow: None,
            shadow_errors: 0,
        })
    }

    fn output_stream(&mut self, input: &Arc<str>) -> Arc<str> {
        if let Some((_, out)) = self.output_streams.iter().find(|(i, _)| i == input) {
            return out.clone();
        }
        let out: Arc<str> = match &self.config.output_stream {
            Some(s) => s.as_str().into(),
            None => format!("{input}.predictions").into(),
        };
        self.output_streams.push((input.clone(), out.clone()));
        out
    }

    /// Adopts a model offered through the slot, if any. Called only
    /// between windows.
    fn adopt_pending_model(&mut self) {
        if !self.swaps.has_changed().unwrap_or(false) {
            return;
        }
        let model = self.swaps.borrow_and_update().clone();
        match model.runner() {
            Ok(runner) => {
                let (old, new) = (self.runner.model().meta(), model.meta());
                tracing::info!(
                    stage = %self.counters.name,
                    from = %format!("{}@{}", old.id, old.version),
                    to = %format!("{}@{}", new.id, new.version),
                    "model swapped between windows"
                );
                *self.counters.model.lock().expect("not poisoned") =
                    (new.id.clone(), new.version.clone());
                self.counters.swaps.fetch_add(1, Ordering::Relaxed);
                self.runner = runner;
            }
            Err(e) => {
                tracing::error!(stage = %self.counters.name, "keeping the running model: {e}")
            }
        }
    }

    /// Starts, replaces or stops the shadow run as the slot says. Called
    /// only between windows.
    fn adopt_pending_shadow(&mut self) {
        if !self.shadow_swaps.has_changed().unwrap_or(false) {
            return;
        }
        let offered = self.shadow_swaps.borrow_and_update().clone();
        let tally = match offered.map(|m| m.runner()) {
            None => {
                if self.shadow.take().is_some() {
                    tracing::info!(stage = %self.counters.name, "shadow run ended");
                }
                None
            }
            Some(Ok(runner)) => {
                let meta = runner.model().meta();
                tracing::info!(stage = %self.counters.name, candidate = %format!("{}@{}", meta.id, meta.version), "shadow run started");
                let tally = ShadowTally::new(&meta.id, &meta.version);
                self.shadow = Some(runner);
                Some(tally)
            }
            Some(Err(e)) => {
                tracing::error!(stage = %self.counters.name, "no shadow run: {e}");
                self.shadow = None;
                None
            }
        };
        *self.counters.shadow.lock().expect("not poisoned") = tally;
    }

    /// Gives the shadow the window the model just ran and counts how the
    /// two compare; what the shadow answers goes nowhere else.
    fn run_shadow(&mut self, input: Vec<f32>, champion: Option<(&Scores, u64)>) {
        let (Some(runner), Some((scores, champion_us))) = (self.shadow.as_mut(), champion) else {
            return;
        };
        let started = Instant::now();
        let result = runner.classify(input);
        let micros = started.elapsed().as_micros() as u64;
        let champion_meta = self.runner.model().meta();
        let champion = Answer {
            label: champion_meta
                .labels
                .get(scores.class_index)
                .map_or("", String::as_str),
            confidence: scores.confidence,
            micros: champion_us,
        };
        let candidate_meta = runner.model().meta();
        let candidate = match &result {
            Ok(s) => Some(Answer {
                label: candidate_meta
                    .labels
                    .get(s.class_index)
                    .map_or("", String::as_str),
                confidence: s.confidence,
                micros,
            }),
            Err(e) => {
                let n = self.shadow_errors + 1;
                self.shadow_errors = n;
                if LogEvery::FIRST_10_THEN_EVERY_1000.should_log(n) {
                    tracing::warn!(stage = %self.counters.name, shadow_errors = n, "the shadow failed on a window (the model's answer stands): {e}");
                }
                None
            }
        };
        if let Some(t) = self.counters.shadow.lock().expect("not poisoned").as_mut() {
            t.record(champion, candidate);
        }
    }
}

impl Stage for InferenceStage {
    fn name(&self) -> &str {
        &self.counters.name
    }

    fn process(&mut self, reading: Reading, out: &mut Vec<Reading>) {
        if self
            .config
            .stream
            .as_deref()
            .is_some_and(|s| s != &*reading.stream)
        {
            out.push(reading);
            return;
        }
        self.counters.readings.fetch_add(1, Ordering::Relaxed);
        if self.config.forward_readings {
            out.push(reading.clone());
        }
        let meta = self.runner.model().meta();
        let (channels, window) = (meta.channels, meta.window);
        let stride = self.config.stride.unwrap_or(meta.stride);
        let stream = reading.stream.clone();
        let windower = self
            .windows
            .get_or_insert(&stream, || Windower::new(channels, window, stride));
        let row = Row {
            ts_us: reading.ts_us,
            values: reading.values,
            label: reading.label,
        };
        match windower.push(row) {
            Ok(false) => return,
            Ok(true) => {}
            Err(e) => {
                let n = self.counters.wrong_channels.fetch_add(1, Ordering::Relaxed) + 1;
                if LogEvery::FIRST_10_THEN_EVERY_1000.should_log(n) {
                    tracing::warn!(stage = %self.counters.name, stream = %stream, dropped_total = n, "dropped a reading: {e}");
                }
                return;
            }
        }
        self.adopt_pending_model();
        self.adopt_pending_shadow();
        let output_stream = self.output_stream(&stream);
        let windower = self.windows.get_or_insert(&stream, || -> Windower {
            unreachable!("the window was just filled")
        });
        let win = windower.ready().expect("push said a window is ready");
        let meta = self.runner.model().meta();
        let input = win.to_input(&meta.normalization);
        let shadow_input = self
            .shadow
            .as_ref()
            .map(|s| win.to_input(&s.model().meta().normalization));
        // Kept only while the cascade may need it: the raw window.
        let raw = self.config.cascade().map(|_| win.raw_values());
        let (start_us, end_us, truth) = (
            win.start_us(),
            win.rows[win.rows.len() - 1].ts_us,
            win.label().to_string(),
        );
        let window_len = win.rows.len() as u32;
        windower.advance();
        let n = self.counters.windows.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let result = self.runner.classify(input);
        if let Some(shadow_input) = shadow_input {
            let champion_us = started.elapsed().as_micros() as u64;
            self.run_shadow(shadow_input, result.as_ref().ok().map(|s| (s, champion_us)));
        }
        match result {
            Ok(scores) => {
                let meta = self.runner.model().meta();
                self.counters.predictions.fetch_add(1, Ordering::Relaxed);
                let (unsure, sampled) = self.config.to_hub(scores.confidence, n);
                let escalation = match (self.config.cascade(), raw) {
                    (Some(hub_model), Some(window)) if unsure || sampled => {
                        self.counters.escalated.fetch_add(1, Ordering::Relaxed);
                        Some(Escalation {
                            hub_model: hub_model.to_string(),
                            threshold: self.config.escalate_below.unwrap_or(0.0),
                            channels: channels as u32,
                            window,
                            sampled,
                        })
                    }
                    _ => None,
                };
                out.push(Reading {
                    stream: output_stream,
                    ts_us: end_us,
                    values: Vec::new(),
                    label: truth,
                    prediction: Some(Prediction {
                        window_start_us: start_us,
                        window_len,
                        ..scores.into_prediction(meta)
                    }),
                    escalation,
                    ..Reading::default()
                });
            }
            Err(e) => {
                let n = self.counters.failed.fetch_add(1, Ordering::Relaxed) + 1;
                if LogEvery::FIRST_10_THEN_EVERY_1000.should_log(n) {
                    tracing::warn!(stage = %self.counters.name, stream = %stream, failed_total = n, "dropped a window: {e}");
                }
            }
        }
    }
}
