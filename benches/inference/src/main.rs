//! Side-by-side, single-thread inference benchmark of Conveyor's models:
//! tract (the engine the edge agent runs, through the agent's own loader)
//! against ONNX Runtime (loaded at run time from `libonnxruntime.so`).
//!
//! For every model: load both engines (timed), check that they agree on
//! the model's reference windows, then time single-window calls in
//! alternating rounds and report p50/p99 latency, windows/s and the
//! tract/ORT ratio. `profile` looks inside tract: per-op time and loader
//! variants (see `profile.rs`).

mod bench;
mod engines;
mod hub;
mod profile;
mod qdq;
mod reference;
mod report;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use conveyor_shared::ModelMetadata;

use crate::engines::{Engine, OrtEngine, OrtRuntime, TractEngine};
use crate::report::{Agreement, EngineReport, Machine, ModelReport, OrtStatus, Report, Settings};

/// The model files benchmarked by default, in each `models/<dataset>/`.
const DEFAULT_MODELS: [&str; 3] = ["edge.int8.json", "edge.fp32.json", "hub.fp32.json"];

#[derive(Parser)]
#[command(
    name = "inference-bench",
    about = "Single-thread inference latency: tract (Conveyor's engine) vs ONNX Runtime, on Conveyor's models",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    bench: BenchArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Benchmark tract against ONNX Runtime (the default).
    Bench(BenchArgs),
    /// Where tract spends its time: per-op profile and loader variants
    /// (tract only).
    Profile(profile::ProfileArgs),
    /// Hub inference at batch sizes 1, 8, 32, 128: one model call of B
    /// windows, and the hub's dynamic batcher under a closed loop of
    /// clients; tract against ONNX Runtime in the same run.
    Hub(hub::HubArgs),
}

#[derive(Args, Clone)]
pub struct ModelArgs {
    /// Model metadata files (`models/<dataset>/<model>.json`). Default: every
    /// `edge.int8.json`, `edge.fp32.json` and `hub.fp32.json` under --models-dir.
    #[arg(value_name = "METADATA")]
    pub metadata: Vec<PathBuf>,
    /// Where to look for the default models.
    #[arg(long, value_name = "DIR", default_value = "models")]
    pub models_dir: PathBuf,
}

#[derive(Args, Clone)]
struct BenchArgs {
    #[command(flatten)]
    models: ModelArgs,
    /// Timed seconds per engine per model (split over the rounds).
    #[arg(long, default_value_t = 2.5)]
    seconds: f64,
    /// Rounds per model; the engines alternate within each round and
    /// swap order between rounds.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Warm-up seconds per engine per model (also sizes the rounds).
    #[arg(long, default_value_t = 0.3)]
    warmup: f64,
    /// libonnxruntime.so to load (e.g. from the onnxruntime PyPI wheel's
    /// onnxruntime/capi/). Without it, the ORT columns say "unavailable".
    #[arg(long, value_name = "PATH", env = "ORT_DYLIB_PATH")]
    ort_lib: Option<PathBuf>,
    /// Also write the results as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Also measure tract without the loader's fused quantize (each
    /// QuantizeLinear->DequantizeLinear pair as tract runs it, the loader
    /// before issue 19), interleaved with the others: the baseline of the
    /// fusion, measured in the same rounds.
    #[arg(long)]
    unfused: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.command {
        Some(Command::Profile(args)) => profile::run(&args),
        Some(Command::Hub(args)) => hub::run(&args),
        Some(Command::Bench(args)) => run_bench(&args),
        None => run_bench(&cli.bench),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("inference-bench: {}", error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// The metadata files to measure: those given, or the default ones that
/// exist under `--models-dir` (sorted by dataset).
pub fn model_paths(args: &ModelArgs) -> Result<Vec<PathBuf>> {
    model_paths_named(args, &DEFAULT_MODELS)
}

/// Like [`model_paths`], with other default file names.
pub fn model_paths_named(args: &ModelArgs, names: &[&str]) -> Result<Vec<PathBuf>> {
    if !args.metadata.is_empty() {
        return Ok(args.metadata.clone());
    }
    let mut dir = args.models_dir.clone();
    if !dir.is_dir() && dir == Path::new("models") {
        // run from elsewhere than the repository root
        dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models");
    }
    let found = discover_named(&dir, names)?;
    if found.is_empty() {
        anyhow::bail!(
            "no models: none of {} in {}/*/",
            names.join(", "),
            dir.display()
        );
    }
    Ok(found)
}

/// `dir/*/{edge.int8,edge.fp32,hub.fp32}.json` that exist.
pub fn discover(dir: &Path) -> Result<Vec<PathBuf>> {
    discover_named(dir, &DEFAULT_MODELS)
}

/// `dir/*/<name>` for each of `names` that exist, by dataset.
pub fn discover_named(dir: &Path, names: &[&str]) -> Result<Vec<PathBuf>> {
    let mut datasets: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    datasets.sort();
    Ok(datasets
        .iter()
        .flat_map(|d| names.iter().map(move |m| d.join(m)))
        .filter(|p| p.is_file())
        .collect())
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// ONNX Runtime from `lib` (if given), and what to report about it; the
/// status line goes to stderr. Never fails: without ORT, tract is still
/// measured.
pub fn load_ort(lib: Option<&Path>) -> (Option<OrtRuntime>, OrtStatus) {
    let (ort_rt, ort_status) = match lib {
        None => (
            None,
            OrtStatus {
                available: false,
                version: None,
                library: None,
                reason: Some("no library given (--ort-lib or ORT_DYLIB_PATH)".into()),
            },
        ),
        Some(lib) => match OrtRuntime::load(lib) {
            Ok(rt) => {
                let s = OrtStatus {
                    available: true,
                    version: Some(rt.version.clone()),
                    library: Some(lib.display().to_string()),
                    reason: None,
                };
                (Some(rt), s)
            }
            Err(e) => (
                None,
                OrtStatus {
                    available: false,
                    version: None,
                    library: Some(lib.display().to_string()),
                    reason: Some(error_chain(&e)),
                },
            ),
        },
    };
    match &ort_status.reason {
        None => eprintln!(
            "ONNX Runtime {} from {}",
            ort_status.version.as_deref().unwrap_or("?"),
            ort_status.library.as_deref().unwrap_or("?")
        ),
        Some(r) => eprintln!("ONNX Runtime unavailable: {r}; measuring tract only"),
    }
    (ort_rt, ort_status)
}

/// `ONNX Runtime 1.32.0 (/path)`, or why it is unavailable.
pub fn ort_line(ort: &OrtStatus) -> String {
    match &ort.reason {
        None => format!(
            "ONNX Runtime {} ({})",
            ort.version.as_deref().unwrap_or("?"),
            ort.library.as_deref().unwrap_or("?")
        ),
        Some(r) => format!("ONNX Runtime unavailable: {r}"),
    }
}

fn run_bench(args: &BenchArgs) -> Result<()> {
    let paths = model_paths(&args.models)?;
    let plan = bench::Plan {
        seconds: args.seconds,
        rounds: args.rounds.max(1),
        warmup_seconds: args.warmup,
    };

    let (ort_rt, ort_status) = load_ort(args.ort_lib.as_deref());

    let mut report = Report {
        machine: Machine {
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu_model: cpu_model(),
            threads_per_engine: 1,
        },
        settings: Settings {
            seconds_per_engine: plan.seconds,
            rounds: plan.rounds,
            warmup_seconds: plan.warmup_seconds,
            input_clone: "each call's input Vec is cloned from the prepared reference window before the clock starts; \
                          the timed region is the engine's run(Vec<f32>) -> Vec<f32> (wrap input, run, copy output out)",
            ort_session: "intra-op 1, inter-op 1, sequential, GraphOptimizationLevel::All (ORT_ENABLE_ALL), CPU EP",
            tract_loader: "conveyor_model::OnnxModel::load(metadata, batch 1) + runner(); ModelRunner::run",
        },
        ort: ort_status,
        models: Vec::new(),
    };

    for path in &paths {
        eprintln!("== {}", path.display());
        let m = bench_model(path, ort_rt.as_ref(), &plan, args.unfused);
        if let Some(e) = &m.error {
            eprintln!("   error: {e}");
        }
        report.models.push(m);
    }

    let ort_line = ort_line(&report.ort);
    println!(
        "Single-thread latency per window, batch 1; {} cpus ({}); {}; {:.1} s per engine per model in {} alternating rounds; p50/p99 over all timed calls, windows/s = 1/mean.\n",
        report.machine.cpus, report.machine.cpu_model, ort_line, plan.seconds, plan.rounds
    );
    print!("{}", report::latency_table(&report));
    println!();
    print!("{}", report::load_table(&report));
    if let Some(t) = report::unfused_table(&report) {
        println!("\nThe loader's fused quantize (crates/model/src/fake_quant.rs) against tract's unfused plan, measured in the same rounds:\n");
        print!("{t}");
    }

    if let Some(file) = &args.json {
        let text = serde_json::to_string_pretty(&report)?;
        std::fs::write(file, text + "\n").with_context(|| format!("writing {}", file.display()))?;
        eprintln!("wrote {}", file.display());
    }
    Ok(())
}

/// Everything for one model; failures land in the report, never abort the
/// run.
fn bench_model(
    path: &Path,
    ort_rt: Option<&OrtRuntime>,
    plan: &bench::Plan,
    unfused: bool,
) -> ModelReport {
    let mut m = ModelReport {
        metadata: path.display().to_string(),
        ..Default::default()
    };
    if let Err(e) = bench_model_into(path, ort_rt, plan, unfused, &mut m) {
        m.error = Some(error_chain(&e));
    }
    m
}

/// `outer: cause: cause`, without the causes an outer message already
/// quotes (our error types put their source in their own message).
pub fn error_chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
    }
    out
}

fn bench_model_into(
    path: &Path,
    ort_rt: Option<&OrtRuntime>,
    plan: &bench::Plan,
    unfused: bool,
    m: &mut ModelReport,
) -> Result<()> {
    let meta = ModelMetadata::load(path)?;
    m.id = meta.id.clone();
    m.version = meta.version.clone();
    m.dataset = meta.dataset.clone();
    m.precision = meta.precision.clone();
    m.channels = meta.channels;
    m.window = meta.window;
    m.classes = meta.labels.len();
    let onnx = meta.model_path(path);
    m.onnx_bytes = std::fs::metadata(&onnx).map(|f| f.len()).unwrap_or(0);

    let (ref_path, cases) = reference::load(path, &meta.model_file, meta.channels * meta.window)?;
    m.reference = Some(ref_path.display().to_string());
    m.reference_cases = cases.len();

    let (mut tract, took) = TractEngine::load(path).context("tract")?;
    m.tract.status = "ok".into();
    m.tract.load_ms = Some(ms(took));
    eprintln!("   tract: loaded in {:.1} ms", ms(took));

    let mut ort = match ort_rt {
        None => {
            m.ort.status = "unavailable".into();
            None
        }
        Some(rt) => match OrtEngine::load(rt, path, &meta) {
            Ok((e, took)) => {
                m.ort.status = "ok".into();
                m.ort.load_ms = Some(ms(took));
                eprintln!("   ORT: session in {:.1} ms", ms(took));
                Some(e)
            }
            Err(e) => {
                eprintln!("   ORT: {}", error_chain(&e));
                m.ort.status = format!("error: {}", error_chain(&e));
                None
            }
        },
    };

    let mut prop = if unfused {
        let (e, took) = profile::unfused_engine(path).context("tract, unfused plan")?;
        eprintln!("   tract (unfused plan): loaded in {:.1} ms", ms(took));
        m.unfused = Some(EngineReport {
            status: "ok".into(),
            load_ms: Some(ms(took)),
            ..Default::default()
        });
        Some(e)
    } else {
        None
    };

    // Sanity check on the real windows: do the engines agree?
    let mut agree = Agreement {
        cases: cases.len(),
        ..Default::default()
    };
    let mut same = 0usize;
    let worst = |slot: &mut Option<f32>, d: Option<f32>| {
        if let Some(d) = d {
            *slot = Some(slot.map_or(d, |s| s.max(d)));
        }
    };
    for c in &cases {
        let t = tract
            .run(c.input.clone())
            .context("tract on a reference window")?;
        worst(
            &mut agree.tract_vs_reference,
            reference::max_abs_diff(&t, &c.output),
        );
        if let Some(o) = ort.as_mut() {
            let r = o
                .run(c.input.clone())
                .context("ORT on a reference window")?;
            worst(
                &mut agree.ort_vs_reference,
                reference::max_abs_diff(&r, &c.output),
            );
            worst(&mut agree.tract_vs_ort, reference::max_abs_diff(&t, &r));
            if reference::argmax(&t) == reference::argmax(&r) {
                same += 1;
            }
        }
        if let Some(p) = prop.as_mut() {
            let r = p
                .run(c.input.clone())
                .context("unfused plan on a reference window")?;
            worst(&mut agree.unfused_vs_tract, reference::max_abs_diff(&t, &r));
        }
    }
    if ort.is_some() {
        agree.same_class = Some(same);
    }
    eprintln!(
        "   agreement on {} reference windows: max |tract - ORT| = {}, same top class {}, max |tract - recorded| = {}",
        cases.len(),
        agree.tract_vs_ort.map_or("n/a".into(), |d| format!("{d:.2e}")),
        agree.same_class.map_or("n/a".into(), |n| format!("{n}/{}", cases.len())),
        agree.tract_vs_reference.map_or("n/a".into(), |d| format!("{d:.2e}")),
    );
    m.agreement = Some(agree);

    let inputs: Vec<Vec<f32>> = cases.into_iter().map(|c| c.input).collect();
    // tract first, then whichever of ORT and the unfused plan there are
    let mut engines: Vec<&mut dyn Engine> = vec![&mut tract];
    let mut slots = vec![0usize];
    if let Some(o) = ort.as_mut() {
        engines.push(o);
        slots.push(1);
    }
    if let Some(p) = prop.as_mut() {
        engines.push(p);
        slots.push(2);
    }
    let timings = bench::measure(&mut engines, &inputs, plan)?;
    for (e, slot) in slots.into_iter().enumerate() {
        let r = match slot {
            0 => &mut m.tract,
            1 => &mut m.ort,
            _ => m.unfused.get_or_insert_with(Default::default),
        };
        r.latency = bench_stats::summarize(&timings.samples_ns[e]);
        r.round_p50_us = timings.rounds[e]
            .iter()
            .filter_map(|range| bench_stats::summarize(&timings.samples_ns[e][range.clone()]))
            .map(|s| s.p50_us)
            .collect();
    }
    if let (Some(t), Some(o)) = (&m.tract.latency, &m.ort.latency) {
        m.ratio_p50 = bench_stats::ratio(t.p50_us, o.p50_us);
    }
    if let (Some(p), Some(o)) = (
        m.unfused.as_ref().and_then(|p| p.latency.as_ref()),
        &m.ort.latency,
    ) {
        m.ratio_unfused_p50 = bench_stats::ratio(p.p50_us, o.p50_us);
    }
    eprintln!(
        "   p50: tract {} us{}",
        m.tract
            .latency
            .as_ref()
            .map_or("n/a".into(), |s| bench_stats::fmt_us(s.p50_us)),
        m.ort.latency.as_ref().map_or(String::new(), |s| format!(
            ", ORT {} us ({})",
            bench_stats::fmt_us(s.p50_us),
            bench_stats::fmt_ratio(m.ratio_p50)
        )),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discovers_the_default_models_in_dataset_order() {
        let dir = tempfile::tempdir().unwrap();
        for (ds, files) in [
            ("b", vec!["edge.int8.json", "hub.fp32.json", "notes.json"]),
            ("a", vec!["edge.fp32.json"]),
        ] {
            std::fs::create_dir(dir.path().join(ds)).unwrap();
            for f in files {
                std::fs::write(dir.path().join(ds).join(f), "{}").unwrap();
            }
        }
        let found = discover(dir.path()).unwrap();
        let rel: Vec<String> = found
            .iter()
            .map(|p| p.strip_prefix(dir.path()).unwrap().display().to_string())
            .collect();
        assert_eq!(
            rel,
            vec!["a/edge.fp32.json", "b/edge.int8.json", "b/hub.fp32.json"]
        );
    }

    #[test]
    fn an_error_chain_does_not_repeat_quoted_causes() {
        let inner = std::io::Error::other("disk on fire");
        let e = anyhow::Error::new(inner)
            .context("reading x: disk on fire")
            .context("model x");
        assert_eq!(error_chain(&e), "model x: reading x: disk on fire");
    }

    #[test]
    fn the_cli_parses_with_and_without_a_subcommand() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        let c = Cli::try_parse_from(["inference-bench", "--seconds", "1", "x.json"]).unwrap();
        assert!(c.command.is_none());
        assert_eq!(c.bench.seconds, 1.0);
        assert_eq!(c.bench.models.metadata, vec![PathBuf::from("x.json")]);
        let c = Cli::try_parse_from(["inference-bench", "profile", "x.json"]).unwrap();
        assert!(matches!(c.command, Some(Command::Profile(_))));
        let c = Cli::try_parse_from([
            "inference-bench",
            "hub",
            "--batches",
            "1,8",
            "--models",
            "a.json,b.json",
            "--seconds",
            "0.5",
        ])
        .unwrap();
        let Some(Command::Hub(h)) = c.command else {
            panic!("not the hub subcommand")
        };
        assert_eq!(h.batches, vec![1, 8]);
        assert_eq!(
            h.models,
            vec![PathBuf::from("a.json"), PathBuf::from("b.json")]
        );
        assert_eq!(h.workers, vec![1, 2]);
        assert_eq!(h.seconds, 0.5);
    }
}
