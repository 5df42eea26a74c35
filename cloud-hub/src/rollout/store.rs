//! Rollouts on disk: one JSON file per rollout in `<store>/rollouts/`,
//! written whole (crash-safe: temp file, fsync, rename) after every step,
//! so a hub restarted mid-rollout resumes where it was.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::machine::Rollout;
use crate::ota::files::write_atomic;

const EXT: &str = ".json";

#[derive(Debug)]
pub struct RolloutStore {
    dir: PathBuf,
    pub rollouts: BTreeMap<u64, Rollout>,
}

impl RolloutStore {
    /// Reads every stored rollout; a file that does not read is skipped
    /// with a warning (and counted in the second value), not fatal.
    pub fn open(store_dir: &Path) -> std::io::Result<(RolloutStore, u64)> {
        let dir = store_dir.join("rollouts");
        std::fs::create_dir_all(&dir)?;
        let mut rollouts = BTreeMap::new();
        let mut skipped = 0;
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            let is_ours = path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.ends_with(EXT) && !n.starts_with('.'));
            if !is_ours {
                continue;
            }
            let read = std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<Rollout>(&b).map_err(|e| e.to_string()));
            match read {
                Ok(r) => {
                    rollouts.insert(r.id, r);
                }
                Err(e) => {
                    skipped += 1;
                    tracing::warn!(file = %path.display(), "skipping a rollout that does not read: {e}");
                }
            }
        }
        Ok((RolloutStore { dir, rollouts }, skipped))
    }

    /// The id the next rollout gets.
    pub fn next_id(&self) -> u64 {
        self.rollouts.keys().next_back().map_or(1, |last| last + 1)
    }

    /// Keeps `r` and writes it down.
    pub fn save(&mut self, r: Rollout) -> std::io::Result<()> {
        let bytes = serde_json::to_vec_pretty(&r).expect("a rollout serialises");
        let written = write_atomic(&self.dir.join(format!("{}{EXT}", r.id)), &bytes);
        self.rollouts.insert(r.id, r);
        written
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollout::machine::Policy;
    use crate::rollout::waves::parse;
    use conveyor_shared::ota::{ArtifactId, ArtifactRef, StageTarget};

    #[test]
    fn rollouts_survive_a_reopen_and_garbage_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, skipped) = RolloutStore::open(dir.path()).unwrap();
        assert_eq!((store.next_id(), skipped), (1, 0));
        let target = StageTarget::Model(ArtifactRef {
            name: "m".into(),
            version: "2".into(),
            id: ArtifactId::of_payload("m2"),
        });
        let (r, _) = Rollout::start(
            1,
            "classify",
            target,
            vec![("d".into(), None)],
            &parse("100%").unwrap(),
            Policy {
                soak_us: 1,
                device_timeout_us: 1,
                max_failure_ratio: 0.0,
                gates: Default::default(),
                shadow: None,
            },
            "ops",
            0,
        );
        store.save(r.clone()).unwrap();
        std::fs::write(dir.path().join("rollouts/9.json"), b"{not json").unwrap();
        let (again, skipped) = RolloutStore::open(dir.path()).unwrap();
        assert_eq!(skipped, 1);
        assert_eq!(again.rollouts.get(&1), Some(&r));
        assert_eq!(again.next_id(), 2);
    }
}
