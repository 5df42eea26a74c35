//! Over-the-air updates, the hub's side: the signing key, the artifact
//! registry, and per device the desired state and the agent's report.
//!
//! - [`config`]: `[ota]` in hub.toml.
//! - [`check`]: what a push is, checked as the agent will check it.
//! - [`precompile`]: a pushed transform compiled for every agent target.
//! - [`registry`]: artifacts signed and stored content-addressed, served
//!   (with `Range`) to agents.
//! - [`devices`]: desired states (signed, the generation only grows) and
//!   the agents' reports, persisted.
//! - [`republish`]: when a device is sent its desired state again.
//! - [`reports`]: what the hub does with an agent's report.
//! - [`history`]: each device's history of changes.
//! - [`range`]: HTTP `Range` headers, for resumable downloads.
//!
//! The HTTP routes are in `api_artifacts.rs` and `api_desired.rs`, the CLI
//! client in `ota_cli/`. The hub signs with one key; agents may trust
//! several (rotation).

pub mod check;
pub mod config;
pub mod deploy;
pub mod devices;
pub mod files;
pub mod history;
pub mod precompile;
pub mod range;
pub mod registry;
pub mod reports;
pub mod republish;

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use conveyor_shared::ota::{ArtifactKind, PublicKey, SecretKey, SignedManifest};

pub use check::PushError;
pub use config::OtaConfig;
use devices::DeviceStore;
use files::TempDir;
use registry::{ArtifactRegistry, StagedFile};

use crate::keys::KeyFileError;

pub struct OtaHub {
    key: SecretKey,
    pub max_artifact_bytes: u64,
    registry: Mutex<ArtifactRegistry>,
    devices: Mutex<DeviceStore>,
    rollouts: Mutex<crate::rollout::store::RolloutStore>,
    /// Each rollout's gate figures over time.
    figures: Mutex<crate::rollout::figures::FigureStore>,
    /// Each device's history of changes.
    pub history: history::DeviceHistory,
    /// Stored documents that did not verify or read at start (skipped).
    pub skipped_at_open: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum OtaError {
    #[error(transparent)]
    Key(#[from] KeyFileError),
    #[error("OTA storage in {path}: {source}")]
    Storage {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// The hub's signing key at `path`, made (mode 0600) if there is none;
/// `Some(public key)` when it was just made.
pub fn load_or_make_key(path: &Path) -> Result<(SecretKey, Option<PublicKey>), KeyFileError> {
    let made = if path.exists() {
        None
    } else {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| KeyFileError::Io {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        match crate::keys::generate(path) {
            Ok(public) => Some(public),
            // Made by someone else in between: use theirs.
            Err(KeyFileError::Exists(_)) => None,
            Err(e) => return Err(e),
        }
    };
    Ok((crate::keys::load(path)?, made))
}

impl OtaHub {
    /// Loads (or, the first time, makes) the signing key and opens the
    /// registry and the device states in `store_dir`.
    pub fn open(config: &OtaConfig, store_dir: &Path) -> Result<OtaHub, OtaError> {
        let (key, made) = load_or_make_key(&config.key_path(store_dir))?;
        if let Some(public) = made {
            tracing::info!(key = %config.key_path(store_dir).display(), "made a new signing key: agents trust {public}");
        }
        let storage = |source| OtaError::Storage {
            path: store_dir.display().to_string(),
            source,
        };
        let public = key.public();
        let (registry, bad_manifests) =
            ArtifactRegistry::open(store_dir, &public).map_err(storage)?;
        let (devices, bad_devices) = DeviceStore::open(store_dir, &public).map_err(storage)?;
        let (rollouts, bad_rollouts) =
            crate::rollout::store::RolloutStore::open(store_dir).map_err(storage)?;
        let figures = crate::rollout::figures::FigureStore::open(store_dir).map_err(storage)?;
        tracing::info!(
            artifacts = registry.len(),
            devices = devices.devices.len(),
            key = %public,
            "OTA registry open"
        );
        Ok(OtaHub {
            skipped_at_open: bad_manifests.manifests
                + bad_devices.desired
                + bad_devices.states
                + bad_rollouts,
            registry: Mutex::new(registry),
            devices: Mutex::new(devices),
            rollouts: Mutex::new(rollouts),
            figures: Mutex::new(figures),
            history: history::DeviceHistory::new(store_dir),
            max_artifact_bytes: config.max_artifact_bytes,
            key,
        })
    }

    pub fn public_key(&self) -> PublicKey {
        self.key.public()
    }

    pub fn key(&self) -> &SecretKey {
        &self.key
    }

    pub fn registry(&self) -> MutexGuard<'_, ArtifactRegistry> {
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn devices(&self) -> MutexGuard<'_, DeviceStore> {
        self.devices.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The rollouts. Taken before [`OtaHub::devices`] when both are
    /// needed (never the other way round).
    pub fn rollouts(&self) -> MutexGuard<'_, crate::rollout::store::RolloutStore> {
        self.rollouts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The rollouts' figures (taken alone, never with another lock).
    pub fn figures(&self) -> MutexGuard<'_, crate::rollout::figures::FigureStore> {
        self.figures.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A directory for a push's files.
    pub fn staging(&self) -> Result<TempDir, PushError> {
        self.registry()
            .staging()
            .map_err(|e| check::refused(500, "io", format!("cannot stage the push: {e}")))
    }

    /// Checks the push staged in `dir` (the registry stays readable
    /// meanwhile: loading a model takes a while), then signs and stores it.
    /// Blocking.
    pub fn push(
        &self,
        dir: &TempDir,
        files: &[StagedFile],
    ) -> Result<(SignedManifest, bool), PushError> {
        let checked = check::check(dir.path(), files)?;
        let mut files = files.to_vec();
        if checked.kind == ArtifactKind::Transform {
            // Off the registry's lock: compiling takes a while.
            let code = precompile::precompile(dir.path(), &files[0])?;
            files.extend(code);
        }
        self.registry()
            .commit(dir.path(), &files, checked, &self.key)
    }
}
