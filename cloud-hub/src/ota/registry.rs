//! The artifact registry: the models and transforms the hub has checked
//! and signed, content-addressed under `<store.path>/artifacts/`.
//!
//! - `blobs/<sha256>`: each file once, whatever artifacts share it;
//! - `manifests/<id>.json`: each signed manifest, exactly the bytes agents
//!   download and verify (read from disk on every request, never re-encoded);
//! - `incoming/`: pushes being received and checked (emptied at start).
//!
//! Files are plain files, not rows in the hub's redb store: agents download
//! them with `Range`, which is a seek in a file, and blobs can be hundreds of
//! MB, which a database would copy through its pages. Every write is a temp
//! file, fsync and rename, blobs before the manifest that names them, so a
//! crash leaves at worst an unreferenced blob. The index lives in memory and
//! is rebuilt from the manifests at start: one that does not verify against
//! the hub's key, is not named by its id, or names a missing blob is logged,
//! counted and skipped, never fatal.
//!
//! `name@version` is unique: the same files pushed again give the same
//! artifact; other files under a taken `name@version` are a conflict.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use conveyor_shared::ota::{
    is_precompiled, ArtifactFile, ArtifactId, ArtifactManifest, PublicKey, SecretKey,
    SignedManifest,
};
use conveyor_shared::time::now_us;

use super::check::{refused, Checked, PushError};
use super::files::{sync_dir, write_atomic, TempDir};

/// One file of a push, staged in its directory under its own name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StagedFile {
    pub name: String,
    pub sha256: String,
    pub size: u64,
}

pub struct ArtifactRegistry {
    root: PathBuf,
    by_id: BTreeMap<ArtifactId, SignedManifest>,
}

/// What opening found wrong (each one logged).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Skipped {
    pub manifests: u64,
}

impl ArtifactRegistry {
    /// Opens the registry in `store_dir`, verifying every manifest against
    /// `trusted` (the hub's key).
    pub fn open(
        store_dir: &Path,
        trusted: &PublicKey,
    ) -> std::io::Result<(ArtifactRegistry, Skipped)> {
        let root = store_dir.join("artifacts");
        for d in ["blobs", "manifests"] {
            std::fs::create_dir_all(root.join(d))?;
        }
        // Pushes a crash interrupted.
        let _ = std::fs::remove_dir_all(root.join("incoming"));
        std::fs::create_dir_all(root.join("incoming"))?;
        let mut registry = ArtifactRegistry {
            root,
            by_id: BTreeMap::new(),
        };
        let mut skipped = Skipped::default();
        for entry in std::fs::read_dir(registry.root.join("manifests"))? {
            let path = entry?.path();
            let Some(stem) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".json"))
            else {
                continue; // a temp file a crash left
            };
            match registry.verify(&path, stem, trusted) {
                Ok(m) => {
                    registry.by_id.insert(m.id.clone(), m);
                }
                Err(why) => {
                    skipped.manifests += 1;
                    tracing::error!(file = %path.display(), "skipping an artifact manifest: {why}");
                }
            }
        }
        Ok((registry, skipped))
    }

    fn verify(
        &self,
        path: &Path,
        stem: &str,
        trusted: &PublicKey,
    ) -> Result<SignedManifest, String> {
        let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
        let m = SignedManifest::open(&bytes, std::slice::from_ref(trusted))
            .map_err(|e| format!("it does not verify against the hub's key: {e}"))?;
        if m.id.as_str() != stem {
            return Err(format!("its id is {}, not its file name", m.id));
        }
        for f in &m.manifest.files {
            let size = std::fs::metadata(self.blob(&f.sha256)).map(|md| md.len());
            if size.as_ref().ok() != Some(&f.size) {
                return Err(format!(
                    "its file {} (blob {}) is missing or not {} bytes",
                    f.name, f.sha256, f.size
                ));
            }
        }
        Ok(m)
    }

    fn blob(&self, sha256: &str) -> PathBuf {
        self.root.join("blobs").join(sha256)
    }

    fn manifest_path(&self, id: &ArtifactId) -> PathBuf {
        self.root.join("manifests").join(format!("{id}.json"))
    }

    /// A new directory to stage a push in (on the registry's file system,
    /// so its files are renamed into place, not copied).
    pub fn staging(&self) -> std::io::Result<TempDir> {
        TempDir::new_in(&self.root.join("incoming"))
    }

    /// Every artifact, by name, then by when it was made.
    pub fn list(&self) -> Vec<&SignedManifest> {
        let mut all: Vec<_> = self.by_id.values().collect();
        all.sort_by(|a, b| {
            (
                &a.manifest.name,
                a.manifest.created_at_us,
                &a.manifest.version,
            )
                .cmp(&(
                    &b.manifest.name,
                    b.manifest.created_at_us,
                    &b.manifest.version,
                ))
        });
        all
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// By id (64 hex digits) or `name@version`.
    pub fn find(&self, reference: &str) -> Option<&SignedManifest> {
        if let Ok(id) = ArtifactId::parse(reference) {
            return self.by_id.get(&id);
        }
        let (name, version) = reference.rsplit_once('@')?;
        self.by_id
            .values()
            .find(|m| m.manifest.name == name && m.manifest.version == version)
    }

    /// The stored envelope of `id`, byte for byte.
    pub fn manifest_bytes(&self, id: &ArtifactId) -> Option<std::io::Result<Vec<u8>>> {
        self.by_id.get(id)?;
        Some(std::fs::read(self.manifest_path(id)))
    }

    /// Where file `name` of artifact `id` is, with its manifest entry.
    pub fn file(&self, id: &ArtifactId, name: &str) -> Option<(PathBuf, ArtifactFile)> {
        let f = self.by_id.get(id)?.manifest.file(name)?.clone();
        Some((self.blob(&f.sha256), f))
    }

    /// Signs and stores the checked push staged in `dir`. The same files
    /// under the same `name@version` again give the stored artifact
    /// (`false`: not new); other files under it are a conflict.
    pub fn commit(
        &mut self,
        dir: &Path,
        files: &[StagedFile],
        checked: Checked,
        key: &SecretKey,
    ) -> Result<(SignedManifest, bool), PushError> {
        let entries: Vec<ArtifactFile> = files
            .iter()
            .map(|f| ArtifactFile {
                name: f.name.clone(),
                sha256: f.sha256.clone(),
                size: f.size,
            })
            .collect();
        let reference = format!("{}@{}", checked.name, checked.version);
        if let Some(existing) = self.find(&reference) {
            // What was pushed, not what the hub made of it: code from
            // another compiler release does not make the push another.
            let pushed = |v: &[ArtifactFile]| {
                let mut v: Vec<ArtifactFile> = v
                    .iter()
                    .filter(|f| !is_precompiled(&f.name))
                    .cloned()
                    .collect();
                v.sort_by(|a, b| a.name.cmp(&b.name));
                v
            };
            if pushed(&existing.manifest.files) == pushed(&entries) {
                return Ok((existing.clone(), false));
            }
            return Err(refused(
                409,
                "conflict",
                format!(
                    "{reference} is already in the registry with other contents (id {}); \
                     a changed artifact needs a new version",
                    existing.id
                ),
            ));
        }
        let manifest = ArtifactManifest {
            kind: checked.kind,
            name: checked.name,
            version: checked.version,
            files: entries,
            requires: checked.requires,
            created_at_us: now_us(),
        };
        let signed = manifest
            .sign(key)
            .map_err(|e| refused(422, "invalid", e.to_string()))?;
        let io = |e: std::io::Error| refused(500, "io", format!("cannot store the artifact: {e}"));
        for f in files {
            let blob = self.blob(&f.sha256);
            if !blob.exists() {
                let staged = dir.join(&f.name);
                std::fs::File::open(&staged)
                    .and_then(|file| file.sync_all())
                    .and_then(|()| std::fs::rename(&staged, &blob))
                    .map_err(io)?;
            }
        }
        sync_dir(&self.root.join("blobs")).map_err(io)?;
        write_atomic(&self.manifest_path(&signed.id), &signed.envelope.encode()).map_err(io)?;
        self.by_id.insert(signed.id.clone(), signed.clone());
        Ok((signed, true))
    }
}

#[cfg(test)]
#[path = "registry_tests.rs"]
mod tests;
