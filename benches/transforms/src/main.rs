//! Single-thread benchmark of the edge agent's WASM transform path
//! (`edge_agent::transform`: wasmtime with Cranelift, fuel metering on, as
//! the agent runs it) against the same transforms compiled natively.
//!
//! What it measures:
//!
//! 1. **Per-record cost** (ns/record) of `passthrough` (the machinery alone)
//!    and `window-features` (`{"window":100,"hop":100}`: one features
//!    record per 100 readings, an O(N²) DFT per channel) on 6-channel
//!    readings like BasicMotions', at several batch sizes (records per call).
//!    - *WASM*: `TransformInstance::call(&[Reading])`, exactly what a
//!      transform stage does per batch: encode the batch into guest memory,
//!      run `conveyor_transform` under fuel, decode and check every output
//!      back into a `Reading`.
//!    - *native*: the same transform crate linked as an rlib, run through
//!      `conveyor_transform_sdk::native::Runner::run_batch` (the loop the
//!      guest glue runs), with the host's work around it: the same encoding
//!      of the `Reading`s into an ABI batch (`wire::pad_to_8` +
//!      `wire::encode_into`, into a reused buffer as the host does) and the
//!      same decoding of outputs (`wire::decode`, `wire::check_finite`,
//!      interned stream names) back into `Reading`s. So both columns do
//!      Reading -> bytes -> transform -> bytes -> Reading, and the
//!      difference is the WASM boundary, Cranelift's code and fuel. (The
//!      native runner copies each output into its own `Vec` before we
//!      decode it, which the host does not: if anything, that favours WASM
//!      by an allocation per output record.)
//!    - *native direct* (pass-through only): `inputs.to_vec()`, the cost of
//!      the records themselves with no ABI at all. The features crate's
//!      window math is private, so there is no direct column for it.
//!
//!    Both sides keep one instance per (transform, batch size) for the whole
//!    run, as a stage does (window state carries across calls), and are fed
//!    the same reading sequence. The sides are measured in alternation:
//!    every repetition times each (transform, batch, side) for `--seconds`,
//!    one after the other, so all see the same machine state; the tables
//!    give medians over repetitions, and the ratio is the median of the
//!    per-repetition WASM/native ratios. Before timing, the outputs of the
//!    two sides are checked to be equal.
//!
//! 2. **Module start-up** for every `transforms/dist/*.wasm`: `engine.load`
//!    into an empty cache dir (check + Cranelift compile + cache write with
//!    fsync), `engine.load` again by a new `TransformEngine` on the warm
//!    cache (an agent restart), and `TransformInstance::new`
//!    (instantiate + `conveyor_init`). Medians over `--load-reps`.
//!
//! Markdown tables on stdout, progress on stderr, `--json FILE` for the raw
//! numbers. Timings are never asserted; the test only checks behaviour.

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use bench_stats::median;
use clap::Parser;
use conveyor_transform_sdk::native::Runner;
use conveyor_transform_sdk::{wire, Transform};
use edge_agent::sources::Reading;
use edge_agent::transform::codec::{self, StreamNames};
use edge_agent::transform::{Limits, TransformEngine, TransformInstance, TransformModule};
use serde_json::{json, Value};
use transform_features::WindowFeatures;
use transform_passthrough::Passthrough;

const FEATURES_CONFIG: &str = r#"{"window": 100, "hop": 100}"#;
/// Distinct readings generated; a multiple of every default batch size.
const READINGS: usize = 4096;

#[derive(Parser)]
#[command(
    name = "transform-bench",
    about = "WASM transforms (wasmtime, as the edge agent runs them) against the same transforms in native Rust"
)]
struct Cli {
    /// Timed seconds per (transform, batch size, side) per repetition.
    #[arg(long, default_value_t = 0.25)]
    seconds: f64,
    /// Repetitions; the tables show medians.
    #[arg(long, default_value_t = 9)]
    reps: usize,
    /// Records per call.
    #[arg(long, value_delimiter = ',', default_value = "1,16,256")]
    batch_sizes: Vec<usize>,
    /// Repetitions of the compile / cached-load / instantiate measurement.
    #[arg(long, default_value_t = 7)]
    load_reps: usize,
    /// Directory of the .wasm modules.
    #[arg(long, value_name = "DIR")]
    dist: Option<PathBuf>,
    /// Also write the results as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    ensure!(
        cli.reps > 0 && cli.load_reps > 0 && cli.seconds > 0.0,
        "nothing to measure"
    );
    ensure!(
        !cli.batch_sizes.contains(&0),
        "batch sizes must be at least 1"
    );
    let dist = cli.dist.clone().unwrap_or_else(default_dist);
    let machine = machine();
    eprintln!(
        "transform-bench: {machine}; modules from {}",
        dist.display()
    );
    let readings = readings(READINGS);

    eprintln!("transform-bench: checking that WASM and native outputs agree");
    check_agreement(&dist, &readings, &cli.batch_sizes)?;

    let throughput = bench_throughput(&cli, &dist, &readings)?;
    let loads = bench_loads(&dist, cli.load_reps)?;

    println!(
        "Machine: {machine}. Single thread; medians of {} repetitions of {} s per cell.\n",
        cli.reps, cli.seconds
    );
    print_throughput(&throughput);
    println!();
    print_loads(&loads, cli.load_reps);
    if let Some(path) = &cli.json {
        let doc = json!({
            "machine": machine, "reps": cli.reps, "seconds": cli.seconds,
            "load_reps": cli.load_reps, "throughput": throughput, "loads": loads,
        });
        std::fs::write(path, serde_json::to_vec_pretty(&doc)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn default_dist() -> PathBuf {
    let here = Path::new("transforms/dist");
    if here.is_dir() {
        return here.to_path_buf();
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../transforms/dist")
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cores} cores, {cpu}")
}

/// 6-channel readings like BasicMotions' (3-axis accelerometer and
/// gyroscope at 10 Hz): a few sines plus deterministic noise (xorshift).
fn readings(n: usize) -> Vec<Reading> {
    let stream: Arc<str> = Arc::from("basicmotions");
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut noise = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed >> 11) as f64 / (1u64 << 53) as f64 - 0.5
    };
    (0..n)
        .map(|i| {
            let t = i as f64 / 10.0;
            let values = (0..6)
                .map(|c| {
                    let f = 0.3 + 0.7 * c as f64;
                    (2.0 * std::f64::consts::PI * f * t).sin() * (1.0 + c as f64) + noise()
                })
                .collect();
            Reading {
                stream: stream.clone(),
                ts_us: 1_700_000_000_000_000 + i as i64 * 100_000,
                values,
                label: "walking".into(),
                ..Reading::default()
            }
        })
        .collect()
}

/// One way of running a transform on a batch of readings.
trait Side {
    /// Runs one batch; returns the outputs and the fuel used (0 natively).
    fn call(&mut self, inputs: &[Reading]) -> Result<(Vec<Reading>, u64)>;
}

struct Wasm(TransformInstance);

impl Side for Wasm {
    fn call(&mut self, inputs: &[Reading]) -> Result<(Vec<Reading>, u64)> {
        let out = self.0.call(inputs)?;
        ensure!(out.rejected.is_empty(), "rejected: {:?}", out.rejected);
        Ok((out.outputs, out.fuel_used))
    }
}

/// The native runner with the host's encode and decode around it.
struct Native<T> {
    runner: Runner<T>,
    buf: Vec<u8>,
    out: Vec<Vec<u8>>,
    failures: Vec<(usize, String)>,
    streams: StreamNames,
}

impl<T: Transform> Native<T> {
    fn new(config: &str) -> Result<Self> {
        Ok(Native {
            runner: Runner::init(config).map_err(anyhow::Error::msg)?,
            buf: Vec::new(),
            out: Vec::new(),
            failures: Vec::new(),
            streams: StreamNames::default(),
        })
    }
}

impl<T: Transform> Side for Native<T> {
    fn call(&mut self, inputs: &[Reading]) -> Result<(Vec<Reading>, u64)> {
        codec::encode_batch(inputs, &mut self.buf);
        self.out.clear();
        self.failures.clear();
        let (buf, out, failures) = (&self.buf, &mut self.out, &mut self.failures);
        self.runner
            .run_batch(buf, inputs.len(), out, failures)
            .map_err(anyhow::Error::msg)?;
        ensure!(self.failures.is_empty(), "rejected: {:?}", self.failures);
        let encoded = std::mem::take(&mut self.out);
        let mut outputs = Vec::with_capacity(encoded.len());
        for bytes in &encoded {
            let r = wire::decode(bytes).map_err(|e| anyhow::anyhow!("{e}"))?;
            wire::check_finite(&r).map_err(|e| anyhow::anyhow!("{e}"))?;
            outputs.push(self.streams.reading(&r));
        }
        self.out = encoded;
        Ok((outputs, 0))
    }
}

/// Pass-through with no ABI: the records are just cloned.
struct Direct;

impl Side for Direct {
    fn call(&mut self, inputs: &[Reading]) -> Result<(Vec<Reading>, u64)> {
        Ok((inputs.to_vec(), 0))
    }
}

/// The transforms measured: name, module file, config, native side.
struct Case {
    transform: &'static str,
    file: &'static str,
    config: &'static str,
    native: fn(&str) -> Result<Box<dyn Side>>,
    direct: bool,
}

fn cases() -> [Case; 2] {
    [
        Case {
            transform: "passthrough",
            file: "passthrough.wasm",
            config: "{}",
            native: |c| Ok(Box::new(Native::<Passthrough>::new(c)?) as Box<dyn Side>),
            direct: true,
        },
        Case {
            transform: "window-features",
            file: "window-features.wasm",
            config: FEATURES_CONFIG,
            native: |c| Ok(Box::new(Native::<WindowFeatures>::new(c)?) as Box<dyn Side>),
            direct: false,
        },
    ]
}

fn wasm_side(
    engine: &TransformEngine,
    module: &Arc<TransformModule>,
    config: &str,
) -> Result<Box<dyn Side>> {
    let instance = TransformInstance::new(engine, module.clone(), Limits::default(), config)?;
    Ok(Box::new(Wasm(instance)))
}

/// Feeds `records` readings (cycling) through fresh WASM and native sides
/// in batches of each size, and fails unless their outputs are equal.
fn check_agreement(dist: &Path, readings: &[Reading], batch_sizes: &[usize]) -> Result<()> {
    let engine = TransformEngine::new(None)?;
    for case in cases() {
        let module = Arc::new(engine.load(&dist.join(case.file))?);
        for &batch in batch_sizes {
            let mut wasm = wasm_side(&engine, &module, case.config)?;
            let mut native = (case.native)(case.config)?;
            let (mut got_wasm, mut got_native) = (Vec::new(), Vec::new());
            for chunk in readings.chunks(batch) {
                got_wasm.extend(wasm.call(chunk)?.0);
                got_native.extend(native.call(chunk)?.0);
            }
            ensure!(!got_wasm.is_empty(), "{} emitted nothing", case.transform);
            if got_wasm != got_native {
                let at = got_wasm.iter().zip(&got_native).position(|(a, b)| a != b);
                bail!(
                    "{} at batch {batch}: WASM and native outputs differ ({} vs {} records; first difference at {at:?})",
                    case.transform, got_wasm.len(), got_native.len()
                );
            }
            if case.direct {
                ensure!(
                    got_native == readings,
                    "{} does not re-emit its input",
                    case.transform
                );
            }
        }
    }
    Ok(())
}

/// A side fed a cycling window of the readings.
struct Fed {
    side: Box<dyn Side>,
    at: usize,
}

/// Calls `side` on consecutive batches for about `seconds`; returns
/// (ns per record, fuel per record).
fn time_side(r: &mut Fed, readings: &[Reading], batch: usize, seconds: f64) -> Result<(f64, f64)> {
    let check_every = (256 / batch).max(1);
    let budget = Duration::from_secs_f64(seconds);
    let (mut records, mut fuel) = (0u64, 0u64);
    let started = Instant::now();
    loop {
        for _ in 0..check_every {
            if r.at + batch > readings.len() {
                r.at = 0;
            }
            let (out, f) = r.side.call(&readings[r.at..r.at + batch])?;
            black_box(out);
            r.at += batch;
            records += batch as u64;
            fuel += f;
        }
        let elapsed = started.elapsed();
        if elapsed >= budget {
            return Ok((
                elapsed.as_nanos() as f64 / records as f64,
                fuel as f64 / records as f64,
            ));
        }
    }
}

fn bench_throughput(cli: &Cli, dist: &Path, readings: &[Reading]) -> Result<Vec<Value>> {
    let engine = TransformEngine::new(None)?;
    // (case index, batch, [wasm, native, direct?])
    let mut cells: Vec<(usize, usize, Vec<Fed>)> = Vec::new();
    for (i, case) in cases().iter().enumerate() {
        let module = Arc::new(engine.load(&dist.join(case.file))?);
        for &batch in &cli.batch_sizes {
            let mut sides = vec![
                Fed {
                    side: wasm_side(&engine, &module, case.config)?,
                    at: 0,
                },
                Fed {
                    side: (case.native)(case.config)?,
                    at: 0,
                },
            ];
            if case.direct {
                sides.push(Fed {
                    side: Box::new(Direct),
                    at: 0,
                });
            }
            cells.push((i, batch, sides));
        }
    }
    // Warm-up: one slice each.
    for (_, batch, sides) in &mut cells {
        for s in sides.iter_mut() {
            time_side(s, readings, *batch, cli.seconds.min(0.1))?;
        }
    }
    // samples[cell][side] = ns/record per rep; fuel per cell (WASM).
    let mut samples: Vec<Vec<Vec<f64>>> =
        cells.iter().map(|c| vec![Vec::new(); c.2.len()]).collect();
    let mut fuel: Vec<Vec<f64>> = vec![Vec::new(); cells.len()];
    for rep in 0..cli.reps {
        eprintln!(
            "transform-bench: throughput repetition {}/{}",
            rep + 1,
            cli.reps
        );
        for (c, (_, batch, sides)) in cells.iter_mut().enumerate() {
            // Alternate which side goes first.
            let n = sides.len();
            for k in 0..n {
                let s = if rep % 2 == 0 { k } else { n - 1 - k };
                let (ns, f) = time_side(&mut sides[s], readings, *batch, cli.seconds)?;
                samples[c][s].push(ns);
                if s == 0 {
                    fuel[c].push(f);
                }
            }
        }
    }
    let cases = cases();
    let mut rows = Vec::new();
    for (c, (i, batch, _)) in cells.iter().enumerate() {
        let s = &samples[c];
        let ratios: Vec<f64> = s[0].iter().zip(&s[1]).map(|(w, n)| w / n).collect();
        let (min_ratio, max_ratio) = ratios
            .iter()
            .fold((f64::MAX, 0f64), |(lo, hi), &r| (lo.min(r), hi.max(r)));
        rows.push(json!({
            "transform": cases[*i].transform,
            "batch": batch,
            "wasm_ns_per_record": median(&s[0]),
            "native_ns_per_record": median(&s[1]),
            "direct_ns_per_record": s.get(2).map(|d| median(d)),
            "ratio_wasm_native": median(&ratios),
            "ratio_min": min_ratio,
            "ratio_max": max_ratio,
            "wasm_fuel_per_record": median(&fuel[c]),
            "samples_ns": s,
        }));
    }
    Ok(rows)
}

fn config_for(file: &str) -> &'static str {
    match file {
        "window-features.wasm" => FEATURES_CONFIG,
        "threshold.wasm" => r#"{"channel": 0, "above": 0.0}"#,
        _ => "{}",
    }
}

fn bench_loads(dist: &Path, reps: usize) -> Result<Vec<Value>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dist)
        .with_context(|| format!("listing {}", dist.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "wasm"))
        .collect();
    files.sort();
    ensure!(!files.is_empty(), "no .wasm in {}", dist.display());
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    // per file: compile ms, cached ms, instantiate+init ms; cache file size
    let mut t: Vec<[Vec<f64>; 3]> = vec![Default::default(); files.len()];
    let mut cwasm = vec![0u64; files.len()];
    for rep in 0..reps {
        eprintln!("transform-bench: load repetition {}/{}", rep + 1, reps);
        for (f, file) in files.iter().enumerate() {
            let cache = tempfile::tempdir()?;
            let engine = TransformEngine::new(Some(cache.path().to_path_buf()))?;
            let started = Instant::now();
            let m = engine
                .load(file)
                .with_context(|| format!("loading {}", file.display()))?;
            t[f][0].push(ms(started.elapsed()));
            ensure!(
                !m.from_cache,
                "{}: compiled from an empty cache?",
                file.display()
            );
            drop((m, engine));
            // An agent restart: a new engine, the warm cache.
            let engine = TransformEngine::new(Some(cache.path().to_path_buf()))?;
            let started = Instant::now();
            let m = Arc::new(engine.load(file)?);
            t[f][1].push(ms(started.elapsed()));
            ensure!(
                m.from_cache,
                "{}: not loaded from the warm cache",
                file.display()
            );
            cwasm[f] = std::fs::read_dir(cache.path())?
                .filter_map(|e| e.ok()?.metadata().ok())
                .map(|m| m.len())
                .sum();
            let name = file.file_name().and_then(|n| n.to_str()).unwrap_or("");
            for _ in 0..5 {
                let started = Instant::now();
                let i = TransformInstance::new(
                    &engine,
                    m.clone(),
                    Limits::default(),
                    config_for(name),
                )?;
                t[f][2].push(ms(started.elapsed()));
                drop(i);
            }
        }
    }
    let mut rows = Vec::new();
    for (f, file) in files.iter().enumerate() {
        rows.push(json!({
            "module": file.file_name().map(|n| n.to_string_lossy().into_owned()),
            "wasm_bytes": std::fs::metadata(file)?.len(),
            "cache_file_bytes": cwasm[f],
            "compile_ms": median(&t[f][0]),
            "cached_load_ms": median(&t[f][1]),
            "instantiate_init_ms": median(&t[f][2]),
            "samples_ms": t[f],
        }));
    }
    Ok(rows)
}

fn num(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

fn print_throughput(rows: &[Value]) {
    println!("| transform | batch | WASM ns/record | native ns/record (Runner + codec) | WASM / native (min-max) | native direct ns/record | WASM fuel/record |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        let direct = match r["direct_ns_per_record"].as_f64() {
            Some(d) => format!("{d:.0}"),
            None => "n/a".into(),
        };
        println!(
            "| {} | {} | {:.0} | {:.0} | {:.2}x ({:.2}-{:.2}) | {} | {:.0} |",
            r["transform"].as_str().unwrap_or("?"),
            r["batch"],
            num(&r["wasm_ns_per_record"]),
            num(&r["native_ns_per_record"]),
            num(&r["ratio_wasm_native"]),
            num(&r["ratio_min"]),
            num(&r["ratio_max"]),
            direct,
            num(&r["wasm_fuel_per_record"]),
        );
    }
}

fn print_loads(rows: &[Value], reps: usize) {
    println!(
        "Module start-up, medians of {reps} (instantiate + init: of {}):\n",
        reps * 5
    );
    println!("| module | .wasm | compiled (cache file) | compile ms (empty cache) | cached load ms (new engine) | instantiate + init ms |");
    println!("|---|---:|---:|---:|---:|---:|");
    for r in rows {
        println!(
            "| {} | {:.1} KB | {:.1} KB | {:.1} | {:.2} | {:.3} |",
            r["module"].as_str().unwrap_or("?"),
            num(&r["wasm_bytes"]) / 1e3,
            num(&r["cache_file_bytes"]) / 1e3,
            num(&r["compile_ms"]),
            num(&r["cached_load_ms"]),
            num(&r["instantiate_init_ms"]),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// WASM and native agree on both transforms (300 readings: three
    /// features windows) at batch sizes 1, 16 and 256, and a tiny timed run
    /// of every side works. Behaviour only: no timing is asserted.
    #[test]
    fn wasm_and_native_agree_and_a_tiny_run_works() {
        // This checkout's, found at run time (decision 0035), not the one
        // the test binary may have been compiled in.
        let dist = Path::new(
            &std::env::var_os("CARGO_MANIFEST_DIR")
                .expect("run by cargo, which sets CARGO_MANIFEST_DIR"),
        )
        .join("../../transforms/dist");
        let readings = readings(512);
        check_agreement(&dist, &readings[..300], &[1, 16, 256]).unwrap();

        let cli = Cli::parse_from([
            "transform-bench",
            "--seconds",
            "0.001",
            "--reps",
            "1",
            "--batch-sizes",
            "1,16",
        ]);
        let rows = bench_throughput(&cli, &dist, &readings).unwrap();
        assert_eq!(rows.len(), 4);
        for r in &rows {
            assert!(num(&r["wasm_ns_per_record"]) > 0.0 && num(&r["native_ns_per_record"]) > 0.0);
        }
        assert!(num(&rows[0]["wasm_fuel_per_record"]) > 0.0);
    }
}
