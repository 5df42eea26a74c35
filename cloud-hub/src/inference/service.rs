//! The inference service: each served model behind a dynamic batcher and
//! a pool of worker threads.
//!
//! ```text
//! infer() ──try_send──▶ [request queue, bounded] ──▶ dispatcher thread
//!   (async, any task)                                 BatchQueue: max_batch / max_delay
//!                                                         │ one batch at a time, handed
//!                                                         ▼ to the first free worker
//!                                         worker threads (own runner each) ──▶ oneshot replies
//! ```
//!
//! The dispatcher hands a batch over only when a worker takes it, so
//! while every worker is busy requests keep gathering and the next batch
//! is larger: under load the batch size grows by itself up to `max_batch`.
//! A full request queue refuses new requests (`overloaded`) instead of
//! growing memory. Every request is checked (model known, window shape,
//! finite values) before it is queued, and a failed or panicking model
//! call fails only the requests of that batch; the worker carries on.

use std::collections::BTreeMap;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use conveyor_process::LogEvery;
use conveyor_shared::{ConfigError, ConfigErrors, ModelMetadata, Prediction};
use serde::Serialize;
use tokio::sync::oneshot;

use super::backend::{self, Backend, BatchRunner, Device, DeviceError};
use super::batcher::{BatchPolicy, BatchQueue};
use super::config::{InferenceConfig, ServedModelConfig};
use super::stats::{InferenceMetrics, LatencyQuantiles, LatencyRecorder};

/// Why one request got no prediction. Nothing here stops the service.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InferError {
    #[error("unknown model {model:?}; this hub serves {known:?}")]
    UnknownModel { model: String, known: Vec<String> },
    #[error(
        "model {model} takes windows of {want_len} readings x {want_channels} channels; \
         got {got_values} values with {got_channels} channels"
    )]
    WrongShape {
        model: String,
        want_channels: usize,
        want_len: usize,
        got_channels: usize,
        got_values: usize,
    },
    #[error("window value {index} is not a finite number")]
    BadValues { index: usize },
    #[error("model {model} is overloaded ({queue} requests waiting); try again later")]
    Overloaded { model: String, queue: usize },
    #[error("model {model} failed on this batch: {cause}")]
    Failed { model: String, cause: String },
}

impl InferError {
    /// The metric label of this outcome.
    pub fn kind(&self) -> &'static str {
        match self {
            InferError::UnknownModel { .. } => "unknown_model",
            InferError::WrongShape { .. } => "wrong_shape",
            InferError::BadValues { .. } => "bad_values",
            InferError::Overloaded { .. } => "overloaded",
            InferError::Failed { .. } => "failed",
        }
    }
}

/// Why the service could not start (a config problem: exit 64).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("inference.models[{index}]: {source}")]
    Model {
        index: usize,
        #[source]
        source: DeviceError,
    },
    #[error(transparent)]
    Device(DeviceError),
    #[error(
        "inference.models[{index}]: model id {id:?} is already served by inference.models[{first}]"
    )]
    DuplicateId {
        index: usize,
        first: usize,
        id: String,
    },
    #[error("inference.models[{index}]: cannot start a worker: {cause}")]
    Worker { index: usize, cause: String },
    /// More than one model failed to load (each a [`StartError::Model`]),
    /// one per line.
    #[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n"))]
    Models(Vec<StartError>),
}

impl From<StartError> for ConfigErrors {
    /// Each problem as a config error naming the entry at fault, as `check`
    /// and `serve` report them.
    fn from(e: StartError) -> Self {
        fn flatten(e: StartError, found: &mut Vec<ConfigError>) {
            let at = |index: usize| format!("inference.models[{index}]");
            match e {
                StartError::Model { index, source } => {
                    found.push(ConfigError::invalid(at(index), source.to_string()))
                }
                StartError::Device(e) => {
                    found.push(ConfigError::invalid("inference.device", e.to_string()))
                }
                StartError::DuplicateId { index, first, id } => found.push(ConfigError::invalid(
                    at(index),
                    format!("model id {id:?} is already served by inference.models[{first}]"),
                )),
                StartError::Worker { index, cause } => found.push(ConfigError::invalid(
                    at(index),
                    format!("cannot start a worker: {cause}"),
                )),
                StartError::Models(v) => v.into_iter().for_each(|e| flatten(e, found)),
            }
        }
        let mut found = Vec::new();
        flatten(e, &mut found);
        ConfigErrors::Invalid(found)
    }
}

struct Request {
    input: Vec<f32>,
    enqueued: Instant,
    reply: oneshot::Sender<Result<Vec<f32>, InferError>>,
}

/// One served model.
struct Served {
    meta: ModelMetadata,
    backend: &'static str,
    policy: BatchPolicy,
    workers: usize,
    queue: usize,
    requests: SyncSender<Request>,
    latency: Arc<LatencyRecorder>,
}

/// What `GET /api/v1/models` shows per model.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct ModelView {
    pub id: String,
    pub version: String,
    pub backend: String,
    pub channels: usize,
    pub window: usize,
    pub labels: Vec<String>,
    pub max_batch: usize,
    pub max_delay_ms: f64,
    pub workers: usize,
    pub queue: usize,
    pub requests_ok: u64,
    pub requests_failed: u64,
    pub batches: u64,
    pub windows: u64,
    pub mean_batch: f64,
    pub latency: LatencyQuantiles,
}

pub struct InferenceService {
    device: Device,
    models: BTreeMap<String, Served>,
    metrics: InferenceMetrics,
}

/// A model to serve through a ready backend (tests and benchmarks plug in
/// their own, e.g. ONNX Runtime).
pub struct ServeSpec {
    pub meta: ModelMetadata,
    pub backend: Arc<dyn Backend>,
    pub policy: BatchPolicy,
    pub workers: usize,
    pub queue: usize,
}

impl InferenceService {
    /// Loads every configured model on the configured device and starts
    /// its batcher and workers. No network I/O.
    pub fn start(config: &InferenceConfig, metrics: InferenceMetrics) -> Result<Self, StartError> {
        if !config.models.is_empty() {
            backend::check_device(config.device).map_err(StartError::Device)?;
        }
        let mut specs = Vec::with_capacity(config.models.len());
        let mut failed = Vec::new();
        for (index, m) in config.models.iter().enumerate() {
            match backend::load(&m.metadata, config.device) {
                Ok((meta, backend)) => specs.push(spec(meta, backend, m)),
                Err(source) => failed.push(StartError::Model { index, source }),
            }
        }
        // Every model that does not load, not just the first.
        match failed.len() {
            0 => Self::from_specs(config.device, specs, metrics),
            1 => Err(failed.remove(0)),
            _ => Err(StartError::Models(failed)),
        }
    }

    /// Starts serving already prepared backends.
    pub fn from_specs(
        device: Device,
        specs: Vec<ServeSpec>,
        metrics: InferenceMetrics,
    ) -> Result<Self, StartError> {
        let mut models = BTreeMap::new();
        let mut index_of = BTreeMap::new();
        for (index, s) in specs.into_iter().enumerate() {
            if let Some(&first) = index_of.get(&s.meta.id) {
                return Err(StartError::DuplicateId {
                    index,
                    first,
                    id: s.meta.id,
                });
            }
            index_of.insert(s.meta.id.clone(), index);
            let served = serve(s, &metrics).map_err(|cause| StartError::Worker { index, cause })?;
            models.insert(served.meta.id.clone(), served);
        }
        Ok(InferenceService {
            device,
            models,
            metrics,
        })
    }

    /// A service that serves nothing (every request: unknown model).
    pub fn none() -> Self {
        InferenceService {
            device: Device::Cpu,
            models: BTreeMap::new(),
            metrics: InferenceMetrics::default(),
        }
    }

    pub fn device(&self) -> Device {
        self.device
    }

    pub fn metrics(&self) -> &InferenceMetrics {
        &self.metrics
    }

    pub fn model(&self, id: &str) -> Option<&ModelMetadata> {
        self.models.get(id).map(|s| &s.meta)
    }

    pub fn model_ids(&self) -> Vec<String> {
        self.models.keys().cloned().collect()
    }

    /// Classifies one window of raw readings (`window x channels` values,
    /// reading by reading, in sensor units): normalised with the model's
    /// statistics, batched with other requests, run. The prediction's
    /// window fields are left for the caller.
    pub async fn infer(
        &self,
        model_id: &str,
        channels: usize,
        window: &[f32],
    ) -> Result<Prediction, InferError> {
        let result = self.infer_inner(model_id, channels, window).await;
        let label = if self.models.contains_key(model_id) {
            model_id
        } else {
            "unknown"
        };
        match &result {
            Ok(_) => {
                self.metrics.request(label, "ok");
            }
            Err(e) => {
                let n = self.metrics.request(label, e.kind());
                if LogEvery::FIRST_10_THEN_EVERY_1000.should_log(n) {
                    tracing::warn!(
                        model = model_id,
                        failed_so_far = n,
                        "inference request refused: {e}"
                    );
                }
            }
        }
        result
    }

    async fn infer_inner(
        &self,
        model_id: &str,
        channels: usize,
        window: &[f32],
    ) -> Result<Prediction, InferError> {
        let served = self
            .models
            .get(model_id)
            .ok_or_else(|| InferError::UnknownModel {
                model: model_id.to_string(),
                known: self.model_ids(),
            })?;
        let meta = &served.meta;
        if channels != meta.channels || window.len() != meta.channels * meta.window {
            return Err(InferError::WrongShape {
                model: meta.id.clone(),
                want_channels: meta.channels,
                want_len: meta.window,
                got_channels: channels,
                got_values: window.len(),
            });
        }
        if let Some(index) = window.iter().position(|v| !v.is_finite()) {
            return Err(InferError::BadValues { index });
        }
        let input = normalise(meta, window);
        let (reply, answer) = oneshot::channel();
        let request = Request {
            input,
            enqueued: Instant::now(),
            reply,
        };
        match served.requests.try_send(request) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                return Err(InferError::Overloaded {
                    model: meta.id.clone(),
                    queue: served.queue,
                })
            }
            Err(TrySendError::Disconnected(_)) => {
                return Err(InferError::Failed {
                    model: meta.id.clone(),
                    cause: "the model's batcher has stopped".into(),
                })
            }
        }
        let probabilities = answer.await.map_err(|_| InferError::Failed {
            model: meta.id.clone(),
            cause: "the worker went away without answering".into(),
        })??;
        Ok(prediction(meta, probabilities))
    }

    /// Every served model with its limits and counters.
    pub fn views(&self) -> Vec<ModelView> {
        self.models
            .values()
            .map(|s| {
                let m = &s.meta;
                let (batches, windows) = self.metrics.batches(&m.id);
                let failed = super::stats::OUTCOMES
                    .iter()
                    .filter(|o| **o != "ok")
                    .map(|o| self.metrics.requests(&m.id, o))
                    .sum();
                ModelView {
                    id: m.id.clone(),
                    version: m.version.clone(),
                    backend: s.backend.to_string(),
                    channels: m.channels,
                    window: m.window,
                    labels: m.labels.clone(),
                    max_batch: s.policy.max_batch,
                    max_delay_ms: s.policy.max_delay.as_secs_f64() * 1e3,
                    workers: s.workers,
                    queue: s.queue,
                    requests_ok: self.metrics.requests(&m.id, "ok"),
                    requests_failed: failed,
                    batches,
                    windows,
                    mean_batch: if batches > 0 {
                        windows as f64 / batches as f64
                    } else {
                        0.0
                    },
                    latency: s.latency.quantiles(&self.metrics),
                }
            })
            .collect()
    }

    /// Refreshes the latency gauges before a Prometheus scrape.
    pub fn refresh_gauges(&self) {
        for s in self.models.values() {
            s.latency.quantiles(&self.metrics);
        }
    }
}

fn spec(meta: ModelMetadata, backend: Arc<dyn Backend>, m: &ServedModelConfig) -> ServeSpec {
    ServeSpec {
        meta,
        backend,
        policy: BatchPolicy {
            max_batch: m.max_batch,
            max_delay: Duration::from_millis(m.max_delay_ms),
        },
        workers: m.workers,
        queue: m.queue,
    }
}

/// Raw readings (reading-major) to the model's input: normalised per
/// channel, channel-major (NCW), as the edge's windower does.
pub fn normalise(meta: &ModelMetadata, window: &[f32]) -> Vec<f32> {
    let (c, w) = (meta.channels, meta.window);
    let norm = &meta.normalization;
    let mut out = vec![0f32; c * w];
    for t in 0..w {
        for ch in 0..c {
            let v = f64::from(window[t * c + ch]);
            out[ch * w + t] = ((v - norm.mean[ch]) / norm.std[ch]) as f32;
        }
    }
    out
}

/// The model's probabilities as a prediction (argmax; first of equals).
pub fn prediction(meta: &ModelMetadata, probabilities: Vec<f32>) -> Prediction {
    conveyor_model::Scores::from_probabilities(probabilities).into_prediction(meta)
}

/// Starts a model's dispatcher and workers.
fn serve(spec: ServeSpec, metrics: &InferenceMetrics) -> Result<Served, String> {
    let ServeSpec {
        meta,
        backend,
        policy,
        workers,
        queue,
    } = spec;
    let (requests, inbox) = mpsc::sync_channel::<Request>(queue);
    // Rendezvous: a batch is handed over only when a worker is free.
    let (batches, work) = mpsc::sync_channel::<Vec<Request>>(0);
    let work = Arc::new(Mutex::new(work));
    let latency = Arc::new(LatencyRecorder::new(&meta.id));
    let classes = meta.labels.len();
    for i in 0..workers {
        let runner = backend.runner().map_err(|e| e.to_string())?;
        let worker = Worker {
            model: meta.id.clone(),
            classes,
            runner,
            metrics: metrics.clone(),
            latency: latency.clone(),
        };
        let work = work.clone();
        std::thread::Builder::new()
            .name(format!("infer-{}-{i}", meta.id))
            .spawn(move || worker.run(&work))
            .map_err(|e| e.to_string())?;
    }
    std::thread::Builder::new()
        .name(format!("batcher-{}", meta.id))
        .spawn(move || dispatch(inbox, batches, policy))
        .map_err(|e| e.to_string())?;
    Ok(Served {
        backend: backend.name(),
        meta,
        policy,
        workers,
        queue,
        requests,
        latency,
    })
}

/// The dispatcher: requests in, batches out, by the policy. Ends when the
/// service is dropped (after handing over what was waiting).
fn dispatch(inbox: Receiver<Request>, batches: SyncSender<Vec<Request>>, policy: BatchPolicy) {
    let mut queue = BatchQueue::new(policy);
    loop {
        let received = match queue.deadline() {
            None => inbox.recv().map_err(|_| RecvTimeoutError::Disconnected),
            Some(deadline) => {
                inbox.recv_timeout(deadline.saturating_duration_since(Instant::now()))
            }
        };
        match received {
            Ok(r) => queue.push(r.enqueued, r),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        // Take in whatever else has arrived, up to one batch's worth.
        while queue.len() < policy.max_batch {
            match inbox.try_recv() {
                Ok(r) => queue.push(r.enqueued, r),
                Err(_) => break,
            }
        }
        while let Some(batch) = queue.take_ready(Instant::now()) {
            if batches.send(batch).is_err() {
                return;
            }
        }
    }
    while !queue.is_empty() {
        if batches.send(queue.take(policy.max_batch)).is_err() {
            return;
        }
    }
}

struct Worker {
    model: String,
    classes: usize,
    runner: Box<dyn BatchRunner>,
    metrics: InferenceMetrics,
    latency: Arc<LatencyRecorder>,
}

impl Worker {
    fn run(mut self, work: &Mutex<Receiver<Vec<Request>>>) {
        loop {
            let batch = {
                let rx = work.lock().unwrap_or_else(|p| p.into_inner());
                rx.recv()
            };
            let Ok(batch) = batch else { return };
            self.run_batch(batch);
        }
    }

    fn run_batch(&mut self, batch: Vec<Request>) {
        let n = batch.len();
        let mut input = Vec::with_capacity(n * batch[0].input.len());
        for r in &batch {
            input.extend_from_slice(&r.input);
        }
        let runner = &mut self.runner;
        let outcome =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| runner.run(n, input)))
                .unwrap_or_else(|_| Err(backend::BackendError("the model call panicked".into())))
                .and_then(|out| {
                    if out.len() == n * self.classes {
                        Ok(out)
                    } else {
                        Err(backend::BackendError(format!(
                            "the model returned {} values for {n} windows of {} classes",
                            out.len(),
                            self.classes
                        )))
                    }
                });
        self.metrics.batch(&self.model, n);
        let done = Instant::now();
        match outcome {
            Ok(out) => {
                for (r, row) in batch.into_iter().zip(out.chunks(self.classes)) {
                    self.latency
                        .record(done.duration_since(r.enqueued).as_micros() as u64);
                    let _ = r.reply.send(Ok(row.to_vec()));
                }
            }
            Err(e) => {
                tracing::error!(model = %self.model, windows = n, "model call failed: {e}");
                for r in batch {
                    let _ = r.reply.send(Err(InferError::Failed {
                        model: self.model.clone(),
                        cause: e.to_string(),
                    }));
                }
            }
        }
    }
}
