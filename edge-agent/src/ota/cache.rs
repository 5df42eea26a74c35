//! The artifact cache: what the hub sent, content-addressed by artifact
//! id under `data_dir/ota/artifacts/`.
//!
//! `<id>/` holds the artifact's files under their manifest names (a model's
//! metadata names its ONNX file beside it, so the loader finds it) and the
//! signed manifest as `.manifest` (manifest file names never start with a
//! dot). A download goes to `<id>.partial/` and is renamed to `<id>/` only
//! once every file matched its digest, so a complete entry is always a
//! verified one; a partial one is resumed where it stopped. Entries are
//! verified again (signature, sizes, digests) whenever the agent starts on
//! them: a file changed on disk is found before it is loaded.

use std::collections::HashSet;
use std::io::Read;
use std::path::{Path, PathBuf};

use conveyor_shared::ota::{
    is_precompiled, ArtifactFile, ArtifactId, ArtifactManifest, PublicKey, SignedManifest,
};
use sha2::{Digest, Sha256};

const MANIFEST: &str = ".manifest";

#[derive(Debug, Clone)]
pub struct ArtifactCache {
    root: PathBuf,
}

/// A verified cache entry.
#[derive(Debug, Clone)]
pub struct Cached {
    pub dir: PathBuf,
    pub manifest: SignedManifest,
}

impl Cached {
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// A model's metadata file (its `.json`).
    pub fn model_metadata(&self) -> Option<PathBuf> {
        self.manifest
            .manifest
            .files
            .iter()
            .find(|f| f.name.ends_with(".json"))
            .map(|f| self.file(&f.name))
    }

    /// A transform's module (its `.wasm`).
    pub fn module(&self) -> Option<PathBuf> {
        self.manifest
            .manifest
            .module_file()
            .map(|f| self.file(&f.name))
    }
}

/// The files of an artifact this agent downloads and keeps: all but the
/// hub's precompiled code; without a compiler, also the code for this
/// agent's own target (the module stays: its bytes are what the ABI checks
/// read and what names it).
pub fn wanted_files(manifest: &ArtifactManifest) -> impl Iterator<Item = &ArtifactFile> {
    let own = (!crate::transform::HAS_COMPILER)
        .then(|| manifest.precompiled_file(conveyor_wasm_engine::HOST_TARGET))
        .flatten()
        .map(|f| f.name.as_str());
    manifest
        .files
        .iter()
        .filter(move |f| !is_precompiled(&f.name) || Some(f.name.as_str()) == own)
}

/// SHA-256 of a file, hex, and its size.
pub fn digest_file(path: &Path) -> std::io::Result<(String, u64)> {
    let mut f = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0; 64 * 1024];
    let mut size = 0;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        size += n as u64;
        hasher.update(&buf[..n]);
    }
    Ok((hex::encode(hasher.finalize()), size))
}

/// Checks one downloaded file against its manifest entry.
pub fn check_file(path: &Path, file: &ArtifactFile) -> Result<(), String> {
    let (sha, size) =
        digest_file(path).map_err(|e| format!("file {}: cannot read it: {e}", file.name))?;
    if size != file.size {
        return Err(format!(
            "file {}: {size} bytes, the manifest says {}",
            file.name, file.size
        ));
    }
    if sha != file.sha256 {
        return Err(format!(
            "file {}: sha256 {} does not match the signed manifest's {} (tampered or corrupted)",
            file.name,
            &sha[..16],
            &file.sha256[..16]
        ));
    }
    Ok(())
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

fn dir_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

impl ArtifactCache {
    pub fn new(data_dir: &Path) -> Self {
        ArtifactCache {
            root: data_dir.join("ota").join("artifacts"),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn complete_dir(&self, id: &ArtifactId) -> PathBuf {
        self.root.join(id.as_str())
    }

    /// Where an artifact's download goes.
    pub fn partial_dir(&self, id: &ArtifactId) -> PathBuf {
        self.root.join(format!("{id}.partial"))
    }

    pub fn has(&self, id: &ArtifactId) -> bool {
        self.complete_dir(id).join(MANIFEST).is_file()
    }

    /// The complete entry `id`, verified again: the manifest's signature
    /// by a `trusted` key, its id, and every file's size and digest. A
    /// damaged entry is removed (it is downloaded again) and its problem
    /// returned.
    pub fn verified(&self, id: &ArtifactId, trusted: &[PublicKey]) -> Result<Cached, String> {
        let dir = self.complete_dir(id);
        let check = || {
            let bytes = std::fs::read(dir.join(MANIFEST))
                .map_err(|e| format!("artifact {id} is not in the cache: {e}"))?;
            let manifest = SignedManifest::open(&bytes, trusted)
                .map_err(|e| format!("cached manifest of {id}: {e}"))?;
            if manifest.id != *id {
                return Err(format!(
                    "cached manifest of {id} is that of {}",
                    manifest.id
                ));
            }
            for f in wanted_files(&manifest.manifest) {
                check_file(&dir.join(&f.name), f)?;
            }
            Ok(Cached {
                dir: dir.clone(),
                manifest,
            })
        };
        let checked = check();
        if checked.is_err() && dir.exists() {
            let _ = std::fs::remove_dir_all(&dir);
        }
        checked
    }

    /// Writes the signed manifest into the partial entry (the download's
    /// first step).
    pub fn begin(&self, id: &ArtifactId, envelope: &[u8]) -> std::io::Result<PathBuf> {
        let dir = self.partial_dir(id);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(MANIFEST), envelope)?;
        Ok(dir)
    }

    /// Makes a partial entry whose files were all checked complete: every
    /// file synced, then one rename.
    pub fn commit(&self, id: &ArtifactId) -> std::io::Result<()> {
        let partial = self.partial_dir(id);
        for entry in std::fs::read_dir(&partial)? {
            std::fs::File::open(entry?.path())?.sync_all()?;
        }
        sync_dir(&partial);
        let done = self.complete_dir(id);
        if done.exists() {
            std::fs::remove_dir_all(&done)?;
        }
        std::fs::rename(&partial, &done)?;
        sync_dir(&self.root);
        Ok(())
    }

    /// Drops a partial entry (a file in it failed its digest).
    pub fn discard_partial(&self, id: &ArtifactId) {
        let _ = std::fs::remove_dir_all(self.partial_dir(id));
    }

    /// Evicts the oldest entries (complete and partial) not in `keep` until
    /// the cache takes at most `max_bytes`. Returns the ids removed.
    pub fn evict(&self, keep: &HashSet<ArtifactId>, max_bytes: u64) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return Vec::new();
        };
        let mut all: Vec<(std::time::SystemTime, u64, PathBuf, String)> = entries
            .flatten()
            .filter(|e| e.path().is_dir())
            .map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let modified = e
                    .metadata()
                    .and_then(|m| m.modified())
                    .unwrap_or(std::time::SystemTime::UNIX_EPOCH);
                (modified, dir_size(&e.path()), e.path(), name)
            })
            .collect();
        let mut total: u64 = all.iter().map(|(_, size, _, _)| size).sum();
        all.sort();
        let mut removed = Vec::new();
        for (_, size, path, name) in all {
            if total <= max_bytes {
                break;
            }
            let id = name.trim_end_matches(".partial");
            if keep.iter().any(|k| k.as_str() == id) {
                continue;
            }
            if std::fs::remove_dir_all(&path).is_ok() {
                total -= size;
                removed.push(name);
            }
        }
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use conveyor_shared::ota::{ArtifactKind, ArtifactManifest, Requires, SecretKey};

    fn key() -> SecretKey {
        SecretKey::from_seed([3; 32])
    }

    fn signed(content: &[u8]) -> SignedManifest {
        let (sha, size) = {
            let mut h = Sha256::new();
            h.update(content);
            (hex::encode(h.finalize()), content.len() as u64)
        };
        ArtifactManifest {
            kind: ArtifactKind::Transform,
            name: "t".into(),
            version: "1".into(),
            files: vec![ArtifactFile {
                name: "t.wasm".into(),
                sha256: sha,
                size,
            }],
            requires: Requires::default(),
            created_at_us: 1,
        }
        .sign(&key())
        .unwrap()
    }

    fn put(cache: &ArtifactCache, m: &SignedManifest, content: &[u8]) {
        let dir = cache.begin(&m.id, &m.envelope.encode()).unwrap();
        std::fs::write(dir.join("t.wasm"), content).unwrap();
        check_file(&dir.join("t.wasm"), &m.manifest.files[0]).unwrap();
        cache.commit(&m.id).unwrap();
    }

    /// The hub's precompiled code is left on the hub by an agent that
    /// compiles for itself; an agent without a compiler takes its own
    /// target's (and never another's), and its entry verifies without the
    /// files it did not take.
    #[test]
    fn an_agent_downloads_the_module_and_only_the_precompiled_code_it_runs() {
        let file = |name: &str, content: &[u8]| ArtifactFile {
            name: name.into(),
            sha256: hex::encode(Sha256::digest(content)),
            size: content.len() as u64,
        };
        let host = conveyor_wasm_engine::HOST_TARGET;
        let other = if host.starts_with("x86_64") {
            "aarch64-unknown-linux-gnu"
        } else {
            "x86_64-unknown-linux-gnu"
        };
        let own_name = conveyor_shared::ota::precompiled_file_name("t.wasm", host);
        let m = ArtifactManifest {
            kind: ArtifactKind::Transform,
            name: "t".into(),
            version: "1".into(),
            files: vec![
                file("t.wasm", b"module"),
                file(&own_name, b"own code"),
                file(
                    &conveyor_shared::ota::precompiled_file_name("t.wasm", other),
                    b"other code",
                ),
            ],
            requires: Requires::default(),
            created_at_us: 1,
        }
        .sign(&key())
        .unwrap();
        let wanted: Vec<&str> = wanted_files(&m.manifest).map(|f| f.name.as_str()).collect();
        if crate::transform::HAS_COMPILER {
            assert_eq!(wanted, ["t.wasm"]);
        } else {
            assert_eq!(wanted, ["t.wasm", own_name.as_str()]);
        }
        let dir = tempfile::tempdir().unwrap();
        let cache = ArtifactCache::new(dir.path());
        let partial = cache.begin(&m.id, &m.envelope.encode()).unwrap();
        std::fs::write(partial.join("t.wasm"), b"module").unwrap();
        std::fs::write(partial.join(&own_name), b"own code").unwrap();
        cache.commit(&m.id).unwrap();
        cache.verified(&m.id, &[key().public()]).unwrap();
    }

    #[test]
    fn a_committed_entry_verifies_and_a_damaged_one_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ArtifactCache::new(dir.path());
        let m = signed(b"module bytes");
        put(&cache, &m, b"module bytes");
        let got = cache.verified(&m.id, &[key().public()]).unwrap();
        assert_eq!(got.module().unwrap(), got.dir.join("t.wasm"));
        // Another key is not trusted.
        let other = SecretKey::from_seed([4; 32]).public();
        assert!(cache.verified(&m.id, &[other]).is_err());
        put(&cache, &m, b"module bytes");
        std::fs::write(got.dir.join("t.wasm"), b"module bytez").unwrap();
        let e = cache.verified(&m.id, &[key().public()]).unwrap_err();
        assert!(e.contains("does not match"), "{e}");
        assert!(!cache.has(&m.id), "the damaged entry is gone");
    }

    #[test]
    fn eviction_keeps_what_is_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ArtifactCache::new(dir.path());
        let a = signed(&[1; 1000]);
        let b = signed(&[2; 1000]);
        put(&cache, &a, &[1; 1000]);
        put(&cache, &b, &[2; 1000]);
        let keep = HashSet::from([b.id.clone()]);
        let removed = cache.evict(&keep, 1500);
        assert_eq!(removed, vec![a.id.to_string()]);
        assert!(cache.has(&b.id) && !cache.has(&a.id));
        // Nothing more to evict: what is kept stays even over the bound.
        assert!(cache.evict(&keep, 0).is_empty());
    }

    #[test]
    fn a_wrong_size_or_digest_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let m = signed(b"abc");
        let p = dir.path().join("t.wasm");
        std::fs::write(&p, b"abcd").unwrap();
        let e = check_file(&p, &m.manifest.files[0]).unwrap_err();
        assert!(e.contains("t.wasm") && e.contains("4 bytes"), "{e}");
    }
}
