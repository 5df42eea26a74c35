//! `hub`: hub inference throughput and latency at several batch sizes on
//! the CPU, tract against ONNX Runtime, in one process.
//!
//! For every hub model and batch size B, two measurements:
//!
//! - **model call**: one call of B windows (the model's real test windows,
//!   normalised, cycled), repeated: tract through the hub's own backend
//!   (`cloud_hub::inference::backend::load(.., Device::Cpu)`, one
//!   `runner()`), ONNX Runtime through one session (intra-op 1, so both
//!   run one thread per call). windows/s is B / the median call time.
//! - **through the hub's batcher**: the hub's `InferenceService` with
//!   `max_batch = B`, `max_delay` 2 ms and 1 (or 2) workers, fed by a
//!   closed loop of 2 B client tasks, each awaiting `infer` before sending
//!   its next window. ONNX Runtime sits behind the *same* batcher through
//!   [`OrtBackend`], an implementation of the hub's `Backend` trait.
//!
//! The engines alternate in rounds (order swapped every round), so the
//! noise of a shared 2-core machine falls on both; throughputs are medians.

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use clap::Args;
use cloud_hub::inference::backend::{self, Backend, BackendError, BatchRunner, Device};
use cloud_hub::inference::batcher::BatchPolicy;
use cloud_hub::inference::service::{normalise, InferenceService, ServeSpec};
use cloud_hub::inference::stats::InferenceMetrics;
use conveyor_model::{BatchSize, ModelRunner, OnnxModel};
use conveyor_shared::ModelMetadata;
use serde::Serialize;

use crate::engines::{OrtEngine, OrtRuntime};
use crate::report::{Machine, OrtStatus};
use crate::{bench, error_chain, ModelArgs};
use bench_stats::{fmt_ms, fmt_ratio, fmt_thousands, median, ratio, summarize};

/// The hub models measured by default, in each `models/<dataset>/`.
const HUB_MODELS: [&str; 1] = ["hub.fp32.json"];

#[derive(Args, Clone)]
pub struct HubArgs {
    /// Hub model metadata files (comma separated or repeated). Default:
    /// every `hub.fp32.json` under --models-dir.
    #[arg(long, value_name = "METADATA", value_delimiter = ',', num_args = 1..)]
    pub models: Vec<PathBuf>,
    /// Where to look for the default models.
    #[arg(long, value_name = "DIR", default_value = "models")]
    pub models_dir: PathBuf,
    /// The data sets (`<dir>/<dataset>/<dataset>_TEST.ts`): the test
    /// windows fed to the models.
    #[arg(long, value_name = "DIR", default_value = "models/data")]
    pub data_dir: PathBuf,
    /// Batch sizes: windows per model call, and the batcher's max_batch.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32,128")]
    pub batches: Vec<usize>,
    /// Timed seconds per engine, per batch size, per measurement (the
    /// model call; the batcher at each worker count), split over the rounds.
    #[arg(long, default_value_t = 2.0)]
    pub seconds: f64,
    /// Rounds; the engines alternate within each and swap order between
    /// rounds.
    #[arg(long, default_value_t = 4)]
    pub rounds: usize,
    /// Warm-up seconds per engine per batch size before the model-call
    /// rounds (the batcher's rounds each start with a ramp that is not
    /// counted).
    #[arg(long, default_value_t = 0.3)]
    pub warmup: f64,
    /// Worker threads of the batcher (one model call each), one set of
    /// rows per value.
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    pub workers: Vec<usize>,
    /// The batcher's max_delay, ms.
    #[arg(long, default_value_t = 2.0)]
    pub max_delay_ms: f64,
    /// Concurrent clients per unit of max_batch (K = this x B).
    #[arg(long, default_value_t = 2)]
    pub clients_per_batch: usize,
    /// libonnxruntime.so to load. Without it, the ORT columns say
    /// "unavailable".
    #[arg(long, value_name = "PATH", env = "ORT_DYLIB_PATH")]
    pub ort_lib: Option<PathBuf>,
    /// Also write the results as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Also time tract loaded with a fixed batch of B (a plan built for each
    /// batch size, `OnnxModel::load_with(.., BatchSize::Fixed(B))`) in the
    /// model-call rounds: what the dynamic batch dimension costs.
    #[arg(long)]
    pub tract_fixed_batch: bool,
}

// ---------------------------------------------------------------------------
// ONNX Runtime behind the hub's Backend trait

/// ONNX Runtime as a hub backend: every runner (one per worker thread) has
/// its own session, intra-op 1, inter-op 1, sequential, ORT_ENABLE_ALL,
/// built from the model's ONNX file with a dynamic batch dimension.
pub struct OrtBackend {
    rt: Arc<OrtRuntime>,
    metadata_path: PathBuf,
    meta: ModelMetadata,
}

impl OrtBackend {
    pub fn new(rt: Arc<OrtRuntime>, metadata_path: &Path, meta: &ModelMetadata) -> Self {
        OrtBackend {
            rt,
            metadata_path: metadata_path.to_path_buf(),
            meta: meta.clone(),
        }
    }
}

impl Backend for OrtBackend {
    fn name(&self) -> &'static str {
        "onnxruntime"
    }

    fn runner(&self) -> Result<Box<dyn BatchRunner>, BackendError> {
        let (engine, _) = OrtEngine::load(&self.rt, &self.metadata_path, &self.meta)
            .map_err(|e| BackendError(error_chain(&e)))?;
        Ok(Box::new(OrtRunner(engine)))
    }
}

struct OrtRunner(OrtEngine);

/// tract with the plan built for exactly `B` windows (`--tract-fixed-batch`).
struct FixedBatchRunner(ModelRunner);

impl BatchRunner for FixedBatchRunner {
    fn run(&mut self, _n: usize, input: Vec<f32>) -> Result<Vec<f32>, BackendError> {
        let rows = self.0.run(input).map_err(|e| BackendError(e.to_string()))?;
        Ok(rows.concat())
    }
}

fn fixed_batch_runner(path: &Path, b: usize) -> Result<Box<dyn BatchRunner>> {
    let model = Arc::new(
        OnnxModel::load_with(path, BatchSize::Fixed(b))
            .with_context(|| format!("tract with a fixed batch of {b}"))?,
    );
    Ok(Box::new(FixedBatchRunner(model.runner()?)))
}

impl BatchRunner for OrtRunner {
    fn run(&mut self, n: usize, input: Vec<f32>) -> Result<Vec<f32>, BackendError> {
        self.0
            .run_batch(n, input)
            .map_err(|e| BackendError(error_chain(&e)))
    }
}

// ---------------------------------------------------------------------------
// What a run found

#[derive(Debug, Clone, Serialize)]
pub struct HubReport {
    pub machine: Machine,
    pub settings: HubSettings,
    pub ort: OrtStatus,
    pub models: Vec<HubModel>,
}

#[derive(Debug, Clone, Serialize)]
pub struct HubSettings {
    pub batches: Vec<usize>,
    pub seconds_per_engine: f64,
    pub rounds: usize,
    pub warmup_seconds: f64,
    pub workers: Vec<usize>,
    pub max_delay_ms: f64,
    pub clients_per_batch: usize,
    pub model_call: &'static str,
    pub batcher: &'static str,
    pub tract: &'static str,
    pub ort_session: &'static str,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct HubModel {
    pub metadata: String,
    pub id: String,
    pub version: String,
    pub precision: String,
    pub channels: usize,
    pub window: usize,
    pub classes: usize,
    pub test_windows: usize,
    /// `ok`, `unavailable` or `error: ...`.
    pub ort_status: String,
    pub agreement: Option<Agreement>,
    pub model_call: Vec<CallRow>,
    pub batcher: Vec<ServeRow>,
    /// Why the model could not be measured at all.
    pub error: Option<String>,
}

/// tract and ORT on the same batch of test windows, before timing.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Agreement {
    /// Windows in the batch (the largest batch size, windows cycled).
    pub batch: usize,
    pub max_abs_diff: f32,
    /// Of those windows, how many have the same top class in both.
    pub same_class: usize,
}

/// One model call of `batch` windows, per engine.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CallRow {
    pub batch: usize,
    pub tract: Option<CallStats>,
    pub ort: Option<CallStats>,
    /// tract windows/s / ORT windows/s (< 1: tract is slower).
    pub tract_over_ort: Option<f64>,
    /// windows/s at this batch / windows/s at batch 1, same engine.
    pub tract_gain: Option<f64>,
    pub ort_gain: Option<f64>,
    /// With `--tract-fixed-batch`: tract with a plan built for exactly B.
    pub tract_fixed: Option<CallStats>,
    /// tract_fixed windows/s / tract windows/s.
    pub fixed_over_dynamic: Option<f64>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct CallStats {
    pub calls: u64,
    /// `batch / median call time`.
    pub windows_per_s: f64,
    /// `batch / mean call time`.
    pub windows_per_s_mean: f64,
    /// `batch / median call time` of each round: how much the machine moved.
    pub round_windows_per_s: Vec<f64>,
    /// Per call (the whole batch).
    pub p50_us: f64,
    pub p99_us: f64,
    pub mean_us: f64,
}

/// The hub's batcher with `max_batch = batch`, per engine.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ServeRow {
    pub batch: usize,
    pub workers: usize,
    pub clients: usize,
    pub tract: Option<ServeStats>,
    pub ort: Option<ServeStats>,
    pub tract_over_ort: Option<f64>,
    /// windows/s at this max_batch / at max_batch 1, same engine and workers.
    pub tract_gain: Option<f64>,
    pub ort_gain: Option<f64>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ServeStats {
    /// Requests answered inside the timed windows.
    pub requests: u64,
    /// Median over rounds of answered requests per second.
    pub windows_per_s: f64,
    pub round_windows_per_s: Vec<f64>,
    /// Request latency measured by the client: `infer` called to answer
    /// (normalise, queue, batch, model call, reply).
    pub p50_us: f64,
    pub p99_us: f64,
    pub mean_us: f64,
    /// Model calls made inside the timed windows, and their mean size
    /// (`metrics().batches`).
    pub batches: u64,
    pub mean_batch: f64,
    /// Failed requests (any outcome but ok), anywhere in the run.
    pub errors: u64,
    pub first_error: Option<String>,
}

// ---------------------------------------------------------------------------
// The run

struct Plan {
    seconds: f64,
    rounds: usize,
    warmup: Duration,
}

impl Plan {
    fn per_round(&self) -> Duration {
        Duration::from_secs_f64(self.seconds.max(0.0) / self.rounds as f64)
    }
}

/// The engines of one model: tract, and ORT where it loads.
struct Engines {
    names: Vec<&'static str>,
    backends: Vec<Arc<dyn Backend>>,
}

pub fn run(args: &HubArgs) -> Result<()> {
    if args.batches.is_empty() || args.batches.contains(&0) {
        anyhow::bail!("--batches: give batch sizes of at least 1");
    }
    if args.workers.is_empty() || args.workers.contains(&0) {
        anyhow::bail!("--workers: give worker counts of at least 1");
    }
    if args.clients_per_batch == 0 {
        anyhow::bail!("--clients-per-batch must be at least 1");
    }
    let paths = crate::model_paths_named(
        &ModelArgs {
            metadata: args.models.clone(),
            models_dir: args.models_dir.clone(),
        },
        &HUB_MODELS,
    )?;
    let data_dir = data_dir(&args.data_dir);
    let plan = Plan {
        seconds: args.seconds,
        rounds: args.rounds.max(1),
        warmup: Duration::from_secs_f64(args.warmup.max(0.0)),
    };
    let (ort_rt, ort) = crate::load_ort(args.ort_lib.as_deref());
    let ort_rt = ort_rt.map(Arc::new);
    // The clients: one thread, so the model calls have the other core.
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the client runtime")?;

    let mut report = HubReport {
        machine: Machine {
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu_model: crate::cpu_model(),
            threads_per_engine: 1,
        },
        settings: HubSettings {
            batches: args.batches.clone(),
            seconds_per_engine: plan.seconds,
            rounds: plan.rounds,
            warmup_seconds: plan.warmup.as_secs_f64(),
            workers: args.workers.clone(),
            max_delay_ms: args.max_delay_ms,
            clients_per_batch: args.clients_per_batch,
            model_call: "one BatchRunner::run(B, input) per call, input [B, C, W] normalised test windows (cycled) \
                         built before the clock starts; windows/s = B / median call time",
            batcher: "InferenceService (max_batch B, max_delay, workers) fed by K = clients_per_batch x B tokio tasks \
                      on one thread, each awaiting infer(raw window) then sending the next; each round starts with \
                      an uncounted ramp; windows/s = median over rounds of answers per second",
            tract: "cloud_hub::inference::backend::load(metadata, Device::Cpu) (the edge loader, dynamic batch); \
                    one runner per model call thread",
            ort_session: "one session per runner: intra-op 1, inter-op 1, sequential, \
                          GraphOptimizationLevel::All (ORT_ENABLE_ALL), CPU EP, dynamic batch",
        },
        ort,
        models: Vec::new(),
    };

    for path in &paths {
        eprintln!("== {}", path.display());
        let mut m = HubModel {
            metadata: path.display().to_string(),
            ..Default::default()
        };
        if let Err(e) = bench_model(
            path,
            &data_dir,
            ort_rt.as_ref(),
            &plan,
            args,
            &tokio,
            &mut m,
        ) {
            m.error = Some(error_chain(&e));
            eprintln!("   error: {}", error_chain(&e));
        }
        report.models.push(m);
    }

    print!("{}", render(&report));
    if let Some(file) = &args.json {
        let text = serde_json::to_string_pretty(&report)?;
        std::fs::write(file, text + "\n").with_context(|| format!("writing {}", file.display()))?;
        eprintln!("wrote {}", file.display());
    }
    Ok(())
}

/// `models/data`, or the repository's when run from elsewhere.
fn data_dir(dir: &Path) -> PathBuf {
    if !dir.is_dir() && dir == Path::new("models/data") {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/data")
    } else {
        dir.to_path_buf()
    }
}

fn bench_model(
    path: &Path,
    data_dir: &Path,
    ort_rt: Option<&Arc<OrtRuntime>>,
    plan: &Plan,
    args: &HubArgs,
    tokio: &tokio::runtime::Runtime,
    m: &mut HubModel,
) -> Result<()> {
    let t = Instant::now();
    let (meta, tract) = backend::load(path, Device::Cpu).context("tract")?;
    eprintln!(
        "   tract ({}): loaded in {:.1} ms",
        tract.name(),
        ms(t.elapsed())
    );
    m.id = meta.id.clone();
    m.version = meta.version.clone();
    m.precision = meta.precision.clone();
    m.channels = meta.channels;
    m.window = meta.window;
    m.classes = meta.labels.len();

    let raw: Vec<Vec<f32>> = cloud_hub::cascade::split::test_windows(data_dir, &meta)
        .with_context(|| format!("test windows of {} in {}", meta.id, data_dir.display()))?
        .into_iter()
        .map(|w| w.values)
        .collect();
    if raw.is_empty() {
        anyhow::bail!("no test windows for {} in {}", meta.id, data_dir.display());
    }
    m.test_windows = raw.len();
    let inputs: Vec<Vec<f32>> = raw.iter().map(|w| normalise(&meta, w)).collect();
    eprintln!(
        "   {} test windows ({}x{})",
        raw.len(),
        meta.channels,
        meta.window
    );

    let mut engines = Engines {
        names: vec!["tract"],
        backends: vec![tract],
    };
    // One runner per engine for the model calls, built once.
    let mut runners: Vec<Box<dyn BatchRunner>> = vec![engines.backends[0]
        .runner()
        .map_err(|e| anyhow!("tract runner: {e}"))?];
    m.ort_status = "unavailable".into();
    if let Some(rt) = ort_rt {
        let ort: Arc<dyn Backend> = Arc::new(OrtBackend::new(rt.clone(), path, &meta));
        let t = Instant::now();
        match ort.runner() {
            Ok(r) => {
                eprintln!("   ORT: session in {:.1} ms", ms(t.elapsed()));
                m.ort_status = "ok".into();
                engines.names.push("ORT");
                engines.backends.push(ort);
                runners.push(r);
            }
            Err(e) => {
                eprintln!("   ORT: {e}");
                m.ort_status = format!("error: {e}");
            }
        }
    }

    // Do the engines agree on a batch of real windows?
    if runners.len() == 2 {
        let b = args.batches.iter().copied().max().unwrap_or(1);
        let t = runners[0]
            .run(b, batch_input(&inputs, 0, b))
            .map_err(|e| anyhow!("tract on a batch of {b}: {e}"))?;
        let o = runners[1]
            .run(b, batch_input(&inputs, 0, b))
            .map_err(|e| anyhow!("ORT on a batch of {b}: {e}"))?;
        let a = agreement(&t, &o, b, m.classes);
        eprintln!(
            "   agreement on a batch of {b}: max |tract - ORT| = {:.2e}, same top class {}/{b}",
            a.max_abs_diff, a.same_class
        );
        m.agreement = Some(a);
    }

    for &b in &args.batches {
        eprintln!("   batch {b}: model call");
        let mut row = CallRow {
            batch: b,
            ..Default::default()
        };
        let engines_now = runners.len();
        let measured = if args.tract_fixed_batch {
            fixed_batch_runner(path, b).map(|r| runners.push(r))
        } else {
            Ok(())
        }
        .and_then(|()| measure_calls(&mut runners, &inputs, b, plan));
        runners.truncate(engines_now);
        match measured {
            Ok(mut stats) => {
                if args.tract_fixed_batch {
                    row.tract_fixed = stats.pop().flatten();
                }
                let mut it = stats.into_iter();
                row.tract = it.next().flatten();
                row.ort = it.next().flatten();
            }
            Err(e) => {
                eprintln!("      error: {}", error_chain(&e));
                row.error = Some(error_chain(&e));
            }
        }
        eprintln!(
            "      tract {} windows/s, ORT {} windows/s{}",
            row.tract
                .as_ref()
                .map_or("n/a".into(), |s| fmt_thousands(s.windows_per_s)),
            row.ort
                .as_ref()
                .map_or("n/a".into(), |s| fmt_thousands(s.windows_per_s)),
            row.tract_fixed.as_ref().map_or(String::new(), |s| format!(
                ", tract with a fixed batch {} windows/s",
                fmt_thousands(s.windows_per_s)
            )),
        );
        // a ramp long enough for a few full batches to have gone through
        let call = [&row.tract, &row.ort]
            .iter()
            .filter_map(|s| s.as_ref().map(|s| s.p50_us))
            .fold(0.0f64, f64::max);
        let ramp = Duration::from_secs_f64(
            (4.0 * call / 1e6 + 2.0 * args.max_delay_ms / 1e3).clamp(0.05, 1.0),
        );
        m.model_call.push(row);

        for &workers in &args.workers {
            let clients = args.clients_per_batch * b;
            eprintln!("   batch {b}: batcher, {workers} worker(s), {clients} clients");
            let mut row = ServeRow {
                batch: b,
                workers,
                clients,
                ..Default::default()
            };
            let policy = BatchPolicy {
                max_batch: b,
                max_delay: Duration::from_secs_f64(args.max_delay_ms.max(0.0) / 1e3),
            };
            match measure_served(
                &engines, &meta, &raw, policy, workers, clients, ramp, plan, tokio,
            ) {
                Ok(stats) => {
                    let mut it = stats.into_iter();
                    row.tract = it.next();
                    row.ort = it.next();
                }
                Err(e) => {
                    eprintln!("      error: {}", error_chain(&e));
                    row.error = Some(error_chain(&e));
                }
            }
            let show = |s: &Option<ServeStats>| {
                s.as_ref().map_or("n/a".into(), |s| {
                    format!(
                        "{} windows/s (mean batch {:.1}{})",
                        fmt_thousands(s.windows_per_s),
                        s.mean_batch,
                        if s.errors > 0 {
                            format!(", {} errors", s.errors)
                        } else {
                            String::new()
                        }
                    )
                })
            };
            eprintln!("      tract {}, ORT {}", show(&row.tract), show(&row.ort));
            m.batcher.push(row);
        }
    }
    finish(m);
    Ok(())
}

/// Fills in the ratios and the gains over batch 1.
fn finish(m: &mut HubModel) {
    let one = m.model_call.iter().find(|r| r.batch == 1).cloned();
    for r in &mut m.model_call {
        let (t, o) = (wps(&r.tract), wps(&r.ort));
        r.tract_over_ort = ratio_of(t, o);
        r.fixed_over_dynamic = ratio_of(wps(&r.tract_fixed), t);
        if let Some(one) = &one {
            r.tract_gain = ratio_of(t, wps(&one.tract));
            r.ort_gain = ratio_of(o, wps(&one.ort));
        }
    }
    let ones: Vec<ServeRow> = m.batcher.iter().filter(|r| r.batch == 1).cloned().collect();
    for r in &mut m.batcher {
        let (t, o) = (swps(&r.tract), swps(&r.ort));
        r.tract_over_ort = ratio_of(t, o);
        if let Some(one) = ones.iter().find(|o| o.workers == r.workers) {
            r.tract_gain = ratio_of(t, swps(&one.tract));
            r.ort_gain = ratio_of(o, swps(&one.ort));
        }
    }
}

fn wps(s: &Option<CallStats>) -> Option<f64> {
    s.as_ref().map(|s| s.windows_per_s)
}

fn swps(s: &Option<ServeStats>) -> Option<f64> {
    s.as_ref().map(|s| s.windows_per_s)
}

fn ratio_of(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    ratio(a?, b?)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// `b` normalised windows starting at `start` (cycled), concatenated: the
/// `[b, C, W]` input of one model call.
pub fn batch_input(inputs: &[Vec<f32>], start: usize, b: usize) -> Vec<f32> {
    let per = inputs.first().map_or(0, Vec::len);
    let mut out = Vec::with_capacity(b * per);
    for i in 0..b {
        out.extend_from_slice(&inputs[(start + i) % inputs.len()]);
    }
    out
}

/// Max abs difference and top-class agreement of two `b x classes` outputs.
pub fn agreement(a: &[f32], b: &[f32], batch: usize, classes: usize) -> Agreement {
    let max_abs_diff = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max);
    let argmax = |row: &[f32]| {
        row.iter()
            .enumerate()
            .fold((0, f32::NEG_INFINITY), |best, (i, &v)| {
                if v > best.1 {
                    (i, v)
                } else {
                    best
                }
            })
            .0
    };
    let same_class = a
        .chunks(classes.max(1))
        .zip(b.chunks(classes.max(1)))
        .filter(|(x, y)| argmax(x) == argmax(y))
        .count();
    Agreement {
        batch,
        max_abs_diff,
        same_class,
    }
}

/// `b` windows per call over per-call timings (ns).
pub fn call_stats(
    b: usize,
    samples_ns: &[u64],
    rounds: &[std::ops::Range<usize>],
) -> Option<CallStats> {
    let s = summarize(samples_ns)?;
    let per_s = |ns: &[u64]| {
        let t: Vec<f64> = ns.iter().map(|&n| n.max(1) as f64).collect();
        b as f64 * 1e9 / median(&t)
    };
    Some(CallStats {
        calls: s.calls,
        windows_per_s: per_s(samples_ns),
        windows_per_s_mean: b as f64 * s.windows_per_s,
        round_windows_per_s: rounds
            .iter()
            .filter(|r| !r.is_empty())
            .map(|r| per_s(&samples_ns[r.clone()]))
            .collect(),
        p50_us: s.p50_us,
        p99_us: s.p99_us,
        mean_us: s.mean_us,
    })
}

/// (a): calls of `b` windows on every runner, in alternating rounds; one
/// summary per runner, in order.
fn measure_calls(
    runners: &mut [Box<dyn BatchRunner>],
    inputs: &[Vec<f32>],
    b: usize,
    plan: &Plan,
) -> Result<Vec<Option<CallStats>>> {
    let n = runners.len();
    let mut next = vec![0usize; n];
    for (e, runner) in runners.iter_mut().enumerate() {
        let t = Instant::now();
        let mut k = 0;
        while k < 3 || t.elapsed() < plan.warmup {
            let x = batch_input(inputs, next[e], b);
            next[e] += b;
            black_box(runner.run(b, black_box(x)).map_err(|e| anyhow!("{e}"))?);
            k += 1;
        }
    }
    let mut samples: Vec<Vec<u64>> = vec![Vec::new(); n];
    let mut rounds: Vec<Vec<std::ops::Range<usize>>> = vec![Vec::new(); n];
    for r in 0..plan.rounds {
        for e in bench::round_order(r, n) {
            let start = samples[e].len();
            let t_round = Instant::now();
            let mut k = 0;
            while k < 3 || t_round.elapsed() < plan.per_round() {
                let x = batch_input(inputs, next[e], b);
                next[e] += b;
                let t = Instant::now();
                let out = runners[e].run(b, black_box(x));
                let dt = t.elapsed();
                let out = out.map_err(|e| anyhow!("{e}"))?;
                black_box(out);
                samples[e].push(dt.as_nanos() as u64);
                k += 1;
            }
            rounds[e].push(start..samples[e].len());
        }
    }
    Ok((0..n)
        .map(|e| call_stats(b, &samples[e], &rounds[e]))
        .collect())
}

/// What the clients saw in one round.
#[derive(Default)]
struct LoopResult {
    latencies_ns: Vec<u64>,
    errors: u64,
    first_error: Option<String>,
    /// Model calls and windows in them inside the timed window.
    batches: u64,
    windows: u64,
}

/// (b): every engine behind its own InferenceService with `policy`, in
/// alternating rounds of a closed loop of `clients`.
#[allow(clippy::too_many_arguments)]
fn measure_served(
    engines: &Engines,
    meta: &ModelMetadata,
    raw: &[Vec<f32>],
    policy: BatchPolicy,
    workers: usize,
    clients: usize,
    ramp: Duration,
    plan: &Plan,
    tokio: &tokio::runtime::Runtime,
) -> Result<Vec<ServeStats>> {
    let services: Vec<Arc<InferenceService>> = engines
        .backends
        .iter()
        .zip(&engines.names)
        .map(|(backend, name)| {
            InferenceService::from_specs(
                Device::Cpu,
                vec![ServeSpec {
                    meta: meta.clone(),
                    backend: backend.clone(),
                    policy,
                    workers,
                    // a closed loop never has more than `clients` waiting
                    queue: 2 * clients,
                }],
                InferenceMetrics::default(),
            )
            .map(Arc::new)
            .map_err(|e| anyhow!("{name}: starting the service: {e}"))
        })
        .collect::<Result<_>>()?;
    let windows = Arc::new(raw.to_vec());
    let n = services.len();
    let mut results: Vec<Vec<LoopResult>> = (0..n).map(|_| Vec::new()).collect();
    for r in 0..plan.rounds {
        for e in bench::round_order(r, n) {
            let res = tokio.block_on(closed_loop(
                services[e].clone(),
                meta.id.clone(),
                meta.channels,
                windows.clone(),
                clients,
                ramp,
                plan.per_round(),
            ));
            results[e].push(res);
        }
    }
    let secs = plan.per_round().as_secs_f64();
    Ok(results
        .into_iter()
        .map(|rounds| serve_stats(&rounds, secs))
        .collect())
}

fn serve_stats(rounds: &[LoopResult], seconds_per_round: f64) -> ServeStats {
    let all: Vec<u64> = rounds
        .iter()
        .flat_map(|r| r.latencies_ns.iter().copied())
        .collect();
    let per_round: Vec<f64> = rounds
        .iter()
        .map(|r| r.latencies_ns.len() as f64 / seconds_per_round.max(1e-9))
        .collect();
    let batches: u64 = rounds.iter().map(|r| r.batches).sum();
    let windows: u64 = rounds.iter().map(|r| r.windows).sum();
    let s = summarize(&all);
    ServeStats {
        requests: all.len() as u64,
        windows_per_s: median(&per_round),
        round_windows_per_s: per_round,
        p50_us: s.as_ref().map_or(f64::NAN, |s| s.p50_us),
        p99_us: s.as_ref().map_or(f64::NAN, |s| s.p99_us),
        mean_us: s.as_ref().map_or(f64::NAN, |s| s.mean_us),
        batches,
        mean_batch: if batches > 0 {
            windows as f64 / batches as f64
        } else {
            0.0
        },
        errors: rounds.iter().map(|r| r.errors).sum(),
        first_error: rounds.iter().find_map(|r| r.first_error.clone()),
    }
}

/// `clients` tasks, each sending a raw test window (its own cycle through
/// them), awaiting the answer, and sending the next, until the round ends.
/// Answers that arrive within `[start + ramp, start + ramp + measure]`
/// count; the batcher's counters are read at both ends of that window.
async fn closed_loop(
    service: Arc<InferenceService>,
    model: String,
    channels: usize,
    windows: Arc<Vec<Vec<f32>>>,
    clients: usize,
    ramp: Duration,
    measure: Duration,
) -> LoopResult {
    let t0 = Instant::now() + ramp;
    let t1 = t0 + measure;
    let mut tasks = Vec::with_capacity(clients);
    for c in 0..clients {
        let (service, model, windows) = (service.clone(), model.clone(), windows.clone());
        tasks.push(tokio::spawn(async move {
            let mut out = LoopResult::default();
            let mut i = c % windows.len();
            loop {
                let sent = Instant::now();
                if sent >= t1 {
                    break;
                }
                let answer = service.infer(&model, channels, &windows[i]).await;
                let done = Instant::now();
                match answer {
                    Ok(p) => {
                        black_box(p);
                        if done >= t0 && done <= t1 {
                            out.latencies_ns.push((done - sent).as_nanos() as u64);
                        }
                    }
                    Err(e) => {
                        out.errors += 1;
                        out.first_error.get_or_insert_with(|| e.to_string());
                    }
                }
                i = (i + 1) % windows.len();
            }
            out
        }));
    }
    tokio::time::sleep_until(t0.into()).await;
    let (b0, w0) = service.metrics().batches(&model);
    tokio::time::sleep_until(t1.into()).await;
    let (b1, w1) = service.metrics().batches(&model);
    let mut all = LoopResult {
        batches: b1 - b0,
        windows: w1 - w0,
        ..Default::default()
    };
    for t in tasks {
        match t.await {
            Ok(r) => {
                all.latencies_ns.extend(r.latencies_ns);
                all.errors += r.errors;
                if all.first_error.is_none() {
                    all.first_error = r.first_error;
                }
            }
            Err(e) => {
                all.errors += 1;
                all.first_error
                    .get_or_insert_with(|| format!("client task: {e}"));
            }
        }
    }
    all
}

// ---------------------------------------------------------------------------
// Tables

/// The whole stdout: a header, then per model the model-call table and one
/// batcher table per worker count.
pub fn render(r: &HubReport) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "Hub inference on the CPU: {} cpus ({}); {}.\n\
         One thread per model call for both engines: tract's runner, and ORT sessions with intra-op 1, inter-op 1, sequential, ORT_ENABLE_ALL.\n\
         {:.1} s per engine per batch size per measurement, in {} rounds; the engines alternate within each round and swap order every round.\n\
         model call: one call of B windows (real test windows, cycled); windows/s = B / median call time; p50/p99 are per call (the whole batch).\n\
         batcher: the hub's InferenceService, max_batch B, max_delay {} ms, K = {} x B clients in a closed loop; windows/s = median over rounds of answers/s; \
         p50/p99 per request, from infer() to the answer, measured by the client; mean batch from the service's batch counters.\n\
         tract/ORT = tract windows/s / ORT windows/s (< 1: tract is slower). gain = windows/s at B / windows/s at B = 1, same engine.\n",
        r.machine.cpus,
        r.machine.cpu_model,
        crate::ort_line(&r.ort),
        r.settings.seconds_per_engine,
        r.settings.rounds,
        r.settings.max_delay_ms,
        r.settings.clients_per_batch,
    ));
    for m in &r.models {
        let name = if m.id.is_empty() { &m.metadata } else { &m.id };
        out.push_str(&format!("\n### {name}"));
        if let Some(e) = &m.error {
            out.push_str(&format!("\n\nerror: {}\n", one_line(e)));
            continue;
        }
        out.push_str(&format!(
            " ({}, {}x{}, {} classes; ORT {})\n",
            m.precision, m.channels, m.window, m.classes, m.ort_status
        ));
        if let Some(a) = &m.agreement {
            out.push_str(&format!(
                "\nBatch of {}: max |tract - ORT| = {:.2e}, same top class {}/{}.\n",
                a.batch, a.max_abs_diff, a.same_class, a.batch
            ));
        }
        out.push_str("\nModel call (one call of B windows):\n\n");
        out.push_str(&call_table(m));
        if let Some(t) = fixed_table(m) {
            out.push_str(
                "\ntract with the plan built for exactly B windows (--tract-fixed-batch), timed in the same rounds:\n\n",
            );
            out.push_str(&t);
        }
        for w in r.settings.workers.iter().copied() {
            out.push_str(&format!(
                "\nThrough the hub's batcher (max_batch B, max_delay {} ms, {w} worker{}, {} x B clients):\n\n",
                r.settings.max_delay_ms,
                if w == 1 { "" } else { "s" },
                r.settings.clients_per_batch
            ));
            out.push_str(&serve_table(m, w));
        }
    }
    out
}

fn na(m: &HubModel) -> String {
    if m.ort_status == "ok" {
        "n/a".into()
    } else {
        m.ort_status.split(':').next().unwrap_or("n/a").to_string()
    }
}

fn call_table(m: &HubModel) -> String {
    let mut out = String::from(
        "| B | tract windows/s | ORT windows/s | tract/ORT | tract p50 / p99 ms | ORT p50 / p99 ms | tract gain vs B=1 | ORT gain vs B=1 |\n\
         |---|---|---|---|---|---|---|---|\n",
    );
    let ort_na = na(m);
    let show = |s: &Option<CallStats>, none: &str| match s {
        Some(s) => (
            fmt_thousands(s.windows_per_s),
            format!("{} / {}", fmt_ms(s.p50_us), fmt_ms(s.p99_us)),
        ),
        None => (none.to_string(), none.to_string()),
    };
    for r in &m.model_call {
        if let Some(e) = &r.error {
            out.push_str(&format!(
                "| {} | error: {} | | | | | | |\n",
                r.batch,
                one_line(e)
            ));
            continue;
        }
        let (tw, tl) = show(&r.tract, "n/a");
        let (ow, ol) = show(&r.ort, &ort_na);
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r.batch,
            tw,
            ow,
            fmt_ratio(r.tract_over_ort),
            tl,
            ol,
            fmt_ratio(r.tract_gain),
            fmt_ratio(r.ort_gain),
        ));
    }
    out
}

/// With `--tract-fixed-batch`: tract's dynamic-batch plan against a plan
/// built for each B.
fn fixed_table(m: &HubModel) -> Option<String> {
    if m.model_call.iter().all(|r| r.tract_fixed.is_none()) {
        return None;
    }
    let mut out = String::from(
        "| B | tract (dynamic batch) windows/s | tract (fixed batch B) windows/s | fixed/dynamic | dynamic p50 / p99 ms | fixed p50 / p99 ms |\n\
         |---|---|---|---|---|---|\n",
    );
    let show = |s: &Option<CallStats>| match s {
        Some(s) => (
            fmt_thousands(s.windows_per_s),
            format!("{} / {}", fmt_ms(s.p50_us), fmt_ms(s.p99_us)),
        ),
        None => ("n/a".to_string(), "n/a".to_string()),
    };
    for r in m.model_call.iter().filter(|r| r.error.is_none()) {
        let (dw, dl) = show(&r.tract);
        let (fw, fl) = show(&r.tract_fixed);
        out.push_str(&format!(
            "| {} | {dw} | {fw} | {} | {dl} | {fl} |\n",
            r.batch,
            fmt_ratio(r.fixed_over_dynamic),
        ));
    }
    Some(out)
}

fn serve_table(m: &HubModel, workers: usize) -> String {
    let mut out = String::from(
        "| B | clients | tract windows/s | ORT windows/s | tract/ORT | tract p50 / p99 ms | ORT p50 / p99 ms | tract mean batch | ORT mean batch | tract gain vs B=1 | ORT gain vs B=1 |\n\
         |---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let ort_na = na(m);
    let show = |s: &Option<ServeStats>, none: &str| match s {
        Some(s) => (
            format!(
                "{}{}",
                fmt_thousands(s.windows_per_s),
                if s.errors > 0 {
                    format!(" ({} errors)", s.errors)
                } else {
                    String::new()
                }
            ),
            format!("{} / {}", fmt_ms(s.p50_us), fmt_ms(s.p99_us)),
            format!("{:.1}", s.mean_batch),
        ),
        None => (none.to_string(), none.to_string(), none.to_string()),
    };
    for r in m.batcher.iter().filter(|r| r.workers == workers) {
        if let Some(e) = &r.error {
            out.push_str(&format!(
                "| {} | {} | error: {} | | | | | | | | |\n",
                r.batch,
                r.clients,
                one_line(e)
            ));
            continue;
        }
        let (tw, tl, tb) = show(&r.tract, "n/a");
        let (ow, ol, ob) = show(&r.ort, &ort_na);
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r.batch,
            r.clients,
            tw,
            ow,
            fmt_ratio(r.tract_over_ort),
            tl,
            ol,
            tb,
            ob,
            fmt_ratio(r.tract_gain),
            fmt_ratio(r.ort_gain),
        ));
    }
    out
}

fn one_line(s: &str) -> String {
    s.replace(['\n', '|'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_cycle_through_the_windows() {
        let inputs = vec![vec![1.0, 1.5], vec![2.0, 2.5], vec![3.0, 3.5]];
        assert_eq!(
            batch_input(&inputs, 2, 3),
            vec![3.0, 3.5, 1.0, 1.5, 2.0, 2.5]
        );
        assert_eq!(batch_input(&inputs, 0, 1), vec![1.0, 1.5]);
    }

    #[test]
    fn agreement_counts_top_classes_per_row() {
        let a = [0.1, 0.9, 0.6, 0.4];
        let b = [0.2, 0.8, 0.3, 0.7];
        let g = agreement(&a, &b, 2, 2);
        assert_eq!(g.same_class, 1);
        assert!((g.max_abs_diff - 0.3).abs() < 1e-6, "{g:?}");
    }

    #[test]
    fn medians_and_call_rates() {
        assert_eq!(median(&[]), 0.0);
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        // 8 windows per call, calls of 1, 2 and 100 ms: the median call is 2 ms
        let s = call_stats(8, &[1_000_000, 2_000_000, 100_000_000], &[0..1, 1..3]).unwrap();
        assert!((s.windows_per_s - 4000.0).abs() < 1e-6, "{s:?}");
        assert_eq!(s.round_windows_per_s.len(), 2);
        assert!((s.round_windows_per_s[0] - 8000.0).abs() < 1e-6);
        assert!(call_stats(8, &[], &[]).is_none());
    }

    fn call(wps: f64) -> Option<CallStats> {
        Some(CallStats {
            calls: 10,
            windows_per_s: wps,
            p50_us: 1e6 / wps,
            p99_us: 2e6 / wps,
            ..Default::default()
        })
    }

    fn serve(wps: f64, mean_batch: f64) -> Option<ServeStats> {
        Some(ServeStats {
            requests: 100,
            windows_per_s: wps,
            p50_us: 2500.0,
            p99_us: 12_345.0,
            mean_batch,
            ..Default::default()
        })
    }

    #[test]
    fn gains_are_over_batch_one_of_the_same_engine_and_workers() {
        let mut m = HubModel {
            id: "bm-hub".into(),
            ort_status: "ok".into(),
            model_call: vec![
                CallRow {
                    batch: 1,
                    tract: call(1000.0),
                    ort: call(2000.0),
                    ..Default::default()
                },
                CallRow {
                    batch: 8,
                    tract: call(3000.0),
                    ort: call(3000.0),
                    tract_fixed: call(3300.0),
                    ..Default::default()
                },
            ],
            batcher: vec![
                ServeRow {
                    batch: 1,
                    workers: 1,
                    tract: serve(500.0, 1.0),
                    ort: serve(1000.0, 1.0),
                    ..Default::default()
                },
                ServeRow {
                    batch: 1,
                    workers: 2,
                    tract: serve(800.0, 1.0),
                    ..Default::default()
                },
                ServeRow {
                    batch: 8,
                    workers: 2,
                    tract: serve(2400.0, 7.9),
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        finish(&mut m);
        assert_eq!(m.model_call[0].tract_over_ort, Some(0.5));
        assert_eq!(m.model_call[1].tract_gain, Some(3.0));
        assert_eq!(m.model_call[1].ort_gain, Some(1.5));
        assert_eq!(m.batcher[2].tract_gain, Some(3.0));
        assert_eq!(m.batcher[2].ort_gain, None);
        assert_eq!(m.model_call[0].fixed_over_dynamic, None);
        assert!((m.model_call[1].fixed_over_dynamic.unwrap() - 1.1).abs() < 1e-9);
        let t = fixed_table(&m).unwrap();
        assert!(
            t.contains("| 8 | 3,000 | 3,300 | 1.10x | 0.333 / 0.667 | 0.303 / 0.606 |"),
            "{t}"
        );
        assert!(t.contains("| 1 | 1,000 | n/a | n/a |"), "{t}");
    }

    #[test]
    fn tables_show_unavailable_ort() {
        let m = HubModel {
            id: "acsf1-hub".into(),
            precision: "fp32".into(),
            channels: 1,
            window: 1460,
            classes: 10,
            ort_status: "unavailable".into(),
            model_call: vec![CallRow {
                batch: 1,
                tract: call(2000.0),
                tract_gain: Some(1.0),
                ..Default::default()
            }],
            batcher: vec![ServeRow {
                batch: 1,
                workers: 1,
                clients: 2,
                tract: serve(1500.0, 1.0),
                ..Default::default()
            }],
            ..Default::default()
        };
        let t = call_table(&m);
        assert!(
            t.contains(
                "| 1 | 2,000 | unavailable | n/a | 0.500 / 1.00 | unavailable | 1.00x | n/a |"
            ),
            "{t}"
        );
        let t = serve_table(&m, 1);
        assert!(
            t.contains("| 1 | 2 | 1,500 | unavailable | n/a | 2.50 / 12.3 | unavailable | 1.0 | unavailable |"),
            "{t}"
        );
        assert_eq!(
            serve_table(&m, 2).lines().count(),
            2,
            "no rows for 2 workers"
        );
        assert!(fixed_table(&m).is_none());
        assert_eq!(fmt_ms(163.0), "0.163");
        assert_eq!(fmt_ms(123_456.0), "123");
    }
}
