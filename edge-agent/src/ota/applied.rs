//! What the hub's updates changed, persisted in `data_dir/ota/applied.json`,
//! and how it is laid over `agent.toml`.
//!
//! The agent starts (and reloads on SIGHUP) from `agent.toml` with the
//! applied targets laid over it ([`overlay`]): a stage the hub set runs the
//! cached artifact, every other stage what the file says. So a restart, a
//! SIGKILL mid-download or mid-apply included, runs the last applied
//! artifacts, and the file is written (atomically: temp file, fsync,
//! rename) only after a change was handed to the running stages.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use conveyor_shared::ota::{ArtifactRef, PublicKey, StageRunning, StageTarget};
use serde::{Deserialize, Serialize};

use super::cache::ArtifactCache;
use crate::config::AgentConfig;
use crate::pipeline::StageConfig;
use crate::transform::ChainEntry;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Applied {
    /// The desired-state generation applied last.
    pub generation: Option<u64>,
    /// The stages the hub set, by name.
    pub stages: BTreeMap<String, AppliedStage>,
    /// The candidates the hub has inference stages run in shadow, by
    /// stage name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub shadows: BTreeMap<String, ArtifactRef>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppliedStage {
    pub target: StageTarget,
    /// What the stage ran before this target (reported; a rollback is a
    /// desired state naming it, still in the cache).
    #[serde(default)]
    pub previous: Option<StageRunning>,
}

fn path(data_dir: &Path) -> PathBuf {
    data_dir.join("ota").join("applied.json")
}

impl Applied {
    /// The persisted state; none yet is the empty one. An unreadable file
    /// is moved aside (the agent then runs `agent.toml` and the hub's
    /// retained desired state brings it back up to date).
    pub fn load(data_dir: &Path) -> Applied {
        let p = path(data_dir);
        let bytes = match std::fs::read(&p) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Applied::default(),
            Err(e) => {
                tracing::error!(file = %p.display(), "cannot read the applied OTA state, running agent.toml: {e}");
                return Applied::default();
            }
        };
        match serde_json::from_slice(&bytes) {
            Ok(a) => a,
            Err(e) => {
                let aside = p.with_extension("json.unreadable");
                let _ = std::fs::rename(&p, &aside);
                tracing::error!(file = %p.display(), moved_to = %aside.display(), "the applied OTA state is unreadable, running agent.toml: {e}");
                Applied::default()
            }
        }
    }

    pub fn save(&self, data_dir: &Path) -> std::io::Result<()> {
        let p = path(data_dir);
        let dir = p.parent().expect("has a parent");
        std::fs::create_dir_all(dir)?;
        let tmp = p.with_extension("json.tmp");
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&serde_json::to_vec_pretty(self).expect("serialises"))?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &p)?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }
}

/// Why a target cannot be laid over a config.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum OverlayError {
    #[error("stage {0:?}: no stage of that name in agent.toml")]
    NoStage(String),
    #[error("stage {stage:?} is {is} stage; the hub sent it {sent}")]
    WrongKind {
        stage: String,
        is: &'static str,
        sent: &'static str,
    },
    #[error("stage {stage:?}: {why}")]
    Artifact { stage: String, why: String },
}

/// The index of the stage named `name` in `config`.
pub fn stage_index(config: &AgentConfig, name: &str) -> Option<usize> {
    config
        .stages
        .iter()
        .enumerate()
        .position(|(i, s)| s.name(i) == name)
}

fn kind_of(stage: &StageConfig) -> &'static str {
    match stage {
        StageConfig::Inference(_) => "an inference",
        StageConfig::Transform(_) => "a transform",
    }
}

fn kind_sent(target: &StageTarget) -> &'static str {
    match target {
        StageTarget::Model(_) => "a model",
        StageTarget::Transforms(_) => "a transform chain",
    }
}

/// The metadata file of model `a` in `cache`, verified again first.
fn cached_model(
    cache: &ArtifactCache,
    a: &ArtifactRef,
    trusted: &[PublicKey],
) -> Result<PathBuf, String> {
    cache
        .verified(&a.id, trusted)?
        .model_metadata()
        .ok_or_else(|| format!("{a} has no metadata (.json) file"))
}

/// Sets stage `name` of `config` to run `target` from `cache` (verified
/// again first).
pub fn set_target(
    config: &mut AgentConfig,
    name: &str,
    target: &StageTarget,
    cache: &ArtifactCache,
    trusted: &[PublicKey],
) -> Result<(), OverlayError> {
    let i = stage_index(config, name).ok_or_else(|| OverlayError::NoStage(name.into()))?;
    let artifact_err = |why: String| OverlayError::Artifact {
        stage: name.into(),
        why,
    };
    match (&mut config.stages[i], target) {
        (StageConfig::Inference(c), StageTarget::Model(a)) => {
            c.model = cached_model(cache, a, trusted).map_err(artifact_err)?;
        }
        (StageConfig::Transform(c), StageTarget::Transforms(links)) => {
            let mut chain = Vec::with_capacity(links.len());
            for link in links {
                let a = &link.artifact;
                let cached = cache.verified(&a.id, trusted).map_err(artifact_err)?;
                let wasm = cached
                    .module()
                    .ok_or_else(|| artifact_err(format!("{a} has no .wasm file")))?;
                let config = match toml::Value::try_from(&link.config) {
                    Ok(toml::Value::Table(t)) => t,
                    Ok(_) => toml::Table::new(),
                    Err(e) => {
                        return Err(artifact_err(format!(
                            "{a}: its config cannot be a transform's config (TOML has no null): {e}"
                        )))
                    }
                };
                chain.push(ChainEntry { wasm, config });
            }
            c.chain = chain;
        }
        (stage, target) => {
            return Err(OverlayError::WrongKind {
                stage: name.into(),
                is: kind_of(stage),
                sent: kind_sent(target),
            })
        }
    }
    Ok(())
}

/// Has inference stage `name` of `config` run `candidate` from `cache`
/// (verified again first) in shadow.
pub fn set_shadow(
    config: &mut AgentConfig,
    name: &str,
    candidate: &ArtifactRef,
    cache: &ArtifactCache,
    trusted: &[PublicKey],
) -> Result<(), OverlayError> {
    let i = stage_index(config, name).ok_or_else(|| OverlayError::NoStage(name.into()))?;
    let artifact_err = |why: String| OverlayError::Artifact {
        stage: name.into(),
        why,
    };
    match &mut config.stages[i] {
        StageConfig::Inference(c) => {
            c.shadow = Some(cached_model(cache, candidate, trusted).map_err(artifact_err)?);
            Ok(())
        }
        stage => Err(OverlayError::WrongKind {
            stage: name.into(),
            is: kind_of(stage),
            sent: "a shadow model",
        }),
    }
}

/// `config` with every applied target laid over it. A target that no
/// longer fits (the stage was renamed in agent.toml, the cache entry is
/// damaged) is left out, with its reason in the second value.
pub fn overlay(
    config: &AgentConfig,
    applied: &Applied,
    cache: &ArtifactCache,
    trusted: &[PublicKey],
) -> (AgentConfig, Vec<OverlayError>) {
    let mut out = config.clone();
    let mut problems = Vec::new();
    for (name, stage) in &applied.stages {
        let mut candidate = out.clone();
        match set_target(&mut candidate, name, &stage.target, cache, trusted) {
            Ok(()) => out = candidate,
            Err(e) => problems.push(e),
        }
    }
    for (name, shadow) in &applied.shadows {
        let mut candidate = out.clone();
        match set_shadow(&mut candidate, name, shadow, cache, trusted) {
            Ok(()) => out = candidate,
            Err(e) => problems.push(e),
        }
    }
    (out, problems)
}

#[cfg(test)]
mod tests {
    use super::*;
    use conveyor_shared::ota::{ArtifactId, ArtifactRef};

    fn config() -> AgentConfig {
        crate::config::test_config(
            "[[stages]]\ntype = \"inference\"\nname = \"classify\"\nmodel = \"a.json\"",
        )
    }

    fn model(v: &str) -> StageTarget {
        StageTarget::Model(ArtifactRef {
            name: "m".into(),
            version: v.into(),
            id: ArtifactId::of_payload(v),
        })
    }

    #[test]
    fn persisted_state_round_trips_and_a_damaged_file_is_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Applied::load(dir.path()), Applied::default());
        let a = Applied {
            generation: Some(4),
            stages: BTreeMap::from([(
                "classify".into(),
                AppliedStage {
                    target: model("2"),
                    previous: None,
                },
            )]),
            shadows: BTreeMap::from([(
                "classify".into(),
                ArtifactRef {
                    name: "m".into(),
                    version: "3".into(),
                    id: ArtifactId::of_payload("3"),
                },
            )]),
        };
        a.save(dir.path()).unwrap();
        assert_eq!(Applied::load(dir.path()), a);
        std::fs::write(path(dir.path()), b"{ torn").unwrap();
        assert_eq!(Applied::load(dir.path()), Applied::default());
        assert!(dir.path().join("ota/applied.json.unreadable").exists());
    }

    #[test]
    fn targets_that_do_not_fit_are_named_and_left_out() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ArtifactCache::new(dir.path());
        let c = config();
        let mut applied = Applied::default();
        applied.stages.insert(
            "nope".into(),
            AppliedStage {
                target: model("1"),
                previous: None,
            },
        );
        applied.stages.insert(
            "classify".into(),
            AppliedStage {
                target: StageTarget::Transforms(vec![]),
                previous: None,
            },
        );
        let (out, problems) = overlay(&c, &applied, &cache, &[]);
        assert_eq!(out, c, "nothing laid over");
        assert_eq!(problems.len(), 2);
        assert!(problems.contains(&OverlayError::NoStage("nope".into())));
        assert!(problems
            .iter()
            .any(|p| matches!(p, OverlayError::WrongKind { .. })));
        // A model not in the cache.
        let mut c2 = c.clone();
        let e = set_target(&mut c2, "classify", &model("1"), &cache, &[]).unwrap_err();
        assert!(e.to_string().contains("not in the cache"), "{e}");
    }
}
