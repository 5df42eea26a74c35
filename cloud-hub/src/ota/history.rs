//! Each device's history of changes: every desired state the hub set for
//! it (and who set it) and every phase its agent reported reaching
//! (downloading, applied with what it then runs, failed with why). One
//! [`Journal`] per device in `<store>/ota/history/<device>.jsonl`, served
//! at `GET /api/v1/devices/{id}/history`.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use conveyor_shared::ota::{AgentState, Change, DesiredState, Phase, StageRunning, StageTarget};
use conveyor_shared::DeviceId;
use serde::{Deserialize, Serialize};

use crate::journal::Journal;

/// One device's history file's bound before it rotates.
const MAX_BYTES: u64 = 256 << 10;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub at_us: i64,
    /// `desired` (the hub set it), or the phase the agent reported
    /// (`downloading`, `verifying`, `applying`, `applied`, `failed`, ...).
    pub event: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
    /// What changed, in words.
    pub what: String,
    /// Who set a desired state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
}

pub struct DeviceHistory {
    dir: PathBuf,
    /// One append (and rotation) at a time, over every device's file.
    writing: Mutex<()>,
}

impl DeviceHistory {
    pub fn new(store_dir: &Path) -> DeviceHistory {
        DeviceHistory {
            dir: store_dir.join("ota").join("history"),
            writing: Mutex::new(()),
        }
    }

    /// The device's file, to read (off the async threads:
    /// `journal.last::<HistoryEntry>(n)`).
    pub fn journal(&self, device: &DeviceId) -> Journal {
        Journal::new(self.dir.join(format!("{device}.jsonl")), MAX_BYTES)
    }

    /// Writes `entry` down; a failure is logged, not returned (what it
    /// records has already happened).
    pub fn record(&self, device: &DeviceId, entry: HistoryEntry) {
        let _one = self.writing.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = self.journal(device).append(&entry) {
            tracing::warn!(device = %device, "cannot write the device's history: {e}");
        }
    }
}

/// A desired state the hub just set, by `by`.
pub fn desired(doc: &DesiredState, by: &str, at_us: i64) -> HistoryEntry {
    let mut parts: Vec<String> = doc
        .stages
        .iter()
        .map(|(stage, t)| format!("{stage}: {}", target_text(t)))
        .collect();
    parts.extend(
        doc.shadows
            .iter()
            .map(|(stage, a)| format!("{stage}: shadow {a}")),
    );
    HistoryEntry {
        at_us,
        event: "desired".into(),
        generation: Some(doc.generation),
        what: if parts.is_empty() {
            "every stage back to the agent's own config".into()
        } else {
            parts.join("; ")
        },
        by: Some(by.to_string()),
    }
}

/// A phase the agent reported reaching.
pub fn reported(state: &AgentState, change: &Change, at_us: i64) -> HistoryEntry {
    let what = match change.phase {
        Phase::Applied => {
            let runs: Vec<String> = state
                .stages
                .iter()
                .map(|(stage, st)| match &st.shadow {
                    Some(s) => format!("{stage}: {} (shadow {s})", running(&st.running)),
                    None => format!("{stage}: {}", running(&st.running)),
                })
                .collect();
            if runs.is_empty() {
                "runs its own config".into()
            } else {
                format!("runs {}", runs.join("; "))
            }
        }
        Phase::Failed => format!(
            "failed: {}",
            change.reason.as_deref().unwrap_or("no reason given")
        ),
        Phase::Downloading if change.bytes_total > 0 => {
            format!("downloading {} bytes", change.bytes_total)
        }
        _ => String::new(),
    };
    HistoryEntry {
        at_us,
        event: serde_json::to_value(change.phase)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_else(|| format!("{:?}", change.phase)),
        generation: change.generation,
        what,
        by: None,
    }
}

/// A stage's target in words: `model m@2`, `transforms a@1 -> b@2`.
pub fn target_text(t: &StageTarget) -> String {
    match t {
        StageTarget::Model(a) => format!("model {a}"),
        StageTarget::Transforms(chain) => format!(
            "transforms {}",
            chain
                .iter()
                .map(|l| l.artifact.to_string())
                .collect::<Vec<_>>()
                .join(" -> ")
        ),
    }
}

fn running(r: &StageRunning) -> String {
    match r {
        StageRunning::Model(_) => format!("model {r}"),
        StageRunning::Transforms(_) => format!("transforms {r}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use conveyor_shared::ota::{ArtifactId, ArtifactRef, RunningArtifact, StageState};

    fn artifact(v: &str) -> ArtifactRef {
        ArtifactRef {
            name: "m".into(),
            version: v.into(),
            id: ArtifactId::of_payload(v),
        }
    }

    #[test]
    fn entries_say_what_changed_and_who_asked() {
        let doc = DesiredState {
            device_id: "d".into(),
            generation: 4,
            stages: [("classify".to_string(), StageTarget::Model(artifact("2")))].into(),
            shadows: [("classify".to_string(), artifact("3"))].into(),
            issued_at_us: 0,
        };
        let e = desired(&doc, "rollout 7", 10);
        assert_eq!(
            (
                e.event.as_str(),
                e.generation,
                e.what.as_str(),
                e.by.as_deref()
            ),
            (
                "desired",
                Some(4),
                "classify: model m@2; classify: shadow m@3",
                Some("rollout 7")
            )
        );
        let mut state = AgentState {
            device_id: "d".into(),
            generation: Some(4),
            stages: [(
                "classify".to_string(),
                StageState {
                    running: StageRunning::Model(RunningArtifact {
                        name: "m".into(),
                        version: "2".into(),
                        id: None,
                    }),
                    previous: None,
                    shadow: None,
                },
            )]
            .into(),
            last_change: None,
            tags: Default::default(),
            ts_us: 0,
        };
        let mut change = Change {
            generation: Some(4),
            phase: Phase::Applied,
            reason: None,
            bytes_done: 0,
            bytes_total: 0,
            since_us: 0,
        };
        let e = reported(&state, &change, 11);
        assert_eq!(
            (e.event.as_str(), e.what.as_str()),
            ("applied", "runs classify: model m@2")
        );
        change.phase = Phase::Failed;
        change.reason = Some("signature does not verify".into());
        state.stages.clear();
        let e = reported(&state, &change, 12);
        assert_eq!(e.what, "failed: signature does not verify");
    }

    #[test]
    fn the_history_is_kept_per_device() {
        let dir = tempfile::tempdir().unwrap();
        let h = DeviceHistory::new(dir.path());
        let (a, b) = (DeviceId::new("a").unwrap(), DeviceId::new("b").unwrap());
        for i in 0..3 {
            h.record(
                &a,
                HistoryEntry {
                    at_us: i,
                    event: "desired".into(),
                    generation: Some(i as u64),
                    what: String::new(),
                    by: None,
                },
            );
        }
        let read = |d: &DeviceId| h.journal(d).last::<HistoryEntry>(10).unwrap();
        assert_eq!(
            read(&a).iter().map(|e| e.at_us).collect::<Vec<_>>(),
            vec![0, 1, 2]
        );
        assert!(read(&b).is_empty());
    }
}
