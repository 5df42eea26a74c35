//! A chain of transforms for one stream, and what happens when one fails.
//!
//! Records go through the chain in batches (one call per transform per
//! batch: that is what makes the WASM path cheap). When a call fails, the
//! instance is replaced and the batch is run again one record at a time,
//! so that only the records the transform really fails on are
//! dead-lettered and the rest go on; outputs of the failed call are never
//! kept, so no record comes out twice. A transform that fails on
//! `max_consecutive_failures` records in a row is disabled and the
//! stage's `on_disabled` policy takes over. Records the guest rejects
//! itself (`conveyor.fail`) are dead-lettered but do not count towards
//! disabling: a redaction transform must not be switched off (and PII let
//! through) because a device sends garbage.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use conveyor_shared::control::TransformStats;
use serde::{Deserialize, Serialize};

use super::dead_letter::DeadLetter;
use super::instance::{CallFailure, FailureKind, Limits, TransformInstance};
use super::module::{TransformEngine, TransformModule};
use crate::sources::Reading;

/// What happens to records once a transform is disabled.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnDisabled {
    /// They go on untouched, as if the transform were not there.
    #[default]
    Pass,
    /// They are not forwarded; they go to the dead-letter store.
    Drop,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FailurePolicy {
    pub max_consecutive_failures: u32,
    pub on_disabled: OnDisabled,
}

/// Counters of one transform in a chain, read by heartbeats.
#[derive(Debug, Default)]
pub struct TransformCounters {
    pub tag: String,
    pub sha256: String,
    pub records_in: AtomicU64,
    pub records_out: AtomicU64,
    pub calls: AtomicU64,
    pub rejected: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub passed_disabled: AtomicU64,
    pub fuel_used: AtomicU64,
    failures: Mutex<BTreeMap<&'static str, u64>>,
    disabled: Mutex<Option<String>>,
}

impl TransformCounters {
    fn fail(&self, kind: FailureKind) {
        *self
            .failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(kind.as_str())
            .or_default() += 1;
    }

    pub fn disabled_reason(&self) -> Option<String> {
        self.disabled
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn snapshot(&self) -> TransformStats {
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let disabled = self.disabled_reason();
        TransformStats {
            transform: self.tag.clone(),
            sha256: self.sha256.clone(),
            state: if disabled.is_some() {
                "disabled"
            } else {
                "active"
            }
            .into(),
            disabled_reason: disabled.unwrap_or_default(),
            records_in: n(&self.records_in),
            records_out: n(&self.records_out),
            rejected: n(&self.rejected),
            dead_lettered: n(&self.dead_lettered),
            passed_disabled: n(&self.passed_disabled),
            failures: self
                .failures
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
            fuel_used: n(&self.fuel_used),
        }
    }
}

/// One transform of a chain: its module, a live instance, its counters.
pub struct Link {
    engine: TransformEngine,
    module: Arc<TransformModule>,
    tag: Arc<str>,
    limits: Limits,
    config_json: String,
    /// `None` after a failure until it is made again.
    instance: Option<TransformInstance>,
    consecutive_failures: u32,
    counters: Arc<TransformCounters>,
}

impl Link {
    /// Instantiates `module` with its config; an error here is a config
    /// error (the transform refused its config, or cannot start).
    pub fn new(
        engine: &TransformEngine,
        module: Arc<TransformModule>,
        limits: Limits,
        config_json: String,
    ) -> Result<Self, CallFailure> {
        let instance = TransformInstance::new(engine, module.clone(), limits, &config_json)?;
        let tag = module.meta.tag();
        Ok(Link {
            engine: engine.clone(),
            counters: Arc::new(TransformCounters {
                tag: tag.clone(),
                sha256: module.sha256.clone(),
                ..Default::default()
            }),
            tag: tag.into(),
            module,
            limits,
            config_json,
            instance: Some(instance),
            consecutive_failures: 0,
        })
    }

    pub fn module(&self) -> &Arc<TransformModule> {
        &self.module
    }

    pub fn config_json(&self) -> &str {
        &self.config_json
    }

    pub fn counters(&self) -> &Arc<TransformCounters> {
        &self.counters
    }

    pub fn peak_memory(&self) -> usize {
        self.instance.as_ref().map_or(0, |i| i.peak_memory())
    }

    fn is_disabled(&self) -> bool {
        self.counters
            .disabled
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    fn disable(&self, reason: String, stage: &str) {
        tracing::error!(
            stage,
            transform = %self.tag,
            "transform disabled: {reason}"
        );
        *self
            .counters
            .disabled
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(reason);
    }

    /// The live instance, made again if the last call failed.
    fn instance(&mut self) -> Result<&mut TransformInstance, CallFailure> {
        if self.instance.is_none() {
            self.instance = Some(TransformInstance::new(
                &self.engine,
                self.module.clone(),
                self.limits,
                &self.config_json,
            )?);
        }
        Ok(self.instance.as_mut().expect("made above"))
    }

    fn call(&mut self, inputs: &[Reading]) -> Result<super::instance::CallOutput, CallFailure> {
        self.counters.calls.fetch_add(1, Ordering::Relaxed);
        let result = self.instance().and_then(|i| i.call(inputs));
        if result.is_err() {
            self.instance = None;
        }
        result
    }

    /// Runs `inputs` through this transform; what it emits goes to `out`,
    /// what it fails on to `dead`.
    pub fn run(
        &mut self,
        inputs: Vec<Reading>,
        policy: FailurePolicy,
        stage: &str,
        out: &mut Vec<Reading>,
        dead: &mut Vec<DeadLetter>,
    ) {
        if inputs.is_empty() {
            return;
        }
        self.counters
            .records_in
            .fetch_add(inputs.len() as u64, Ordering::Relaxed);
        if self.is_disabled() {
            return self.apply_disabled(inputs, policy, stage, out, dead);
        }
        match self.call(&inputs) {
            Ok(output) => {
                self.consecutive_failures = 0;
                self.accept(&inputs, output, stage, out, dead);
            }
            Err(failure) => {
                tracing::warn!(
                    stage,
                    transform = %self.tag,
                    records = inputs.len(),
                    "transform call failed ({failure}); retrying its records one by one"
                );
                self.isolate(inputs, policy, stage, out, dead);
            }
        }
    }

    /// After a failed batch: one record per call, on fresh instances.
    fn isolate(
        &mut self,
        inputs: Vec<Reading>,
        policy: FailurePolicy,
        stage: &str,
        out: &mut Vec<Reading>,
        dead: &mut Vec<DeadLetter>,
    ) {
        let mut rest = inputs.into_iter();
        for record in rest.by_ref() {
            match self.call(std::slice::from_ref(&record)) {
                Ok(output) => {
                    self.consecutive_failures = 0;
                    self.accept(std::slice::from_ref(&record), output, stage, out, dead);
                }
                Err(failure) => {
                    self.counters.fail(failure.kind);
                    self.consecutive_failures += 1;
                    tracing::warn!(
                        stage,
                        transform = %self.tag,
                        stream = %record.stream,
                        ts_us = record.ts_us,
                        "record dead-lettered: {failure}"
                    );
                    self.dead_letter(record, failure.kind.as_str(), &failure.message, stage, dead);
                    if self.consecutive_failures >= policy.max_consecutive_failures {
                        self.disable(
                            format!(
                                "{} consecutive failures, the last: {failure}",
                                self.consecutive_failures
                            ),
                            stage,
                        );
                        break;
                    }
                }
            }
        }
        let rest: Vec<Reading> = rest.collect();
        if !rest.is_empty() {
            self.apply_disabled(rest, policy, stage, out, dead);
        }
    }

    fn apply_disabled(
        &mut self,
        inputs: Vec<Reading>,
        policy: FailurePolicy,
        stage: &str,
        out: &mut Vec<Reading>,
        dead: &mut Vec<DeadLetter>,
    ) {
        match policy.on_disabled {
            OnDisabled::Pass => {
                self.counters
                    .passed_disabled
                    .fetch_add(inputs.len() as u64, Ordering::Relaxed);
                out.extend(inputs);
            }
            OnDisabled::Drop => {
                let reason = format!(
                    "transform disabled: {}",
                    self.counters.disabled_reason().unwrap_or_default()
                );
                for r in inputs {
                    self.dead_letter(r, "disabled", &reason, stage, dead);
                }
            }
        }
    }

    fn accept(
        &mut self,
        inputs: &[Reading],
        output: super::instance::CallOutput,
        stage: &str,
        out: &mut Vec<Reading>,
        dead: &mut Vec<DeadLetter>,
    ) {
        self.counters
            .fuel_used
            .fetch_add(output.fuel_used, Ordering::Relaxed);
        self.counters
            .records_out
            .fetch_add(output.outputs.len() as u64, Ordering::Relaxed);
        // Outputs carry the transforms of the call's first input (a chain
        // runs on one stream, whose records share their history) and this one.
        let history = inputs
            .first()
            .map(|r| r.transforms.as_slice())
            .unwrap_or_default();
        out.extend(output.outputs.into_iter().map(|mut r| {
            r.transforms.reserve(history.len() + 1);
            r.transforms.extend(history.iter().cloned());
            r.transforms.push(self.tag.clone());
            r
        }));
        for (index, reason) in output.rejected {
            self.counters.rejected.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(stage, transform = %self.tag, "record rejected by the transform: {reason}");
            self.dead_letter(inputs[index].clone(), "rejected", &reason, stage, dead);
        }
    }

    fn dead_letter(
        &self,
        r: Reading,
        kind: &str,
        reason: &str,
        stage: &str,
        dead: &mut Vec<DeadLetter>,
    ) {
        self.counters.dead_lettered.fetch_add(1, Ordering::Relaxed);
        dead.push(DeadLetter {
            at_us: conveyor_shared::time::now_us(),
            stage: stage.to_string(),
            transform: self.tag.to_string(),
            kind: kind.to_string(),
            reason: reason.to_string(),
            record: r.into_record(),
        });
    }
}

/// The transforms of one stream, applied in order.
pub struct Chain {
    pub links: Vec<Link>,
}

impl Chain {
    /// Runs one batch through every link.
    pub fn run(
        &mut self,
        inputs: Vec<Reading>,
        policy: FailurePolicy,
        stage: &str,
        out: &mut Vec<Reading>,
        dead: &mut Vec<DeadLetter>,
    ) {
        let mut current = inputs;
        for link in &mut self.links {
            let mut next = Vec::with_capacity(current.len());
            link.run(current, policy, stage, &mut next, dead);
            current = next;
        }
        out.extend(current);
    }

    /// `name@version` of each link.
    pub fn tags(&self) -> Vec<String> {
        self.links.iter().map(|l| l.tag.to_string()).collect()
    }
}
