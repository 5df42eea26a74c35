//! The agent's reconciler: it takes the hub's desired states, verifies
//! them, fetches what is missing, and hands the new artifacts to the
//! running stages through the same code path as start-up and SIGHUP
//! ([`Reloader::apply`] on `agent.toml` with the targets laid over it).
//!
//! Every step is reported in the agent's retained state. Whatever goes
//! wrong (a bad signature, an older generation, a file that does not
//! match its digest, a model that does not fit, the hub away, a full
//! disk), the running artifacts keep running: the new ones are swapped in
//! only once they are all here, verified and built. A newer desired state
//! that arrives meanwhile replaces the one being fetched.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use conveyor_shared::ota::{
    bounded_reason, AgentState, ArtifactId, ArtifactKind, ArtifactRef, Change, DesiredState,
    Opened, Phase, RunningArtifact, SignedManifest, StageRunning, StageState, StageTarget,
};
use conveyor_shared::time::now_us;
use tokio::sync::{mpsc, watch};

use super::applied::{overlay, stage_index, Applied, AppliedStage};
use super::cache::{check_file, wanted_files, ArtifactCache};
use super::config::OtaConfig;
use super::fetch::{FetchError, HubClient};
use super::plan::{check_manifest, plan, Plan};
use crate::config::AgentConfig;
use crate::pipeline::StageHandle;
use crate::reload::Reloader;

/// Free disk kept beyond a download's size (the log needs room too).
const DISK_MARGIN: u64 = 16 << 20;
/// Download progress is reported at most this often.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// What the reconciler and the SIGHUP reload share: `agent.toml` as last
/// read, and what the hub's updates changed.
pub struct OtaShared {
    pub base: Mutex<AgentConfig>,
    pub applied: Mutex<Applied>,
    pub config: OtaConfig,
    pub cache: ArtifactCache,
}

impl OtaShared {
    pub fn applied(&self) -> Applied {
        self.applied
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn base(&self) -> AgentConfig {
        self.base.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// `config` with the applied targets laid over it. A target that no
    /// longer fits is logged and left out, and the applied generation
    /// forgotten, so that the hub's (retained) desired state is applied
    /// again and brings the stage back.
    pub fn effective(&self, config: &AgentConfig) -> AgentConfig {
        let mut applied = self.applied.lock().unwrap_or_else(|p| p.into_inner());
        let (out, problems) = overlay(config, &applied, &self.cache, &self.config.trusted_keys);
        for p in &problems {
            tracing::error!("an applied OTA target is left out, the stage runs agent.toml's: {p}");
        }
        if !problems.is_empty() {
            self.forget(&mut applied, config);
        }
        out
    }

    /// Forgets the applied targets (the agent runs `agent.toml`), until the
    /// hub's desired state is applied again.
    pub fn forget_applied(&self) {
        let mut applied = self.applied.lock().unwrap_or_else(|p| p.into_inner());
        applied.generation = None;
        applied.stages.clear();
    }

    fn forget(&self, applied: &mut Applied, config: &AgentConfig) {
        applied.generation = None;
        let cache = &self.cache;
        let trusted = &self.config.trusted_keys;
        applied.stages.retain(|name, stage| {
            let mut probe = config.clone();
            super::applied::set_target(&mut probe, name, &stage.target, cache, trusted).is_ok()
        });
    }
}

/// Why a change ended.
enum Ended {
    Applied,
    Failed {
        generation: Option<u64>,
        reason: String,
    },
    /// A newer desired state arrived: it is next.
    Superseded(Bytes),
    /// Nothing to do (the applied generation again).
    Current,
    /// The uplink is gone.
    Closed,
}

pub struct Reconciler {
    shared: Arc<OtaShared>,
    data_dir: PathBuf,
    device: String,
    tags: BTreeMap<String, String>,
    client: HubClient,
    reloader: Reloader,
    stages: Vec<StageHandle>,
    state: watch::Sender<Vec<u8>>,
    last_change: Option<Change>,
    last_progress: Option<Instant>,
    /// Tries that failed in a row (the backoff).
    retries: u32,
}

impl Reconciler {
    pub fn new(
        shared: Arc<OtaShared>,
        reloader: Reloader,
        stages: Vec<StageHandle>,
    ) -> (Reconciler, watch::Receiver<Vec<u8>>) {
        let base = shared.base();
        let (state, state_rx) = watch::channel(Vec::new());
        let mut r = Reconciler {
            // A secret that no longer reads was reported by `check`/start;
            // downloads then go without it.
            client: HubClient::new(shared.config.hub())
                .with_secret(base.uplink.secret().ok().flatten())
                .with_tls(base.uplink.tls().ok().flatten()),
            data_dir: base.data_dir.clone(),
            device: base.device_id.to_string(),
            tags: base.tags.clone(),
            shared,
            reloader,
            stages,
            state,
            last_change: None,
            last_progress: None,
            retries: 0,
        };
        r.publish();
        (r, state_rx)
    }

    /// What each stage runs now.
    fn running(&self) -> BTreeMap<String, StageState> {
        let applied = self.shared.applied();
        let config = self.shared.base();
        let mut out = BTreeMap::new();
        for (i, stage) in self.stages.iter().enumerate() {
            let name = config
                .stages
                .get(i)
                .map_or_else(|| stage.config.name(i), |s| s.name(i));
            let (running, previous) = match applied.stages.get(&name) {
                Some(a) => (running_of_target(&a.target), a.previous.clone()),
                None => (running_of_stage(stage), None),
            };
            let shadow = match applied.shadows.get(&name) {
                Some(a) => Some(as_running(a)),
                None => shadow_of_stage(stage),
            };
            out.insert(
                name,
                StageState {
                    running,
                    previous,
                    shadow,
                },
            );
        }
        out
    }

    fn publish(&mut self) {
        let state = AgentState {
            device_id: self.device.clone(),
            generation: self.shared.applied().generation,
            stages: self.running(),
            last_change: self.last_change.clone(),
            tags: self.tags.clone(),
            ts_us: now_us(),
        };
        self.state.send_replace(state.encode());
    }

    fn phase(&mut self, generation: Option<u64>, phase: Phase, reason: Option<String>) {
        let (done, total) = self
            .last_change
            .as_ref()
            .filter(|c| c.generation == generation)
            .map_or((0, 0), |c| (c.bytes_done, c.bytes_total));
        self.last_change = Some(Change {
            generation,
            phase,
            reason: reason.as_deref().map(bounded_reason),
            bytes_done: done,
            bytes_total: total,
            since_us: now_us(),
        });
        self.publish();
    }

    fn progress(&mut self, done: u64, total: u64, force: bool) {
        if let Some(c) = &mut self.last_change {
            c.bytes_done = done;
            c.bytes_total = total;
        }
        let due = self
            .last_progress
            .is_none_or(|t| t.elapsed() >= PROGRESS_EVERY);
        if force || due {
            self.last_progress = Some(Instant::now());
            self.publish();
        }
    }

    /// Takes desired states until the uplink closes `inbox`.
    pub async fn run(mut self, mut inbox: mpsc::UnboundedReceiver<Bytes>) {
        let mut next = None;
        loop {
            let bytes = match next.take() {
                Some(b) => b,
                None => match inbox.recv().await {
                    Some(b) => b,
                    None => return,
                },
            };
            // Only the latest matters.
            let bytes = drain_latest(bytes, &mut inbox);
            match self.reconcile(bytes, &mut inbox).await {
                Ended::Applied | Ended::Current => {}
                Ended::Failed { generation, reason } => {
                    tracing::error!(
                        generation,
                        "OTA update refused, the running artifacts stay: {reason}"
                    );
                    self.phase(generation, Phase::Failed, Some(reason));
                }
                Ended::Superseded(b) => next = Some(b),
                Ended::Closed => return,
            }
        }
    }

    async fn reconcile(
        &mut self,
        bytes: Bytes,
        inbox: &mut mpsc::UnboundedReceiver<Bytes>,
    ) -> Ended {
        self.retries = 0;
        let trusted = self.shared.config.trusted_keys.clone();
        let applied = self.shared.applied();
        let doc = match DesiredState::open(&bytes, &trusted, &self.device, applied.generation) {
            Ok(Opened::New(doc, key)) => {
                tracing::info!(generation = doc.generation, signed_by = %key, "new desired state");
                doc
            }
            Ok(Opened::Current) => return Ended::Current,
            Err(e) => {
                let generation = match &e {
                    conveyor_shared::ota::DesiredError::Stale { got, .. } => Some(*got),
                    _ => None,
                };
                return Ended::Failed {
                    generation,
                    reason: format!("desired state refused: {e}"),
                };
            }
        };
        let generation = Some(doc.generation);
        let fail = |reason: String| Ended::Failed { generation, reason };
        let base = self.shared.base();
        let cache = self.shared.cache.clone();
        let plan = match plan(&doc, &base, &applied.stages, |a| cache.has(&a.id)) {
            Ok(p) => p,
            Err(e) => return fail(e),
        };

        // Manifests first: everything is checked before a byte of a file
        // is downloaded.
        self.phase(generation, Phase::Downloading, None);
        let mut manifests = Vec::new();
        for wanted in &plan.fetch {
            let (kind, shape) = self.stage_needs(&base, &plan, wanted);
            let got = self
                .retrying(generation, inbox, |c| {
                    let id = wanted.id.clone();
                    async move { c.manifest(&id).await }
                })
                .await;
            let bytes = match got {
                Ok(b) => b,
                Err(ended) => return ended,
            };
            let m = match SignedManifest::open(&bytes, &trusted) {
                Ok(m) => m,
                Err(e) => return fail(format!("manifest of {wanted}: {e}")),
            };
            if let Err(e) = check_manifest(
                &m,
                wanted,
                kind,
                shape,
                self.shared.config.max_artifact_bytes(),
            ) {
                return fail(e);
            }
            manifests.push((bytes, m));
        }
        let total: u64 = manifests
            .iter()
            .flat_map(|(_, m)| wanted_files(&m.manifest).map(|f| f.size))
            .sum();
        if let Some(free) = conveyor_process::disk::free_bytes(&self.data_dir) {
            if free < total + DISK_MARGIN {
                return fail(format!(
                    "not enough disk for the download: {total} bytes needed (+{DISK_MARGIN} kept free), {free} free in {}",
                    self.data_dir.display()
                ));
            }
        }

        // Download, resuming what an earlier try left.
        let mut done = 0;
        self.progress(0, total, true);
        for (envelope, m) in &manifests {
            let dir = match cache.begin(&m.id, envelope) {
                Ok(d) => d,
                Err(e) => return fail(format!("cannot write the artifact cache: {e}")),
            };
            for file in wanted_files(&m.manifest) {
                let dest = dir.join(&file.name);
                let before = done;
                let mut added = 0;
                loop {
                    let (tx, mut rx) = mpsc::unbounded_channel();
                    let client = self.client.clone();
                    let download = client.download(&m.id, file, &dest, move |n| {
                        let _ = tx.send(n);
                    });
                    tokio::pin!(download);
                    let result = loop {
                        tokio::select! {
                            r = &mut download => break r,
                            Some(n) = rx.recv() => {
                                added += n;
                                self.progress(before + added, total, false);
                            }
                            b = inbox.recv() => match b {
                                Some(b) => return Ended::Superseded(b),
                                None => return Ended::Closed,
                            },
                        }
                    };
                    match result {
                        Ok(()) => break,
                        Err(e) if e.is_transient() => {
                            // Resumes from what is on disk.
                            added = 0;
                            if let Some(ended) = self.wait_retry(generation, &e, inbox).await {
                                return ended;
                            }
                        }
                        Err(e @ FetchError::TooLong { .. }) => {
                            cache.discard_partial(&m.id);
                            return fail(e.to_string());
                        }
                        Err(e @ FetchError::Disk { .. }) => {
                            // The log needs the room more than an update:
                            // what was downloaded goes, and a later deploy
                            // starts over.
                            cache.discard_partial(&m.id);
                            return fail(format!(
                                "{e}; the partial download was removed to leave the disk to the log"
                            ));
                        }
                        Err(e) => return fail(e.to_string()),
                    }
                }
                done = before + file.size;
                self.progress(done, total, true);
            }
        }

        self.phase(generation, Phase::Verifying, None);
        for (_, m) in &manifests {
            let dir = cache.partial_dir(&m.id);
            for file in wanted_files(&m.manifest) {
                if let Err(e) = check_file(&dir.join(&file.name), file) {
                    cache.discard_partial(&m.id);
                    return fail(format!("{}@{}: {e}", m.manifest.name, m.manifest.version));
                }
            }
            if let Err(e) = cache.commit(&m.id) {
                return fail(format!("cannot write the artifact cache: {e}"));
            }
        }

        self.phase(generation, Phase::Applying, None);
        let mut next = applied.clone();
        let before = self.running();
        for name in &plan.unset {
            next.stages.remove(name);
        }
        for (name, target) in &plan.set {
            next.stages.insert(
                name.clone(),
                AppliedStage {
                    target: target.clone(),
                    previous: before.get(name).map(|s| s.running.clone()),
                },
            );
        }
        next.shadows = plan.shadows.clone();
        next.generation = Some(doc.generation);
        let (candidate, problems) = overlay(&base, &next, &cache, &trusted);
        if let Some(p) = problems.first() {
            return fail(p.to_string());
        }
        let reloader = self.reloader.clone();
        let report = match tokio::task::spawn_blocking(move || reloader.apply(candidate)).await {
            Ok(r) => r,
            Err(e) => return fail(format!("applying: {e}")),
        };
        if !report.refused.is_empty() {
            // Back to what ran: the stages that did take the new target
            // are given the old one again, the same way.
            let (old, _) = overlay(&base, &applied, &cache, &trusted);
            let reloader = self.reloader.clone();
            let _ = tokio::task::spawn_blocking(move || reloader.apply(old)).await;
            return fail(report.refused.join("; "));
        }
        for s in &report.swapped {
            tracing::info!(
                generation = doc.generation,
                "OTA: swapping at the next window or batch: {s}"
            );
        }
        *self
            .shared
            .applied
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = next.clone();
        if let Err(e) = next.save(&self.data_dir) {
            // It runs; only a restart would go back to the last saved.
            tracing::error!(
                "cannot persist the applied OTA state (a restart runs the previous one): {e}"
            );
        }
        let keep: HashSet<ArtifactId> = next
            .stages
            .values()
            .flat_map(|s| {
                let mut ids: Vec<ArtifactId> = s
                    .target
                    .artifacts()
                    .into_iter()
                    .map(|a| a.id.clone())
                    .collect();
                ids.extend(s.previous.iter().flat_map(ids_of));
                ids
            })
            .chain(next.shadows.values().map(|a| a.id.clone()))
            .collect();
        for removed in cache.evict(&keep, self.shared.config.cache_max_bytes()) {
            tracing::info!(artifact = %removed, "evicted from the OTA cache");
        }
        tracing::info!(generation = doc.generation, "OTA: desired state applied");
        self.phase(generation, Phase::Applied, None);
        Ended::Applied
    }

    /// The kind a stage of `set` runs and, for a model, the shape the
    /// running model has (its stream's).
    fn stage_needs(
        &self,
        base: &AgentConfig,
        plan: &Plan,
        wanted: &ArtifactRef,
    ) -> (ArtifactKind, Option<(usize, usize)>) {
        let shape = |name: &str| {
            stage_index(base, name)
                .and_then(|i| self.stages.get(i))
                .and_then(|s| s.model_slot())
                .map(|slot| {
                    let m = slot.current();
                    (m.meta().channels, m.meta().window)
                })
        };
        for (name, target) in &plan.set {
            if !target.artifacts().iter().any(|a| a.id == wanted.id) {
                continue;
            }
            if let StageTarget::Model(_) = target {
                return (ArtifactKind::Model, shape(name));
            }
            return (ArtifactKind::Transform, None);
        }
        for (name, candidate) in &plan.shadows {
            if candidate.id == wanted.id {
                return (ArtifactKind::Model, shape(name));
            }
        }
        (ArtifactKind::Transform, None)
    }

    /// Runs `op` until it succeeds or fails for good, waiting between
    /// tries; a newer desired state ends the wait.
    async fn retrying<T, F, Fut>(
        &mut self,
        generation: Option<u64>,
        inbox: &mut mpsc::UnboundedReceiver<Bytes>,
        op: F,
    ) -> Result<T, Ended>
    where
        F: Fn(HubClient) -> Fut,
        Fut: std::future::Future<Output = Result<T, FetchError>>,
    {
        loop {
            match op(self.client.clone()).await {
                Ok(v) => return Ok(v),
                Err(e) if e.is_transient() => {
                    if let Some(ended) = self.wait_retry(generation, &e, inbox).await {
                        return Err(ended);
                    }
                }
                Err(e) => {
                    return Err(Ended::Failed {
                        generation,
                        reason: e.to_string(),
                    })
                }
            }
        }
    }

    /// Reports `error` on the downloading phase and waits before the next
    /// try (doubling, up to 30 s); `Some` if a newer desired state or the
    /// end came first.
    async fn wait_retry(
        &mut self,
        generation: Option<u64>,
        error: &FetchError,
        inbox: &mut mpsc::UnboundedReceiver<Bytes>,
    ) -> Option<Ended> {
        let wait = RETRY_MAX.min(RETRY_FIRST * 2u32.saturating_pow(self.retries.min(8)));
        self.retries += 1;
        tracing::warn!(generation, "OTA download: {error}; retrying in {wait:?}");
        if let Some(c) = &mut self.last_change {
            c.reason = Some(bounded_reason(&format!("{error} (retrying)")));
        }
        self.publish();
        tokio::select! {
            _ = tokio::time::sleep(wait) => None,
            b = inbox.recv() => Some(match b {
                Some(b) => Ended::Superseded(b),
                None => Ended::Closed,
            }),
        }
    }
}

fn drain_latest(mut bytes: Bytes, inbox: &mut mpsc::UnboundedReceiver<Bytes>) -> Bytes {
    while let Ok(b) = inbox.try_recv() {
        bytes = b;
    }
    bytes
}

fn as_running(a: &ArtifactRef) -> RunningArtifact {
    RunningArtifact {
        name: a.name.clone(),
        version: a.version.clone(),
        id: Some(a.id.clone()),
    }
}

fn running_of_target(target: &StageTarget) -> StageRunning {
    match target {
        StageTarget::Model(a) => StageRunning::Model(as_running(a)),
        StageTarget::Transforms(chain) => {
            StageRunning::Transforms(chain.iter().map(|l| as_running(&l.artifact)).collect())
        }
    }
}

/// What a stage runs from `agent.toml`: names and versions from the
/// model's metadata and the modules' declarations.
/// The shadow an inference stage runs by its own config (`shadow` in
/// `agent.toml`), if any.
fn shadow_of_stage(stage: &StageHandle) -> Option<RunningArtifact> {
    let m = stage.model_slot()?.shadow()?;
    Some(RunningArtifact {
        name: m.meta().id.clone(),
        version: m.meta().version.clone(),
        id: None,
    })
}

pub fn running_of_stage(stage: &StageHandle) -> StageRunning {
    if let Some(slot) = stage.model_slot() {
        let m = slot.current();
        return StageRunning::Model(RunningArtifact {
            name: m.meta().id.clone(),
            version: m.meta().version.clone(),
            id: None,
        });
    }
    let links = stage
        .chain_slot()
        .map(|s| s.current().links)
        .unwrap_or_default();
    StageRunning::Transforms(
        links
            .iter()
            .map(|l| {
                let (name, version) = l.tag.split_once('@').unwrap_or((&l.tag, ""));
                RunningArtifact {
                    name: name.into(),
                    version: version.into(),
                    id: None,
                }
            })
            .collect(),
    )
}

fn ids_of(r: &StageRunning) -> Vec<ArtifactId> {
    match r {
        StageRunning::Model(a) => a.id.iter().cloned().collect(),
        StageRunning::Transforms(c) => c.iter().filter_map(|a| a.id.clone()).collect(),
    }
}
