//! The desired state: what the hub wants one device to run, per named
//! stage, signed, with a generation that only grows.
//!
//! It is published retained on `conveyor/v1/<device>/down/desired`, so an
//! agent that was offline gets the latest on reconnect. The generation is
//! the rollback protection: an agent applies a document only if it is
//! newer than the one it applied, so an old document (replayed, or
//! retained by a broker from before) is refused with the reason, and the
//! same one delivered again is a no-op.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::manifest::ArtifactId;
use super::sign::{Envelope, KeyId, PublicKey, SecretKey, VerifyError};

/// The payload type desired states are signed as.
pub const DESIRED_TYPE: &str = "application/vnd.conveyor.desired-state+json";
/// Most stages one desired state names.
pub const MAX_STAGES: usize = 64;
/// Most transforms one stage's chain has.
pub const MAX_CHAIN: usize = 16;

/// One artifact, by name, version and id (the id is what is checked).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArtifactRef {
    pub name: String,
    pub version: String,
    pub id: ArtifactId,
}

impl std::fmt::Display for ArtifactRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.name, self.version)
    }
}

/// One transform of a chain: the module, and the JSON object its
/// `conveyor_init` is given (as `config` in `agent.toml`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChainLink {
    pub artifact: ArtifactRef,
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub config: serde_json::Map<String, serde_json::Value>,
}

impl ChainLink {
    pub fn new(artifact: ArtifactRef) -> Self {
        ChainLink {
            artifact,
            config: Default::default(),
        }
    }
}

/// What one stage runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum StageTarget {
    /// An inference stage's model.
    Model(ArtifactRef),
    /// A transform stage's chain, in order.
    Transforms(Vec<ChainLink>),
}

impl StageTarget {
    /// Every artifact the stage needs.
    pub fn artifacts(&self) -> Vec<&ArtifactRef> {
        match self {
            StageTarget::Model(a) => vec![a],
            StageTarget::Transforms(chain) => chain.iter().map(|l| &l.artifact).collect(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DesiredState {
    pub device_id: String,
    /// Grows with every change the hub makes for this device.
    pub generation: u64,
    /// By stage name (as in the agent's `[[stages]]`).
    pub stages: BTreeMap<String, StageTarget>,
    /// Candidate models to run beside an inference stage's model, on the
    /// same windows, without acting on them (a rollout's shadow run): by
    /// stage name. The agent reports how the two compare in its
    /// heartbeats (`StageStats::shadow`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub shadows: BTreeMap<String, ArtifactRef>,
    /// When the hub issued it, µs since the Unix epoch.
    pub issued_at_us: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DesiredError {
    #[error(transparent)]
    Verify(#[from] VerifyError),
    #[error("malformed desired state: {0}")]
    Malformed(String),
    #[error("desired state is for device {found:?}, not this one ({expected:?})")]
    WrongDevice { expected: String, found: String },
    #[error("desired state generation {got} is older than the applied {applied}: refused (a replayed or stale document)")]
    Stale { got: u64, applied: u64 },
    #[error("desired state names {0} stages, over the limit of {MAX_STAGES}")]
    TooManyStages(usize),
    #[error("desired state stage {0:?}: a transform chain of 1 to {MAX_CHAIN} transforms")]
    BadChain(String),
    #[error("desired state names {0} shadows, over the limit of {MAX_STAGES}")]
    TooManyShadows(usize),
}

/// What a verified desired state means for an agent that applied
/// `applied`.
#[derive(Debug, Clone, PartialEq)]
pub enum Opened {
    /// Newer than what runs: to apply.
    New(DesiredState, KeyId),
    /// The one already applied (delivered again): nothing to do.
    Current,
}

impl DesiredState {
    pub fn to_payload(&self) -> String {
        serde_json::to_string(self).expect("a desired state serialises")
    }

    pub fn sign(&self, key: &SecretKey) -> Envelope {
        Envelope::sign(DESIRED_TYPE, self.to_payload(), key)
    }

    fn validate(&self) -> Result<(), DesiredError> {
        if self.stages.len() > MAX_STAGES {
            return Err(DesiredError::TooManyStages(self.stages.len()));
        }
        if self.shadows.len() > MAX_STAGES {
            return Err(DesiredError::TooManyShadows(self.shadows.len()));
        }
        for (name, target) in &self.stages {
            if let StageTarget::Transforms(chain) = target {
                if chain.is_empty() || chain.len() > MAX_CHAIN {
                    return Err(DesiredError::BadChain(name.clone()));
                }
            }
        }
        Ok(())
    }

    /// Decodes, verifies (a trusted key, the right device) and dates a
    /// desired state against the generation `applied` (none yet: `None`).
    pub fn open(
        bytes: &[u8],
        trusted: &[PublicKey],
        device: &str,
        applied: Option<u64>,
    ) -> Result<Opened, DesiredError> {
        let envelope = Envelope::decode(bytes)?;
        let (payload, signed_by) = envelope.verify(DESIRED_TYPE, trusted)?;
        let doc: DesiredState =
            serde_json::from_str(payload).map_err(|e| DesiredError::Malformed(e.to_string()))?;
        if doc.device_id != device {
            return Err(DesiredError::WrongDevice {
                expected: device.into(),
                found: doc.device_id.chars().take(80).collect(),
            });
        }
        doc.validate()?;
        match applied {
            Some(a) if doc.generation < a => Err(DesiredError::Stale {
                got: doc.generation,
                applied: a,
            }),
            Some(a) if doc.generation == a => Ok(Opened::Current),
            _ => Ok(Opened::New(doc, signed_by)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn reference(v: &str) -> ArtifactRef {
        ArtifactRef {
            name: "basicmotions-edge".into(),
            version: v.into(),
            id: ArtifactId::of_payload(v),
        }
    }

    fn desired(generation: u64) -> DesiredState {
        DesiredState {
            device_id: "gw-1".into(),
            generation,
            stages: BTreeMap::from([
                ("classify".into(), StageTarget::Model(reference("2"))),
                (
                    "redact".into(),
                    StageTarget::Transforms(vec![
                        ChainLink::new(reference("1")),
                        ChainLink::new(reference("3")),
                    ]),
                ),
            ]),
            shadows: BTreeMap::new(),
            issued_at_us: 5,
        }
    }

    fn hub() -> SecretKey {
        SecretKey::from_seed([9; 32])
    }

    #[test]
    fn a_newer_generation_opens_the_same_is_current_an_older_is_refused() {
        let bytes = desired(7).sign(&hub()).encode();
        let trusted = [hub().public()];
        match DesiredState::open(&bytes, &trusted, "gw-1", None).unwrap() {
            Opened::New(doc, by) => {
                assert_eq!(doc, desired(7));
                assert_eq!(by, hub().public().id());
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            DesiredState::open(&bytes, &trusted, "gw-1", Some(6)),
            Ok(Opened::New(..))
        ));
        assert_eq!(
            DesiredState::open(&bytes, &trusted, "gw-1", Some(7)),
            Ok(Opened::Current)
        );
        assert_eq!(
            DesiredState::open(&bytes, &trusted, "gw-1", Some(8)),
            Err(DesiredError::Stale { got: 7, applied: 8 })
        );
    }

    #[test]
    fn another_devices_or_another_keys_document_is_refused() {
        let trusted = [hub().public()];
        let bytes = desired(1).sign(&hub()).encode();
        assert!(matches!(
            DesiredState::open(&bytes, &trusted, "gw-2", None),
            Err(DesiredError::WrongDevice { .. })
        ));
        let other = desired(1).sign(&SecretKey::from_seed([1; 32])).encode();
        assert!(matches!(
            DesiredState::open(&other, &trusted, "gw-1", None),
            Err(DesiredError::Verify(VerifyError::UnknownKey(_)))
        ));
        // A manifest's signature does not make a desired state.
        let as_manifest =
            Envelope::sign(super::super::MANIFEST_TYPE, desired(1).to_payload(), &hub());
        assert!(matches!(
            DesiredState::open(&as_manifest.encode(), &trusted, "gw-1", None),
            Err(DesiredError::Verify(VerifyError::WrongType { .. }))
        ));
    }

    #[test]
    fn an_empty_chain_is_refused() {
        let mut d = desired(1);
        d.stages.insert("t".into(), StageTarget::Transforms(vec![]));
        let bytes = d.sign(&hub()).encode();
        assert_eq!(
            DesiredState::open(&bytes, &[hub().public()], "gw-1", None),
            Err(DesiredError::BadChain("t".into()))
        );
    }

    #[test]
    fn reads_as_json_on_the_wire() {
        let text = String::from_utf8(desired(1).sign(&hub()).encode()).unwrap();
        assert!(text.contains(r#"\"generation\":1"#), "{text}");
        assert!(text.contains(DESIRED_TYPE), "{text}");
    }

    proptest! {
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = DesiredState::open(&bytes, &[hub().public()], "gw-1", Some(3));
        }

        #[test]
        fn a_signed_document_of_any_generation_opens_by_the_rule(generation in any::<u64>(), applied in proptest::option::of(any::<u64>())) {
            let bytes = desired(generation).sign(&hub()).encode();
            let opened = DesiredState::open(&bytes, &[hub().public()], "gw-1", applied);
            match applied {
                Some(a) if generation < a => {
                    let stale = matches!(opened, Err(DesiredError::Stale { .. }));
                    prop_assert!(stale);
                }
                Some(a) if generation == a => prop_assert_eq!(opened, Ok(Opened::Current)),
                _ => {
                    let new = matches!(opened, Ok(Opened::New(..)));
                    prop_assert!(new);
                }
            }
        }
    }
}
