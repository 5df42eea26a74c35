//! Per device: the desired state the hub signed last, and the state the
//! agent reported last.
//!
//! Both are files under `<store.path>/ota/devices/`, one pair per device:
//! `<device>.desired` holds the signed envelope exactly as published,
//! `<device>.state` the agent's JSON. They are written atomically (temp
//! file, fsync, rename) and read back at start. Files rather than a redb
//! table: the hub's store is the ingest path's, with its own group commit,
//! fault handling and reopen; these are a few KiB per device, written only
//! on a deploy or a change of phase, and a crash-safe file per device is
//! all they need, inspectable with `cat`.
//!
//! The generation only grows, also across restarts: the next one is one
//! above the stored one. A stored desired state that no longer verifies
//! (the key was replaced) is skipped and counted, but the generation it
//! claims still counts, so a number is never used twice.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use conveyor_shared::ota::{
    AgentState, ArtifactRef, DesiredState, Envelope, Opened, PublicKey, SecretKey, StageTarget,
};
use conveyor_shared::time::now_us;
use conveyor_shared::DeviceId;

use super::files::write_atomic;
use super::republish::{self, Facts};

const DESIRED_EXT: &str = ".desired";
const STATE_EXT: &str = ".state";
const TAGS_EXT: &str = ".tags";

/// Most tags the hub keeps per device, and the longest key or value.
pub const MAX_TAGS: usize = 64;
pub const MAX_TAG_LEN: usize = 128;

/// The most stages one desired state names (as the agent checks).
pub const MAX_STAGES: usize = conveyor_shared::ota::desired::MAX_STAGES;

#[derive(Debug, Clone)]
pub struct Desired {
    pub doc: DesiredState,
    /// The envelope as published.
    pub envelope: Vec<u8>,
}

#[derive(Debug, Default)]
pub struct DeviceOta {
    pub desired: Option<Desired>,
    /// The agent's latest report, and when it arrived (hub clock, µs).
    pub state: Option<(AgentState, i64)>,
    /// When the desired state was last published, µs.
    pub published_at_us: Option<i64>,
    /// Tags set on the hub (`cloud-hub device tag`), beside those the
    /// agent reports from its config.
    pub hub_tags: BTreeMap<String, String>,
    /// The highest generation ever used for the device (also one whose
    /// document no longer verifies).
    floor: u64,
}

/// A device's OTA standing as the device list shows it: who is behind.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct OtaView {
    pub desired_generation: Option<u64>,
    pub applied_generation: Option<u64>,
    pub phase: Option<conveyor_shared::ota::Phase>,
    /// It has a desired state it has not applied.
    pub behind: bool,
}

impl DeviceOta {
    pub fn view(&self) -> OtaView {
        let desired = self.desired.as_ref().map(|d| d.doc.generation);
        let applied = self.report().and_then(|s| s.generation);
        OtaView {
            desired_generation: desired,
            applied_generation: applied,
            phase: self
                .report()
                .and_then(|s| s.last_change.as_ref())
                .map(|c| c.phase),
            behind: desired.is_some_and(|d| applied.is_none_or(|a| a < d)),
        }
    }

    /// Whether to send the desired state again now (see `republish`).
    pub fn republish_due(&self, now_us: i64) -> bool {
        let Some(d) = &self.desired else {
            return false;
        };
        republish::due(
            Facts {
                desired: d.doc.generation,
                report: self.state.as_ref().map(|(s, at)| (s, *at)),
                last_sent_us: self.published_at_us,
            },
            now_us,
        )
    }

    pub fn report(&self) -> Option<&AgentState> {
        self.state.as_ref().map(|(s, _)| s)
    }

    /// The device's tags: what its agent reports, with the hub's own over
    /// them (the hub's word wins where both set a key).
    pub fn tags(&self) -> BTreeMap<String, String> {
        let mut tags = self.report().map(|s| s.tags.clone()).unwrap_or_default();
        tags.extend(self.hub_tags.clone());
        tags
    }
}

/// A tag the hub refuses.
#[derive(Debug, thiserror::Error)]
pub enum TagError {
    #[error("tag {0:?}: keys and values are 1-{MAX_TAG_LEN} characters, no control characters, and a key has no '='")]
    Bad(String),
    #[error("a device has at most {MAX_TAGS} tags set on the hub, this would make {0}")]
    TooMany(usize),
    #[error("cannot store the tags: {0}")]
    Io(#[from] std::io::Error),
}

fn tag_ok(s: &str) -> bool {
    !s.is_empty() && s.chars().count() <= MAX_TAG_LEN && !s.chars().any(char::is_control)
}

#[derive(Debug, thiserror::Error)]
pub enum SetError {
    #[error("the desired state would name {0} stages, over the limit of {MAX_STAGES}")]
    TooManyStages(usize),
    #[error("cannot store the desired state: {0}")]
    Io(#[from] std::io::Error),
}

/// What opening found wrong (each one logged).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Skipped {
    pub desired: u64,
    pub states: u64,
}

pub struct DeviceStore {
    dir: PathBuf,
    pub devices: BTreeMap<String, DeviceOta>,
}

impl DeviceStore {
    pub fn open(store_dir: &Path, trusted: &PublicKey) -> std::io::Result<(DeviceStore, Skipped)> {
        let dir = store_dir.join("ota").join("devices");
        std::fs::create_dir_all(&dir)?;
        let mut devices: BTreeMap<String, DeviceOta> = BTreeMap::new();
        let mut skipped = Skipped::default();
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            if let Some(device) = name.strip_suffix(DESIRED_EXT) {
                let Ok(bytes) = std::fs::read(&path) else {
                    skipped.desired += 1;
                    continue;
                };
                let d = devices.entry(device.into()).or_default();
                match DesiredState::open(&bytes, std::slice::from_ref(trusted), device, None) {
                    Ok(Opened::New(doc, _)) => {
                        d.floor = d.floor.max(doc.generation);
                        d.desired = Some(Desired {
                            doc,
                            envelope: bytes,
                        });
                    }
                    Ok(Opened::Current) => {}
                    Err(e) => {
                        skipped.desired += 1;
                        d.floor = d.floor.max(claimed_generation(&bytes));
                        tracing::error!(file = %path.display(), "skipping a desired state that does not verify against the hub's key: {e}");
                    }
                }
            } else if let Some(device) = name.strip_suffix(TAGS_EXT) {
                let read = std::fs::read(&path)
                    .map_err(|e| e.to_string())
                    .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()));
                match read {
                    Ok(tags) => devices.entry(device.into()).or_default().hub_tags = tags,
                    Err(e) => {
                        skipped.states += 1;
                        tracing::warn!(file = %path.display(), "skipping unreadable device tags: {e}");
                    }
                }
            } else if let Some(device) = name.strip_suffix(STATE_EXT) {
                let read = std::fs::read(&path)
                    .map_err(|e| e.to_string())
                    .and_then(|b| AgentState::decode(&b).map_err(|e| e.to_string()));
                match read {
                    Ok(s) if s.device_id == device => {
                        devices.entry(device.into()).or_default().state = Some((s, 0));
                    }
                    Ok(s) => {
                        skipped.states += 1;
                        tracing::warn!(file = %path.display(), "skipping an agent state of device {:?}", s.device_id);
                    }
                    Err(e) => {
                        skipped.states += 1;
                        tracing::warn!(file = %path.display(), "skipping an unreadable agent state: {e}");
                    }
                }
            }
        }
        Ok((DeviceStore { dir, devices }, skipped))
    }

    /// Applies `changes` (a stage to a target; `None`: the stage leaves the
    /// desired state, back to the agent's own config) to `device`'s
    /// desired state: the next generation, signed and stored. Returns it,
    /// to publish.
    pub fn set(
        &mut self,
        device: &DeviceId,
        changes: &BTreeMap<String, Option<StageTarget>>,
        key: &SecretKey,
    ) -> Result<Desired, SetError> {
        self.set_with_shadows(device, changes, &BTreeMap::new(), key)
    }

    /// [`Self::set`], also starting (`Some`) or stopping (`None`) shadow
    /// runs by stage. A stage set in `changes` and not named in `shadows`
    /// stops its shadow run: what it runs was just decided.
    pub fn set_with_shadows(
        &mut self,
        device: &DeviceId,
        changes: &BTreeMap<String, Option<StageTarget>>,
        shadow_changes: &BTreeMap<String, Option<ArtifactRef>>,
        key: &SecretKey,
    ) -> Result<Desired, SetError> {
        let entry = self.devices.entry(device.as_str().into()).or_default();
        let (mut stages, mut shadows) = entry
            .desired
            .as_ref()
            .map(|d| (d.doc.stages.clone(), d.doc.shadows.clone()))
            .unwrap_or_default();
        merge(&mut stages, changes);
        for stage in changes.keys() {
            shadows.remove(stage);
        }
        for (stage, shadow) in shadow_changes {
            match shadow {
                Some(a) => shadows.insert(stage.clone(), a.clone()),
                None => shadows.remove(stage),
            };
        }
        if stages.len() > MAX_STAGES {
            return Err(SetError::TooManyStages(stages.len()));
        }
        if shadows.len() > MAX_STAGES {
            return Err(SetError::TooManyStages(shadows.len()));
        }
        let generation = entry.floor + 1;
        let doc = DesiredState {
            device_id: device.as_str().into(),
            generation,
            stages,
            shadows,
            issued_at_us: now_us(),
        };
        let envelope: Envelope = doc.sign(key);
        let envelope = envelope.encode();
        write_atomic(&self.dir.join(format!("{device}{DESIRED_EXT}")), &envelope)?;
        entry.floor = generation;
        let desired = Desired { doc, envelope };
        entry.desired = Some(desired.clone());
        Ok(desired)
    }

    /// Sets (`Some`) or removes (`None`) the hub's tags on `device`, and
    /// returns its tags as they are then (the agent's and the hub's).
    pub fn tag(
        &mut self,
        device: &DeviceId,
        changes: &BTreeMap<String, Option<String>>,
    ) -> Result<BTreeMap<String, String>, TagError> {
        for (k, v) in changes {
            if !tag_ok(k) || k.contains('=') || v.as_deref().is_some_and(|v| !tag_ok(v)) {
                return Err(TagError::Bad(format!("{k}={}", v.as_deref().unwrap_or(""))));
            }
        }
        let entry = self.devices.entry(device.as_str().into()).or_default();
        let mut tags = entry.hub_tags.clone();
        for (k, v) in changes {
            match v {
                Some(v) => tags.insert(k.clone(), v.clone()),
                None => tags.remove(k),
            };
        }
        if tags.len() > MAX_TAGS {
            return Err(TagError::TooMany(tags.len()));
        }
        let bytes = serde_json::to_vec(&tags).expect("tags serialise");
        write_atomic(&self.dir.join(format!("{device}{TAGS_EXT}")), &bytes)?;
        entry.hub_tags = tags;
        Ok(entry.tags())
    }

    /// Keeps the agent's latest report, received at `now_us`, in memory
    /// and, with `persist`, on disk.
    pub fn report(&mut self, state: AgentState, now_us: i64, persist: bool) -> std::io::Result<()> {
        let path = self.dir.join(format!("{}{STATE_EXT}", state.device_id));
        let bytes = persist.then(|| state.encode());
        let entry = self.devices.entry(state.device_id.clone()).or_default();
        entry.state = Some((state, now_us));
        match bytes {
            Some(b) => write_atomic(&path, &b),
            None => Ok(()),
        }
    }
}

/// Merges `changes` into `stages`: a target sets its stage, `None`
/// removes it.
pub fn merge(
    stages: &mut BTreeMap<String, StageTarget>,
    changes: &BTreeMap<String, Option<StageTarget>>,
) {
    for (stage, target) in changes {
        match target {
            Some(t) => stages.insert(stage.clone(), t.clone()),
            None => stages.remove(stage),
        };
    }
}

/// The generation an unverifiable document claims (0 if none can be read).
fn claimed_generation(bytes: &[u8]) -> u64 {
    Envelope::decode(bytes)
        .ok()
        .and_then(|e| serde_json::from_str::<serde_json::Value>(&e.payload).ok())
        .and_then(|v| v["generation"].as_u64())
        .unwrap_or(0)
}

#[cfg(test)]
#[path = "devices_tests.rs"]
mod tests;
