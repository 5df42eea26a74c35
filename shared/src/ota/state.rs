//! The agent's report of what it runs: published retained on
//! `conveyor/v1/<device>/state` whenever it changes, so the hub (and an
//! operator) always sees the latest, also after either side restarts.
//!
//! It says which desired-state generation is applied, what each stage runs
//! now and ran before (the previous artifact stays in the agent's cache, so
//! going back needs no download), and the phase of the last change. A
//! refused document or artifact is a change that `failed`, with the reason:
//! that is how a tampered file or a replayed desired state becomes visible
//! in the hub's API.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::manifest::ArtifactId;

/// Longest failure reason carried (longer ones are cut).
pub const MAX_REASON_BYTES: usize = 1024;

/// One artifact a stage runs. `id` is `None` for what the agent's own
/// config names (not delivered by the hub).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunningArtifact {
    pub name: String,
    pub version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<ArtifactId>,
}

impl std::fmt::Display for RunningArtifact {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.name, self.version)
    }
}

/// What one stage runs: a model, or a chain of transforms in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StageRunning {
    Model(RunningArtifact),
    Transforms(Vec<RunningArtifact>),
}

impl std::fmt::Display for StageRunning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StageRunning::Model(a) => write!(f, "{a}"),
            StageRunning::Transforms(chain) => {
                for (i, a) in chain.iter().enumerate() {
                    if i > 0 {
                        f.write_str(" -> ")?;
                    }
                    write!(f, "{a}")?;
                }
                Ok(())
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageState {
    pub running: StageRunning,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<StageRunning>,
    /// The candidate model running beside it in shadow (not acted on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<RunningArtifact>,
}

/// Where the last change is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Downloading,
    Verifying,
    Applying,
    Applied,
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// The desired-state generation being applied; `None` for a document
    /// refused before its generation could be trusted (a bad signature).
    #[serde(default)]
    pub generation: Option<u64>,
    pub phase: Phase,
    /// Why it failed (`failed` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Downloading: bytes of the artifacts' files done and in all.
    #[serde(default)]
    pub bytes_done: u64,
    #[serde(default)]
    pub bytes_total: u64,
    /// When this phase began, µs since the Unix epoch.
    pub since_us: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentState {
    pub device_id: String,
    /// The desired-state generation applied; `None` until one is.
    #[serde(default)]
    pub generation: Option<u64>,
    /// By stage name (as in the agent's `[[stages]]`).
    #[serde(default)]
    pub stages: BTreeMap<String, StageState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_change: Option<Change>,
    /// The agent's tags (`tags` in `agent.toml`): what deploys select by.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    pub ts_us: i64,
}

/// Cuts `reason` to [`MAX_REASON_BYTES`] on a character boundary.
pub fn bounded_reason(reason: &str) -> String {
    if reason.len() <= MAX_REASON_BYTES {
        return reason.to_string();
    }
    let mut end = MAX_REASON_BYTES;
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &reason[..end])
}

#[derive(Debug, thiserror::Error)]
#[error("malformed agent state: {0}")]
pub struct StateError(String);

impl AgentState {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("agent state serialises")
    }

    pub fn decode(bytes: &[u8]) -> Result<AgentState, StateError> {
        serde_json::from_slice(bytes).map_err(|e| StateError(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trips_and_reads_as_json() {
        let a = RunningArtifact {
            name: "basicmotions-edge".into(),
            version: "2".into(),
            id: Some(ArtifactId::of_payload("x")),
        };
        let state = AgentState {
            device_id: "gw-1".into(),
            generation: Some(3),
            stages: BTreeMap::from([(
                "classify".into(),
                StageState {
                    running: StageRunning::Model(a.clone()),
                    previous: Some(StageRunning::Model(RunningArtifact {
                        version: "1".into(),
                        id: None,
                        ..a.clone()
                    })),
                    shadow: Some(RunningArtifact {
                        version: "3".into(),
                        ..a
                    }),
                },
            )]),
            last_change: Some(Change {
                generation: Some(3),
                phase: Phase::Applied,
                reason: None,
                bytes_done: 10,
                bytes_total: 10,
                since_us: 1,
            }),
            tags: BTreeMap::from([("store".into(), "7".into())]),
            ts_us: 2,
        };
        let bytes = state.encode();
        assert_eq!(AgentState::decode(&bytes).unwrap(), state);
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.contains(r#""phase":"applied""#), "{text}");
    }

    #[test]
    fn long_reasons_are_cut_on_a_character_boundary() {
        let r = bounded_reason(&"é".repeat(MAX_REASON_BYTES));
        assert!(r.len() <= MAX_REASON_BYTES + 3 && r.ends_with("..."));
        assert_eq!(bounded_reason("short"), "short");
    }

    proptest! {
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = AgentState::decode(&bytes);
        }
    }
}
