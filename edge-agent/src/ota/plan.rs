//! What a verified desired state asks of this agent, as plain data: which
//! stages change, which artifacts must be fetched first, and what is
//! wrong with it. No I/O; [`super::reconciler`] carries the plan out.

use std::collections::BTreeMap;

use conveyor_shared::ota::{ArtifactKind, ArtifactRef, DesiredState, SignedManifest, StageTarget};

use super::applied::{stage_index, AppliedStage};
use crate::config::AgentConfig;
use crate::pipeline::StageConfig;

/// The changes a desired state makes, against what is applied.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Stages to set, by name, with their new target.
    pub set: BTreeMap<String, StageTarget>,
    /// Stages the hub no longer sets: back to `agent.toml`'s.
    pub unset: Vec<String>,
    /// The shadow runs the document asks for, by inference stage (all of
    /// them: they replace the applied ones).
    pub shadows: BTreeMap<String, ArtifactRef>,
    /// Artifacts of `set` and `shadows` (each once) that are not in the
    /// cache.
    pub fetch: Vec<ArtifactRef>,
}

/// Checks that every stage the document names exists with the right kind
/// and says what changes. `cached` tells which artifacts are already here.
pub fn plan(
    doc: &DesiredState,
    config: &AgentConfig,
    applied: &BTreeMap<String, AppliedStage>,
    cached: impl Fn(&ArtifactRef) -> bool,
) -> Result<Plan, String> {
    let mut set = BTreeMap::new();
    let mut fetch: Vec<ArtifactRef> = Vec::new();
    for (name, target) in &doc.stages {
        let Some(i) = stage_index(config, name) else {
            let known: Vec<String> = config
                .stages
                .iter()
                .enumerate()
                .map(|(i, s)| s.name(i))
                .collect();
            return Err(format!(
                "stage {name:?} is not a stage of this agent (its stages: {known:?})"
            ));
        };
        match (&config.stages[i], target) {
            (StageConfig::Inference(_), StageTarget::Model(_))
            | (StageConfig::Transform(_), StageTarget::Transforms(_)) => {}
            (StageConfig::Inference(_), _) => {
                return Err(format!(
                    "stage {name:?} is an inference stage; the desired state gives it a transform chain"
                ))
            }
            (StageConfig::Transform(_), _) => {
                return Err(format!(
                    "stage {name:?} is a transform stage; the desired state gives it a model"
                ))
            }
        }
        if applied.get(name).is_some_and(|a| a.target == *target) {
            continue;
        }
        for a in target.artifacts() {
            if !cached(a) && !fetch.iter().any(|f| f.id == a.id) {
                fetch.push(a.clone());
            }
        }
        set.insert(name.clone(), target.clone());
    }
    for (name, candidate) in &doc.shadows {
        match stage_index(config, name).map(|i| &config.stages[i]) {
            Some(StageConfig::Inference(_)) => {}
            Some(StageConfig::Transform(_)) => {
                return Err(format!(
                "stage {name:?} is a transform stage; only an inference stage runs a shadow model"
            ))
            }
            None => {
                return Err(format!(
                    "shadow for stage {name:?}: not a stage of this agent"
                ))
            }
        }
        if !cached(candidate) && !fetch.iter().any(|f| f.id == candidate.id) {
            fetch.push(candidate.clone());
        }
    }
    let unset = applied
        .keys()
        .filter(|name| !doc.stages.contains_key(*name))
        .cloned()
        .collect();
    Ok(Plan {
        set,
        unset,
        shadows: doc.shadows.clone(),
        fetch,
    })
}

/// What the running stage offers a model: channels per reading and
/// readings per window.
pub type ModelShape = (usize, usize);

/// Checks a fetched manifest against what the desired state said it is
/// and what the stage that will run it offers, before any file is
/// downloaded.
pub fn check_manifest(
    m: &SignedManifest,
    wanted: &ArtifactRef,
    kind: ArtifactKind,
    shape: Option<ModelShape>,
    max_bytes: u64,
) -> Result<(), String> {
    let man = &m.manifest;
    if m.id != wanted.id {
        return Err(format!(
            "the hub's manifest for {wanted} has id {}, the desired state names {}",
            m.id, wanted.id
        ));
    }
    if man.name != wanted.name || man.version != wanted.version {
        return Err(format!(
            "artifact {} is {}@{}, the desired state calls it {wanted}",
            m.id, man.name, man.version
        ));
    }
    if man.kind != kind {
        return Err(format!(
            "{wanted} is a {:?}, the stage runs a {kind:?}",
            man.kind
        ));
    }
    if kind == ArtifactKind::Transform
        && !crate::transform::HAS_COMPILER
        && man
            .precompiled_file(conveyor_wasm_engine::HOST_TARGET)
            .is_none()
    {
        return Err(format!(
            "transform {wanted} has no code precompiled for {}, and this agent is built without \
             the WASM compiler (a hub that precompiles pushes for it, or an agent with the \
             `compiler` feature, can run it)",
            conveyor_wasm_engine::HOST_TARGET
        ));
    }
    let size: u64 = super::cache::wanted_files(man).map(|f| f.size).sum();
    if size > max_bytes {
        return Err(format!(
            "{wanted} is {size} bytes, over this agent's bound of {max_bytes} (ota.max_artifact_mb)"
        ));
    }
    if let (Some(input), Some((channels, window))) = (man.requires.model_input, shape) {
        if (input.channels, input.window) != (channels, window) {
            return Err(format!(
                "model {wanted} takes {} channels x {} readings; the stage's stream gives {channels} x {window}",
                input.channels, input.window
            ));
        }
    }
    if let Some(abi) = man.requires.transform_abi {
        if abi != conveyor_wasm_abi::ABI_VERSION {
            return Err(format!(
                "transform {wanted} was built for transform ABI {abi}; this agent runs ABI {}",
                conveyor_wasm_abi::ABI_VERSION
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use conveyor_shared::ota::{
        ArtifactFile, ArtifactId, ArtifactManifest, ChainLink, ModelInput, Requires, SecretKey,
    };

    fn config() -> AgentConfig {
        crate::config::test_config(
            "[[stages]]\ntype = \"transform\"\nname = \"features\"\nstream = \"motion\"\nchain = [{ wasm = \"a.wasm\" }]\n[[stages]]\ntype = \"inference\"\nname = \"classify\"\nmodel = \"a.json\"",
        )
    }

    fn artifact(name: &str, v: &str) -> ArtifactRef {
        ArtifactRef {
            name: name.into(),
            version: v.into(),
            id: ArtifactId::of_payload(&format!("{name}{v}")),
        }
    }

    fn doc(stages: Vec<(&str, StageTarget)>) -> DesiredState {
        DesiredState {
            device_id: "d1".into(),
            generation: 2,
            stages: stages.into_iter().map(|(n, t)| (n.into(), t)).collect(),
            shadows: BTreeMap::new(),
            issued_at_us: 0,
        }
    }

    #[test]
    fn shadows_are_fetched_and_only_inference_stages_run_them() {
        let mut d = doc(vec![]);
        d.shadows.insert("classify".into(), artifact("m", "3"));
        let p = plan(&d, &config(), &BTreeMap::new(), |_| false).unwrap();
        assert_eq!(p.shadows, d.shadows);
        assert_eq!(p.fetch, vec![artifact("m", "3")]);
        assert!(p.set.is_empty());
        let cached = plan(&d, &config(), &BTreeMap::new(), |_| true).unwrap();
        assert!(cached.fetch.is_empty());
        let mut bad = doc(vec![]);
        bad.shadows.insert("features".into(), artifact("m", "3"));
        let e = plan(&bad, &config(), &BTreeMap::new(), |_| false).unwrap_err();
        assert!(e.contains("only an inference stage"), "{e}");
        let mut none = doc(vec![]);
        none.shadows.insert("nope".into(), artifact("m", "3"));
        let e = plan(&none, &config(), &BTreeMap::new(), |_| false).unwrap_err();
        assert!(e.contains("\"nope\""), "{e}");
    }

    #[test]
    fn only_what_changed_is_set_and_only_what_is_missing_fetched() {
        let m2 = StageTarget::Model(artifact("m", "2"));
        let chain = StageTarget::Transforms(vec![
            ChainLink::new(artifact("t", "1")),
            ChainLink::new(artifact("t", "1")),
        ]);
        let applied = BTreeMap::from([(
            "classify".to_string(),
            AppliedStage {
                target: m2.clone(),
                previous: None,
            },
        )]);
        let p = plan(
            &doc(vec![("classify", m2), ("features", chain.clone())]),
            &config(),
            &applied,
            |_| false,
        )
        .unwrap();
        assert_eq!(p.set.keys().collect::<Vec<_>>(), vec!["features"]);
        assert_eq!(p.fetch, vec![artifact("t", "1")], "each artifact once");
        assert!(p.unset.is_empty());
        // Cached: nothing to fetch. Not named any more: unset.
        let p = plan(&doc(vec![("features", chain)]), &config(), &applied, |_| {
            true
        })
        .unwrap();
        assert!(p.fetch.is_empty());
        assert_eq!(p.unset, vec!["classify".to_string()]);
    }

    #[test]
    fn unknown_stages_and_wrong_kinds_are_refused_with_the_reason() {
        let e = plan(
            &doc(vec![("nope", StageTarget::Model(artifact("m", "1")))]),
            &config(),
            &BTreeMap::new(),
            |_| false,
        )
        .unwrap_err();
        assert!(e.contains("\"nope\"") && e.contains("classify"), "{e}");
        let e = plan(
            &doc(vec![("features", StageTarget::Model(artifact("m", "1")))]),
            &config(),
            &BTreeMap::new(),
            |_| false,
        )
        .unwrap_err();
        assert!(e.contains("transform stage"), "{e}");
    }

    #[test]
    fn a_manifest_must_be_what_was_asked_for_and_fit_the_stage() {
        let key = SecretKey::from_seed([5; 32]);
        let manifest = ArtifactManifest {
            kind: ArtifactKind::Model,
            name: "m".into(),
            version: "2".into(),
            files: vec![ArtifactFile {
                name: "m.json".into(),
                sha256: "0".repeat(64),
                size: 100,
            }],
            requires: Requires {
                model_input: Some(ModelInput {
                    channels: 6,
                    window: 100,
                }),
                transform_abi: None,
            },
            created_at_us: 0,
        };
        let m = manifest.sign(&key).unwrap();
        let wanted = ArtifactRef {
            name: "m".into(),
            version: "2".into(),
            id: m.id.clone(),
        };
        assert_eq!(
            check_manifest(&m, &wanted, ArtifactKind::Model, Some((6, 100)), 1000),
            Ok(())
        );
        let e = check_manifest(&m, &wanted, ArtifactKind::Model, Some((1, 1460)), 1000);
        assert!(e.unwrap_err().contains("6 channels x 100 readings"));
        let e = check_manifest(&m, &wanted, ArtifactKind::Model, None, 99);
        assert!(e.unwrap_err().contains("over this agent's bound"));
        let e = check_manifest(&m, &wanted, ArtifactKind::Transform, None, 1000);
        assert!(e.unwrap_err().contains("Transform"));
        let other = ArtifactRef {
            id: ArtifactId::of_payload("x"),
            ..wanted.clone()
        };
        let e = check_manifest(&m, &other, ArtifactKind::Model, None, 1000);
        assert!(e.unwrap_err().contains("has id"));
    }
}
