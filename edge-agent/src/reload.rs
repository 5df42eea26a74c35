//! Applying a changed config to a running agent (SIGHUP).
//!
//! Reloading is a diff: [`plan`] compares the running config with the new
//! one (plain data, no I/O) and says which inference stages may get a new
//! model and which changes need a restart. [`Reloader::apply`] then loads
//! each candidate model with the very code path the agent starts with
//! (`InferenceConfig::load_model`) and offers it to the running stage,
//! which adopts it between two windows. A model that fails to load is
//! refused with its reason and the running one stays. Transform stages
//! work the same way through `ChainSlot::replace` (the chain is rebuilt
//! with the start-up code path; unchanged links keep their state). A
//! stage's shadow (`shadow`: a candidate run beside its model) is started,
//! replaced or stopped the same way through `ModelSlot::set_shadow`. OTA
//! updates and rollouts call the same code.

use std::sync::{Arc, Mutex};

use conveyor_shared::ModelMetadata;

use crate::config::AgentConfig;
use crate::inference::{InferenceConfig, ModelSlot};
use crate::pipeline::{StageConfig, StageHandle};
use crate::transform::TransformStageConfig;

/// What a reload would do.
#[derive(Debug, Default, PartialEq)]
pub struct ReloadPlan {
    /// Inference stages (by index) whose model may have changed.
    pub model_checks: Vec<(usize, InferenceConfig)>,
    /// Transform stages (by index) whose chain or limits may have changed.
    pub chain_checks: Vec<(usize, TransformStageConfig)>,
    /// Changes that only take effect after a restart, by field.
    pub needs_restart: Vec<String>,
}

/// Compares two configs.
pub fn plan(running: &AgentConfig, new: &AgentConfig) -> ReloadPlan {
    let mut plan = ReloadPlan::default();
    let mut restart = |field: &str| plan.needs_restart.push(field.to_string());
    if running.device_id != new.device_id {
        restart("device_id");
    }
    if running.data_dir != new.data_dir {
        restart("data_dir");
    }
    if running.uplink != new.uplink {
        restart("uplink");
    }
    if running.log != new.log {
        restart("log");
    }
    if running.ota != new.ota {
        restart("ota");
    }
    if running.tags != new.tags {
        restart("tags");
    }
    if running.sources != new.sources {
        restart("sources");
    }
    if running.stages.len() != new.stages.len() {
        restart("stages");
        return plan;
    }
    for (i, (old, new)) in running.stages.iter().zip(&new.stages).enumerate() {
        match (old, new) {
            (StageConfig::Inference(o), StageConfig::Inference(n)) => {
                let same_but_model = InferenceConfig {
                    model: n.model.clone(),
                    shadow: n.shadow.clone(),
                    ..o.clone()
                } == *n;
                if same_but_model {
                    plan.model_checks.push((i, n.clone()));
                } else {
                    plan.needs_restart.push(format!("stages[{i}]"));
                }
            }
            (StageConfig::Transform(o), StageConfig::Transform(n)) => {
                // The chain and the limits can change while running; the
                // stream, batching and failure policy need a restart.
                let same_but_chain = TransformStageConfig {
                    chain: n.chain.clone(),
                    fuel_per_record: n.fuel_per_record,
                    memory_limit_mb: n.memory_limit_mb,
                    max_output_bytes: n.max_output_bytes,
                    ..o.clone()
                } == *n;
                if same_but_chain {
                    plan.chain_checks.push((i, n.clone()));
                } else {
                    plan.needs_restart.push(format!("stages[{i}]"));
                }
            }
            _ => plan.needs_restart.push(format!("stages[{i}]")),
        }
    }
    plan
}

/// Whether the metadata file `path` is the one `model` was loaded from,
/// unchanged (a cheap check before any load).
fn same_model(path: &std::path::Path, model: &conveyor_model::OnnxModel) -> bool {
    ModelMetadata::load(path).is_ok_and(|m| {
        path == model.metadata_path()
            && m.model_sha256 == model.meta().model_sha256
            && m.version == model.meta().version
    })
}

/// Offers the stage the model `config` names, unless it runs it: `None`
/// when unchanged, else the new model's name or why it was refused.
fn swap_model(slot: &ModelSlot, config: &InferenceConfig) -> Option<Result<String, String>> {
    if same_model(&config.model, &slot.current()) {
        return None;
    }
    Some(
        config
            .load_model()
            .map_err(|e| e.to_string())
            .and_then(|m| {
                let name = format!("{}@{}", m.meta().id, m.meta().version);
                slot.replace(m).map(|()| name).map_err(|e| e.to_string())
            }),
    )
}

/// Offers the stage the shadow `config` names (or stops its shadow run),
/// unless it runs that already: `None` when unchanged, else the new
/// shadow's name (`None`: stopped) or why it was refused.
fn swap_shadow(
    slot: &ModelSlot,
    config: &InferenceConfig,
) -> Option<Result<Option<String>, String>> {
    match (&config.shadow, slot.shadow()) {
        (None, None) => return None,
        (Some(p), Some(m)) if same_model(p, &m) => return None,
        _ => {}
    }
    Some(
        config
            .load_shadow()
            .map_err(|e| e.to_string())
            .and_then(|m| {
                let name = m
                    .as_ref()
                    .map(|m| format!("{}@{}", m.meta().id, m.meta().version));
                slot.set_shadow(m).map(|()| name).map_err(|e| e.to_string())
            }),
    )
}

/// What a reload did, for the log.
#[derive(Debug, Default)]
pub struct ReloadReport {
    pub swapped: Vec<String>,
    pub refused: Vec<String>,
    pub needs_restart: Vec<String>,
}

/// Keeps the running config and the stages' model slots.
#[derive(Clone)]
pub struct Reloader {
    running: Arc<Mutex<AgentConfig>>,
    stages: Vec<StageHandle>,
}

impl Reloader {
    pub fn new(running: AgentConfig, stages: Vec<StageHandle>) -> Self {
        Reloader {
            running: Arc::new(Mutex::new(running)),
            stages,
        }
    }

    /// Applies `new` as far as it can be applied without a restart.
    /// Blocking (it loads models): run it off the async runtime.
    pub fn apply(&self, new: AgentConfig) -> ReloadReport {
        let mut running = self.running.lock().expect("not poisoned");
        let plan = plan(&running, &new);
        let mut report = ReloadReport {
            needs_restart: plan.needs_restart,
            ..ReloadReport::default()
        };
        for (i, stage_config) in plan.model_checks {
            let field = format!("stages[{i}]");
            let Some(slot) = self.stages[i].model_slot() else {
                continue;
            };
            let StageConfig::Inference(mut took) = running.stages[i].clone() else {
                continue;
            };
            match swap_model(slot, &stage_config) {
                None => {}
                Some(Ok(name)) => {
                    took.model = stage_config.model.clone();
                    report.swapped.push(format!("{field}.model: {name}"));
                }
                Some(Err(e)) => report.refused.push(format!("{field}.model: {e}")),
            }
            match swap_shadow(slot, &stage_config) {
                None => {}
                Some(Ok(name)) => {
                    took.shadow = stage_config.shadow.clone();
                    report.swapped.push(format!(
                        "{field}.shadow: {}",
                        name.as_deref().unwrap_or("none")
                    ));
                }
                Some(Err(e)) => report.refused.push(format!("{field}.shadow: {e}")),
            }
            running.stages[i] = StageConfig::Inference(took);
        }
        for (i, stage_config) in plan.chain_checks {
            let field = format!("stages[{i}]");
            let Some(slot) = self.stages[i].chain_slot() else {
                continue;
            };
            match slot.replace(&stage_config, &field) {
                Ok(Some(tags)) => {
                    running.stages[i] = StageConfig::Transform(stage_config);
                    report
                        .swapped
                        .push(format!("{field}.chain: {}", tags.join(" -> ")));
                }
                Ok(None) => running.stages[i] = StageConfig::Transform(stage_config),
                Err(e) => report.refused.push(e.to_string()),
            }
        }
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> AgentConfig {
        crate::config::test_config(extra)
    }

    const STAGE: &str = "[[stages]]\ntype = \"inference\"\nmodel = \"a.json\"\n";

    #[test]
    fn a_new_model_path_is_a_model_check_not_a_restart() {
        let old = config(STAGE);
        let new = config(&STAGE.replace("a.json", "b.json"));
        let p = plan(&old, &new);
        assert!(p.needs_restart.is_empty(), "{p:?}");
        assert_eq!(p.model_checks.len(), 1);
        assert_eq!(p.model_checks[0].0, 0);
    }

    #[test]
    fn a_shadow_started_or_stopped_is_a_model_check_not_a_restart() {
        let old = config(STAGE);
        let new = config(&format!("{STAGE}shadow = \"c.json\"\n"));
        for (a, b) in [(&old, &new), (&new, &old)] {
            let p = plan(a, b);
            assert!(p.needs_restart.is_empty(), "{p:?}");
            assert_eq!(p.model_checks.len(), 1);
        }
    }

    #[test]
    fn other_changes_need_a_restart() {
        let old = config(STAGE);
        let new = config(&format!("{STAGE}stride = 7\n"));
        assert_eq!(
            plan(&old, &new).needs_restart,
            vec!["stages[0]".to_string()]
        );
        let fewer = config("");
        assert_eq!(plan(&old, &fewer).needs_restart, vec!["stages".to_string()]);
        let mut moved = config(STAGE);
        moved.uplink.batch_max_records = 7;
        assert_eq!(plan(&old, &moved).needs_restart, vec!["uplink".to_string()]);
    }
}
