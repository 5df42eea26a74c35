//! `edge-agent transform test`: runs a module over sample records and
//! shows what came out and which limits it hit. The tool a transform
//! author iterates with; it runs the very code the agent runs (the same
//! loader, limits, batching and failure handling), minus disabling.
//!
//! Input is JSON Lines, one record per line:
//! `{"stream": "pos", "ts_us": 1, "values": [1.0], "label": "", "payload": {...}}`
//! (every key optional; a payload that is not a string is written as
//! compact JSON). Output records go to stdout in the same format, the
//! report to stderr.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::chain::{FailurePolicy, Link, OnDisabled};
use super::instance::Limits;
use super::module::TransformEngine;
use crate::sources::Reading;

/// The options of `transform test`.
#[derive(Debug, Clone, clap::Args)]
pub struct TestArgs {
    /// The module (.wasm).
    #[arg(long)]
    pub wasm: PathBuf,
    /// Sample records, JSON Lines.
    #[arg(long)]
    pub input: PathBuf,
    /// The transform's config, a JSON object (as `config = {...}` in agent.toml).
    #[arg(long, default_value = "{}")]
    pub config: String,
    /// Records per call.
    #[arg(long, default_value_t = 256)]
    pub batch_size: usize,
    /// Fuel per record per call (about one unit per WASM instruction).
    #[arg(long, default_value_t = Limits::default().fuel_per_record)]
    pub fuel_per_record: u64,
    /// Linear memory the module may grow to, MiB.
    #[arg(long, default_value_t = (Limits::default().memory_bytes >> 20) as u32)]
    pub memory_limit_mb: u32,
    /// Bytes of output one call may emit.
    #[arg(long, default_value_t = Limits::default().max_output_bytes)]
    pub max_output_bytes: usize,
}

/// A record as the tool reads and prints it.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JsonRecord {
    #[serde(default = "default_stream")]
    pub stream: String,
    #[serde(default)]
    pub ts_us: i64,
    #[serde(default)]
    pub values: Vec<f64>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub label: String,
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub payload: Value,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub transforms: Vec<String>,
}

fn default_stream() -> String {
    "test".into()
}

impl JsonRecord {
    fn into_reading(self) -> Reading {
        let payload = match self.payload {
            Value::Null => Vec::new(),
            Value::String(s) => s.into_bytes(),
            other => other.to_string().into_bytes(),
        };
        Reading {
            stream: self.stream.into(),
            ts_us: self.ts_us,
            values: self.values,
            label: self.label,
            payload,
            ..Reading::default()
        }
    }

    fn from_reading(r: &Reading) -> Self {
        // A payload that is JSON is shown as JSON, else as text.
        let payload = if r.payload.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&r.payload)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&r.payload).into_owned()))
        };
        JsonRecord {
            stream: r.stream.to_string(),
            ts_us: r.ts_us,
            values: r.values.clone(),
            label: r.label.clone(),
            payload,
            transforms: r.transforms.iter().map(|t| t.to_string()).collect(),
        }
    }
}

/// Why the tool could not run at all.
#[derive(Debug, thiserror::Error)]
pub enum TestToolError {
    #[error("--wasm {0}")]
    Module(String),
    #[error("--input {path}: {message}")]
    Input { path: PathBuf, message: String },
    #[error("--config: {0}")]
    Config(String),
    #[error("--batch-size must be at least 1")]
    BatchSize,
}

/// What a run produced.
#[derive(Debug)]
pub struct TestReport {
    pub outputs: Vec<Reading>,
    /// Text for stderr.
    pub summary: String,
    /// Records the transform failed on (not rejections).
    pub failed: usize,
}

pub fn read_input(path: &Path) -> Result<Vec<Reading>, TestToolError> {
    let text = std::fs::read_to_string(path).map_err(|e| TestToolError::Input {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let mut records = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let r: JsonRecord = serde_json::from_str(line).map_err(|e| TestToolError::Input {
            path: path.to_path_buf(),
            message: format!("line {}: {e}", i + 1),
        })?;
        records.push(r.into_reading());
    }
    Ok(records)
}

pub fn run(args: &TestArgs) -> Result<TestReport, TestToolError> {
    if args.batch_size == 0 {
        return Err(TestToolError::BatchSize);
    }
    let config: Value =
        serde_json::from_str(&args.config).map_err(|e| TestToolError::Config(e.to_string()))?;
    if !config.is_object() {
        return Err(TestToolError::Config("must be a JSON object".into()));
    }
    let inputs = read_input(&args.input)?;
    let engine = TransformEngine::new(None).map_err(|e| TestToolError::Module(e.to_string()))?;
    let module = engine
        .load(&args.wasm)
        .map_err(|e| TestToolError::Module(format!("{}: {e}", args.wasm.display())))?;
    let limits = Limits {
        fuel_per_record: args.fuel_per_record,
        memory_bytes: (args.memory_limit_mb as usize) << 20,
        max_output_bytes: args.max_output_bytes,
    };
    let (meta, sha, compile) = (module.meta.tag(), module.sha256.clone(), module.load_time);
    let size = std::fs::metadata(&args.wasm).map(|m| m.len()).unwrap_or(0);
    let mut link = Link::new(&engine, Arc::new(module), limits, config.to_string())
        .map_err(|e| TestToolError::Config(e.message))?;
    // The tool never disables: the author wants to see every failure.
    let policy = FailurePolicy {
        max_consecutive_failures: u32::MAX,
        on_disabled: OnDisabled::Pass,
    };
    let started = std::time::Instant::now();
    let (mut outputs, mut dead) = (Vec::new(), Vec::new());
    let n_in = inputs.len();
    let mut rest = inputs.into_iter().peekable();
    while rest.peek().is_some() {
        let batch: Vec<Reading> = rest.by_ref().take(args.batch_size).collect();
        link.run(batch, policy, "transform-test", &mut outputs, &mut dead);
    }
    let elapsed = started.elapsed();
    let c = link.counters();
    let fuel = c.fuel_used.load(Ordering::Relaxed);
    let out_bytes: usize = outputs
        .iter()
        .map(|r| {
            conveyor_transform_sdk::wire::encoded_len(
                r.values.len(),
                r.stream.len(),
                r.label.len(),
                r.payload.len(),
            )
        })
        .sum();
    let failed = dead.iter().filter(|d| d.kind != "rejected").count();
    let rejected = dead.len() - failed;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "module   {meta}  ({} bytes, sha256 {}), compiled in {:.1} ms",
        size,
        &sha[..12],
        compile.as_secs_f64() * 1e3
    );
    let _ = writeln!(s, "config   {config}");
    let _ = writeln!(
        s,
        "records  {n_in} in, {} out, {rejected} rejected, {failed} failed  ({} calls, {:.1} ms)",
        outputs.len(),
        c.calls.load(Ordering::Relaxed),
        elapsed.as_secs_f64() * 1e3
    );
    let _ = writeln!(
        s,
        "fuel     {fuel} in all, {:.0} per record (limit {} per record)",
        fuel as f64 / n_in.max(1) as f64,
        limits.fuel_per_record
    );
    let _ = writeln!(
        s,
        "memory   {:.2} MiB peak (limit {} MiB)",
        link.peak_memory() as f64 / (1 << 20) as f64,
        limits.memory_bytes >> 20
    );
    let _ = writeln!(
        s,
        "output   {out_bytes} bytes (limit {} per call)",
        limits.max_output_bytes
    );
    let mut hit: Vec<&str> = dead
        .iter()
        .filter_map(|d| match d.kind.as_str() {
            "out_of_fuel" => Some("fuel"),
            "memory_limit" => Some("memory"),
            "output_cap" => Some("output"),
            _ => None,
        })
        .collect();
    hit.dedup();
    let _ = writeln!(
        s,
        "limits   {}",
        if hit.is_empty() {
            "none hit".to_string()
        } else {
            format!("hit: {}", hit.join(", "))
        }
    );
    for d in &dead {
        let _ = writeln!(
            s,
            "{:<8} record (stream {}, ts_us {}): {}",
            if d.kind == "rejected" {
                "rejected"
            } else {
                "failed"
            },
            d.record.stream,
            d.record.source_ts_us,
            if d.kind == "rejected" {
                d.reason.clone()
            } else {
                format!("{}: {}", d.kind, d.reason)
            }
        );
    }
    Ok(TestReport {
        outputs,
        summary: s,
        failed,
    })
}

/// Prints a run's outputs as JSON Lines.
pub fn print_outputs(outputs: &[Reading]) {
    use std::io::Write;
    let stdout = std::io::stdout();
    let mut lock = stdout.lock();
    for r in outputs {
        let line = serde_json::to_string(&JsonRecord::from_reading(r)).expect("serialises");
        if writeln!(lock, "{line}").is_err() {
            return;
        }
    }
}
