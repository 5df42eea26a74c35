//! The cascade report: what the edge-to-hub cascade buys, measured on the
//! real held-out test data.
//!
//! For each data set (`models/<dataset>/edge.int8.json` and
//! `hub.fp32.json`, test split `<data-dir>/<Dataset>/<Dataset>_TEST.ts`)
//! three ways of deploying are compared, on the same test windows:
//!
//! * **edge-only**: the agent's int8 model decides every window; only its
//!   prediction records travel.
//! * **hub-only**: an agent without edge inference uploads every raw
//!   reading as its own record, and the hub's fp32 model decides every
//!   window.
//! * **cascade** at each threshold: the edge model decides the windows it
//!   is confident about (`confidence >= threshold`); the others are
//!   escalated (the prediction record carries the raw window) and the hub
//!   model's answer is final. A threshold of 0 escalates nothing; one
//!   above 1 escalates everything.
//!
//! Each model runs **once** per window; every row is derived from those
//! answers, so the cascade rows are exactly what an agent with that
//! `escalate_below` would produce (for the same model answers).
//!
//! **Accuracy** is the final answer's label against the window's ground
//! truth (the label of the `.ts` example).
//!
//! **Uplink bytes** are the protobuf bytes of the records an agent would
//! put in its uplink batches, built as the agent builds them (the inference
//! stage's prediction record; `Reading::into_record` for raw readings):
//!
//! * each record is counted as it sits inside a `RecordBatch`: its
//!   `prost::Message::encoded_len()` **plus** the 1-byte field key and the
//!   length prefix of the repeated `records` field (1 to 3 bytes);
//! * the batch header (version, device id, `sent_at_us`: about 20-30
//!   bytes per batch, shared by up to `batch_max_records` records) and the
//!   MQTT/TCP/TLS framing are left out: they depend on the batching, not
//!   on the strategy;
//! * records carry what the agent's records carry: the stream name
//!   (`motion` for BasicMotions and `power` for ACSF1, as in the demo; the
//!   predictions go on `<stream>.predictions`), a seq, a timestamp, and
//!   the ground-truth label (a replayed `.ts` reading carries its label,
//!   and a prediction record carries its window's); a deployed sensor
//!   without labels would send a few bytes less per record;
//! * seqs count from 1, one per record the agent logs (a reading each for
//!   hub-only, a prediction record per window otherwise), and timestamps
//!   are microseconds since the epoch from 1.7e15 (November 2023), one
//!   reading every 10 ms (100 Hz), so the varints have realistic sizes:
//!   such a timestamp takes 8 bytes for any sampling rate, and the seqs
//!   grow to 2 bytes (BasicMotions' 4,000 readings) or 3 (ACSF1's 146,000).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, ensure, Context};
use conveyor_model::OnnxModel;
use conveyor_shared::{Escalation, ModelMetadata, Prediction, Record};
use prost::Message;
use serde::{Deserialize, Serialize};

use super::split::{test_split_path, test_windows, TestWindow};
use crate::inference::backend::{self, Device};
use crate::inference::service::{normalise, prediction};

/// The data sets the report covers: directories of the models directory.
pub const DATASETS: [&str; 2] = ["basicmotions", "acsf1"];

/// The thresholds reported by default.
pub const DEFAULT_THRESHOLDS: [f32; 6] = [0.5, 0.7, 0.8, 0.9, 0.95, 0.99];

/// The first reading's timestamp: µs since the epoch (November 2023).
pub const FIRST_TS_US: i64 = 1_700_000_000_000_000;

/// Time between two readings: 10 ms (100 Hz).
pub const READING_STEP_US: i64 = 10_000;

/// The key of `RecordBatch.records` (field 4, length-delimited): 1 byte.
const RECORDS_KEY_LEN: usize = 1;

/// `cloud-hub cascade-report`: accuracy and uplink bytes of edge-only,
/// hub-only and the edge-to-hub cascade on the held-out test data.
#[derive(Debug, Clone, clap::Args)]
pub struct ReportArgs {
    /// Directory holding `<dataset>/edge.int8.json` and `hub.fp32.json`
    /// [default: the repository's `models`, else `./models`].
    #[arg(long)]
    pub models_dir: Option<PathBuf>,
    /// Directory holding `<Dataset>/<Dataset>_TEST.ts` [default:
    /// `<models-dir>/data`].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Cascade thresholds (edge confidence below which a window is
    /// escalated), comma-separated; above 1 escalates every window.
    #[arg(
        long,
        value_delimiter = ',',
        default_values_t = DEFAULT_THRESHOLDS
    )]
    pub thresholds: Vec<f32>,
    /// Print the report as JSON on stdout instead of the Markdown table.
    // (`run` only returns the report; the command prints it.)
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CascadeReport {
    pub datasets: Vec<DatasetReport>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetReport {
    /// The data set's name (`BasicMotions`, `ACSF1`).
    pub dataset: String,
    /// `id@version` of the edge model.
    pub edge_model: String,
    /// `id@version` of the hub model.
    pub hub_model: String,
    /// Test windows evaluated.
    pub windows: usize,
    /// edge-only, hub-only, then the cascade at each threshold asked for.
    pub rows: Vec<ReportRow>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReportRow {
    /// `edge-only`, `hub-only` or `cascade`.
    pub strategy: String,
    /// The cascade's threshold (none for edge-only and hub-only).
    pub threshold: Option<f32>,
    /// Windows the hub model decided: the escalated ones for the cascade,
    /// every window for hub-only, none for edge-only.
    pub escalated: usize,
    /// Share of windows whose final label is the ground truth (0..=1).
    pub accuracy: f64,
    /// Protobuf bytes of every record sent (see the module doc).
    pub uplink_bytes: u64,
    pub bytes_per_window: f64,
    /// `uplink_bytes` over hub-only's (1.0 = as much as sending every
    /// reading).
    pub bytes_vs_hub_only: f64,
}

impl ReportRow {
    /// `escalated` as a share of the windows (0..=1).
    pub fn escalated_share(&self, windows: usize) -> f64 {
        if windows == 0 {
            0.0
        } else {
            self.escalated as f64 / windows as f64
        }
    }
}

/// Bytes a record adds to a `RecordBatch`: its encoding, its length
/// prefix and the field key.
pub fn batched_len(record: &Record) -> usize {
    let body = record.encoded_len();
    RECORDS_KEY_LEN + prost::length_delimiter_len(body) + body
}

/// The stream an agent's source gives the data set's readings (the demo's).
fn stream_name(dataset_dir: &str) -> &str {
    match dataset_dir {
        "basicmotions" => "motion",
        "acsf1" => "power",
        other => other,
    }
}

fn reading_ts(index: usize) -> i64 {
    FIRST_TS_US + index as i64 * READING_STEP_US
}

/// The prediction record the inference stage emits for window `index`
/// (`seq` as the agent's log would assign it: windows are its only records).
fn prediction_record(
    stream: &str,
    index: usize,
    window: &TestWindow,
    meta: &ModelMetadata,
    edge: &Prediction,
    escalation: Option<Escalation>,
) -> Record {
    let first = index * meta.window;
    Record {
        stream: format!("{stream}.predictions"),
        seq: index as u64 + 1,
        source_ts_us: reading_ts(first + meta.window - 1),
        values: Vec::new(),
        label: window.label.clone(),
        prediction: Some(Prediction {
            window_start_us: reading_ts(first),
            window_len: meta.window as u32,
            ..edge.clone()
        }),
        escalation,
        ..Record::default()
    }
}

/// Uplink bytes of window `index`'s raw readings, one record each, as an
/// agent without inference sends them (`seq` = reading number).
fn raw_readings_bytes(
    stream: &str,
    index: usize,
    window: &TestWindow,
    meta: &ModelMetadata,
) -> u64 {
    window
        .values
        .chunks_exact(meta.channels)
        .enumerate()
        .map(|(t, values)| {
            let n = index * meta.window + t;
            let record = Record {
                stream: stream.to_string(),
                seq: n as u64 + 1,
                source_ts_us: reading_ts(n),
                values: values.iter().map(|v| f64::from(*v)).collect(),
                label: window.label.clone(),
                ..Record::default()
            };
            batched_len(&record) as u64
        })
        .sum()
}

/// What both models said about one window, and what each way of sending
/// it costs.
struct WindowOutcome {
    edge_confidence: f32,
    edge_correct: bool,
    hub_correct: bool,
    /// The prediction record without an escalation.
    edge_bytes: u64,
    /// The prediction record carrying the window, per threshold asked for
    /// (the record holds the threshold: a float, the same size for any
    /// non-zero value).
    escalated_bytes: Vec<u64>,
    hub_only_bytes: u64,
}

fn require_metadata(path: &Path) -> anyhow::Result<()> {
    ensure!(
        path.is_file(),
        "model metadata {} not found (is --models-dir the repository's models directory?)",
        path.display()
    );
    Ok(())
}

fn evaluate_dataset(
    models_dir: &Path,
    data_dir: &Path,
    dataset_dir: &str,
    thresholds: &[f32],
) -> anyhow::Result<DatasetReport> {
    let edge_path = models_dir.join(dataset_dir).join("edge.int8.json");
    let hub_path = models_dir.join(dataset_dir).join("hub.fp32.json");
    require_metadata(&edge_path)?;
    require_metadata(&hub_path)?;

    let edge_model = Arc::new(
        OnnxModel::load(&edge_path, 1)
            .with_context(|| format!("loading the edge model {}", edge_path.display()))?,
    );
    let edge_meta = edge_model.meta().clone();
    let mut edge_runner = edge_model
        .runner()
        .with_context(|| format!("preparing the edge model {}", edge_path.display()))?;
    let (hub_meta, hub_backend) = backend::load(&hub_path, Device::Cpu)
        .with_context(|| format!("loading the hub model {}", hub_path.display()))?;
    ensure!(
        (hub_meta.channels, hub_meta.window) == (edge_meta.channels, edge_meta.window),
        "{}: the hub model takes {} channels x {} readings, the edge model {} x {}",
        dataset_dir,
        hub_meta.channels,
        hub_meta.window,
        edge_meta.channels,
        edge_meta.window
    );

    let split = test_split_path(data_dir, &edge_meta);
    ensure!(
        split.is_file(),
        "test split {} not found (is --data-dir the repository's models/data?)",
        split.display()
    );
    let windows = test_windows(data_dir, &edge_meta)
        .with_context(|| format!("reading the test split {}", split.display()))?;
    ensure!(
        !windows.is_empty(),
        "{} holds no complete window",
        split.display()
    );

    // The hub model: every window in one dynamic batch.
    let n = windows.len();
    let hub_input: Vec<f32> = windows
        .iter()
        .flat_map(|w| normalise(&hub_meta, &w.values))
        .collect();
    let hub_probs = hub_backend
        .runner()
        .and_then(|mut r| r.run(n, hub_input))
        .with_context(|| format!("running the hub model {}", hub_meta.id))?;
    let classes = hub_meta.labels.len();
    ensure!(
        hub_probs.len() == n * classes,
        "the hub model {} returned {} values for {n} windows of {classes} classes",
        hub_meta.id,
        hub_probs.len()
    );

    let stream = stream_name(dataset_dir);
    let mut outcomes = Vec::with_capacity(n);
    for (i, (w, hub_row)) in windows.iter().zip(hub_probs.chunks(classes)).enumerate() {
        let scores = edge_runner
            .classify(normalise(&edge_meta, &w.values))
            .with_context(|| format!("running the edge model {} on window {i}", edge_meta.id))?;
        let edge = scores.into_prediction(&edge_meta);
        let hub = prediction(&hub_meta, hub_row.to_vec());
        let record = |escalation| prediction_record(stream, i, w, &edge_meta, &edge, escalation);
        let escalated_bytes = thresholds
            .iter()
            .map(|&threshold| {
                batched_len(&record(Some(Escalation {
                    hub_model: hub_meta.id.clone(),
                    threshold,
                    channels: edge_meta.channels as u32,
                    window: w.values.clone(),
                    sampled: false,
                }))) as u64
            })
            .collect();
        outcomes.push(WindowOutcome {
            edge_confidence: edge.confidence,
            edge_correct: edge.label == w.label,
            hub_correct: hub.label == w.label,
            edge_bytes: batched_len(&record(None)) as u64,
            escalated_bytes,
            hub_only_bytes: raw_readings_bytes(stream, i, w, &edge_meta),
        });
    }

    let hub_only_bytes: u64 = outcomes.iter().map(|o| o.hub_only_bytes).sum();
    let row =
        |strategy: &str, threshold: Option<f32>, escalated: usize, correct: usize, bytes: u64| {
            ReportRow {
                strategy: strategy.to_string(),
                threshold,
                escalated,
                accuracy: correct as f64 / n as f64,
                uplink_bytes: bytes,
                bytes_per_window: bytes as f64 / n as f64,
                bytes_vs_hub_only: bytes as f64 / hub_only_bytes as f64,
            }
        };
    let mut rows = vec![
        row(
            "edge-only",
            None,
            0,
            outcomes.iter().filter(|o| o.edge_correct).count(),
            outcomes.iter().map(|o| o.edge_bytes).sum(),
        ),
        row(
            "hub-only",
            None,
            n,
            outcomes.iter().filter(|o| o.hub_correct).count(),
            hub_only_bytes,
        ),
    ];
    for (k, &threshold) in thresholds.iter().enumerate() {
        let (mut escalated, mut correct, mut bytes) = (0, 0, 0);
        for o in &outcomes {
            // The inference stage's test: escalate below the threshold.
            if o.edge_confidence < threshold {
                escalated += 1;
                correct += usize::from(o.hub_correct);
                bytes += o.escalated_bytes[k];
            } else {
                correct += usize::from(o.edge_correct);
                bytes += o.edge_bytes;
            }
        }
        rows.push(row("cascade", Some(threshold), escalated, correct, bytes));
    }
    Ok(DatasetReport {
        dataset: edge_meta.dataset.clone(),
        edge_model: format!("{}@{}", edge_meta.id, edge_meta.version),
        hub_model: format!("{}@{}", hub_meta.id, hub_meta.version),
        windows: n,
        rows,
    })
}

/// Runs the edge and hub models of every data set in [`DATASETS`] on its
/// test split and derives edge-only, hub-only and one cascade row per
/// threshold (in the order given).
pub fn evaluate(
    models_dir: &Path,
    data_dir: &Path,
    thresholds: &[f32],
) -> anyhow::Result<CascadeReport> {
    if let Some(bad) = thresholds.iter().find(|t| !t.is_finite()) {
        bail!("threshold {bad} is not a number; thresholds are edge confidences, e.g. 0.9");
    }
    let datasets = DATASETS
        .iter()
        .map(|d| {
            evaluate_dataset(models_dir, data_dir, d, thresholds)
                .with_context(|| format!("cascade report for {d}"))
        })
        .collect::<anyhow::Result<_>>()?;
    Ok(CascadeReport { datasets })
}

/// The models directory when `--models-dir` is not given: the repository's
/// (beside this crate) if it exists, else `./models`.
pub fn default_models_dir() -> PathBuf {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models");
    if repo.is_dir() {
        repo
    } else {
        PathBuf::from("models")
    }
}

/// Resolves the directories and evaluates. Prints nothing: the caller
/// prints the report ([`print_table`], or JSON when `args.json`).
pub fn run(args: &ReportArgs) -> anyhow::Result<CascadeReport> {
    let models_dir = args.models_dir.clone().unwrap_or_else(default_models_dir);
    if !models_dir.is_dir() {
        bail!(
            "models directory {} not found; pass --models-dir pointing at the repository's models",
            models_dir.display()
        );
    }
    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| models_dir.join("data"));
    if !data_dir.is_dir() {
        bail!(
            "data directory {} not found; pass --data-dir pointing at the repository's models/data",
            data_dir.display()
        );
    }
    evaluate(&models_dir, &data_dir, &args.thresholds)
}

fn percent(share: f64) -> String {
    if share == 0.0 {
        "0%".to_string()
    } else if share >= 0.1 {
        format!("{:.1}%", share * 100.0)
    } else {
        format!("{:.2}%", share * 100.0)
    }
}

/// The report as Markdown: a heading and a table per data set.
pub fn render_table(report: &CascadeReport) -> String {
    let mut out = String::new();
    for d in &report.datasets {
        let _ = writeln!(
            out,
            "### {}: edge {}, hub {}, {} test windows\n",
            d.dataset, d.edge_model, d.hub_model, d.windows
        );
        out.push_str(
            "| strategy | threshold | escalated | accuracy | uplink bytes | bytes/window | vs hub-only |\n\
             |---|---:|---:|---:|---:|---:|---:|\n",
        );
        for r in &d.rows {
            let threshold = r
                .threshold
                .map_or_else(|| "-".to_string(), |t| t.to_string());
            let _ = writeln!(
                out,
                "| {} | {} | {} ({}) | {} | {} | {:.1} | {} |",
                r.strategy,
                threshold,
                r.escalated,
                percent(r.escalated_share(d.windows)),
                percent(r.accuracy),
                r.uplink_bytes,
                r.bytes_per_window,
                percent(r.bytes_vs_hub_only),
            );
        }
        out.push('\n');
    }
    out
}

/// Prints [`render_table`] on stdout.
pub fn print_table(report: &CascadeReport) {
    print!("{}", render_table(report));
}
