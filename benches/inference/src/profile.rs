//! Inside tract: where one window's time goes, op by op, and what the
//! loader could do differently.
//!
//! Every variant is built here from the model's bytes, the way
//! `conveyor_model::OnnxModel::load` builds its plan, with one thing
//! changed; each is checked against the loader's plan on the reference
//! windows and timed in alternating rounds, like the main benchmark.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{anyhow, Context, Result};
use clap::Args;
use conveyor_shared::ModelMetadata;
use tract_onnx::prelude::*;

use crate::bench;
use crate::engines::Engine;
use crate::reference;
use crate::ModelArgs;
use bench_stats::{self as stats, fmt_ratio, fmt_us, median_u64};

#[derive(Args, Clone)]
pub struct ProfileArgs {
    #[command(flatten)]
    models: ModelArgs,
    /// Calls profiled op by op (per variant shown).
    #[arg(long, default_value_t = 3000)]
    iterations: usize,
    /// Timed seconds per variant per model.
    #[arg(long, default_value_t = 1.5)]
    seconds: f64,
    /// Rounds per model (variants alternate within each).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Variants to build and time (comma separated); `loader` is the
    /// edge agent's plan. See --list-variants.
    #[arg(long, value_delimiter = ',', default_value = "all")]
    variants: Vec<String>,
    /// Show the op-by-op profile of these variants too (default: loader).
    #[arg(long, value_delimiter = ',', default_value = "loader")]
    op_profile: Vec<String>,
    /// Print every node of the optimised loader plan.
    #[arg(long)]
    dump: bool,
    /// Lines of the per-node profile.
    #[arg(long, default_value_t = 12)]
    top: usize,
    /// List the variants and exit.
    #[arg(long)]
    list_variants: bool,
}

/// One way of turning the ONNX file into a tract plan.
struct Variant {
    name: &'static str,
    what: &'static str,
    /// How `run` hands the window to tract.
    input: InputMode,
    /// Clear the upper halves of the AVX registers after every node.
    vzeroupper: bool,
    build: fn(&[u8], &ModelMetadata) -> TractResult<TypedModel>,
}

#[derive(Clone, Copy, PartialEq)]
enum InputMode {
    /// `Tensor::from_shape(&shape, &input)`: copies the Vec, as `ModelRunner::run` does.
    CopySlice,
    /// `Array::from_shape_vec(shape, input).into()`: takes the Vec's buffer.
    MoveVec,
}

fn variants() -> Vec<Variant> {
    vec![
        Variant {
            name: "loader",
            what: "tract's plan of the loader's graph: ignore value_info, input fact [1,C,W], into_typed, into_optimized; input copied as ModelRunner::run does (the agent's plan adds the two fixes below: fused-fake-quant+vzeroupper)",
            input: InputMode::CopySlice,
            vzeroupper: false,
            build: |b, m| loader_typed(b, m)?.into_optimized(),
        },
        Variant {
            name: "loader-move-input",
            what: "same plan; the input Vec becomes the tensor without a copy",
            input: InputMode::MoveVec,
            vzeroupper: false,
            build: |b, m| loader_typed(b, m)?.into_optimized(),
        },
        Variant {
            name: "vzeroupper",
            what: "loader plan, run with a vzeroupper after every node (tract's AVX-512 matmul kernels return with dirty upper state)",
            input: InputMode::CopySlice,
            vzeroupper: true,
            build: |b, m| loader_typed(b, m)?.into_optimized(),
        },
        Variant {
            name: "fused-fake-quant+vzeroupper",
            what: "both: Q->DQ pairs fused into one branch-free pass, and vzeroupper after every node: the edge agent's plan since issue 19",
            input: InputMode::CopySlice,
            vzeroupper: true,
            build: |b, m| {
                let mut model = loader_typed(b, m)?.into_optimized()?;
                conveyor_model::fake_quant::fuse_fake_quant(&mut model)?;
                Ok(model)
            },
        },
        Variant {
            name: "branchless-quantize",
            what: "loader plan with every QuantizeLinearU8 swapped for a branch-free one (same bits); input copied",
            input: InputMode::CopySlice,
            vzeroupper: false,
            build: |b, m| {
                let mut model = loader_typed(b, m)?.into_optimized()?;
                conveyor_model::fake_quant::branchless_quantize(&mut model);
                Ok(model)
            },
        },
        Variant {
            name: "fused-fake-quant",
            what: "loader plan with each QuantizeLinear->DequantizeLinear pair as one branch-free f32 pass; input copied",
            input: InputMode::CopySlice,
            vzeroupper: false,
            build: |b, m| {
                let mut model = loader_typed(b, m)?.into_optimized()?;
                conveyor_model::fake_quant::fuse_fake_quant(&mut model)?;
                Ok(model)
            },
        },
        Variant {
            name: "qlinear",
            what: "QDQ Conv patterns rewritten to QLinearConv before import (tract's int8 conv, i32 accumulation); input moved",
            input: InputMode::MoveVec,
            vzeroupper: false,
            build: |b, m| crate::qdq::qlinear_typed(b, m.channels, m.window)?.into_optimized(),
        },
        Variant {
            name: "qlinear+vzeroupper",
            what: "qlinear, with vzeroupper after every node",
            input: InputMode::MoveVec,
            vzeroupper: true,
            build: |b, m| crate::qdq::qlinear_typed(b, m.channels, m.window)?.into_optimized(),
        },
        Variant {
            name: "declutter-first",
            what: "loader, with an explicit into_decluttered() before into_optimized()",
            input: InputMode::CopySlice,
            vzeroupper: false,
            build: |b, m| loader_typed(b, m)?.into_decluttered()?.into_optimized(),
        },
        Variant {
            name: "keep-value-info",
            what: "loader without with_ignore_value_info(true)",
            input: InputMode::CopySlice,
            vzeroupper: false,
            build: |b, m| {
                let onnx = onnx();
                let model = onnx.model_for_read(&mut &*b)?;
                model.with_input_fact(0, f32::fact([1, m.channels, m.window]).into())?.into_typed()?.into_optimized()
            },
        },
        Variant {
            name: "declared-input-shape",
            what: "loader without with_input_fact: the shape the ONNX file declares (batch symbolic where dynamic), concretised to 1 after typing",
            input: InputMode::CopySlice,
            vzeroupper: false,
            build: |b, _m| {
                let onnx = onnx().with_ignore_value_info(true);
                let typed = onnx.model_for_read(&mut &*b)?.into_typed()?;
                let subs: std::collections::HashMap<Symbol, TDim> =
                    typed.symbols.all_symbols().into_iter().map(|s| (s, TDim::Val(1))).collect();
                typed.set_symbols(&subs)?.into_optimized()
            },
        },
    ]
}

/// The loader's steps up to the typed model (`conveyor_model::load_checked`,
/// minus the checks).
pub fn loader_typed(bytes: &[u8], meta: &ModelMetadata) -> TractResult<TypedModel> {
    let onnx = onnx().with_ignore_value_info(true);
    let mut model = onnx.model_for_read(&mut &*bytes)?;
    model = model.with_input_fact(0, f32::fact([1, meta.channels, meta.window]).into())?;
    model.into_typed()
}

/// tract's plan of the loader's graph without the fused quantize (the
/// loader before issue 19), run with `vzeroupper` after every node as the
/// loader does: the baseline `--unfused` measures the fusion against.
/// Returns the engine and its load time (read, parse, optimise; the
/// loader's hash check is not included).
pub fn unfused_engine(metadata_path: &Path) -> Result<(PlanEngine, std::time::Duration)> {
    let t = Instant::now();
    let meta = ModelMetadata::load(metadata_path)?;
    let bytes = std::fs::read(meta.model_path(metadata_path))?;
    let plan = loader_typed(&bytes, &meta)?
        .into_optimized()?
        .into_runnable()?;
    let engine = PlanEngine::new(&plan, &meta, InputMode::CopySlice, true)?;
    Ok((engine, t.elapsed()))
}

/// A plan with a runner, as an [`Engine`].
pub struct PlanEngine {
    state: TypedSimpleState,
    shape: [usize; 3],
    input: InputMode,
    vzeroupper: bool,
}

impl PlanEngine {
    fn new(
        plan: &Arc<TypedRunnableModel>,
        meta: &ModelMetadata,
        input: InputMode,
        vzeroupper: bool,
    ) -> Result<Self> {
        Ok(PlanEngine {
            state: plan.spawn()?,
            shape: [1, meta.channels, meta.window],
            input,
            vzeroupper,
        })
    }

    fn tensor(&self, input: Vec<f32>) -> Result<Tensor> {
        Ok(match self.input {
            InputMode::CopySlice => Tensor::from_shape(&self.shape, &input)?,
            InputMode::MoveVec => {
                tract_ndarray::Array::from_shape_vec(self.shape.to_vec(), input)?.into_tensor()
            }
        })
    }
}

impl Engine for PlanEngine {
    fn run(&mut self, input: Vec<f32>) -> Result<Vec<f32>> {
        let t = self.tensor(input)?;
        let out = if self.vzeroupper {
            self.state.run_plan_with_eval(
                tvec!(t.into_tvalue()),
                conveyor_model::avx::eval_then_vzeroupper,
            )?
        } else {
            self.state.run(tvec!(t.into_tvalue()))?
        };
        Ok(out[0].try_as_plain_ram()?.as_slice::<f32>()?.to_vec())
    }
}

/// Time per node over `iterations` calls: the median of each node's
/// per-call times (robust to the preemptions of a shared 2-core machine,
/// which would land on whichever node was running), in the plan's order.
struct OpProfile {
    /// (node id, name, op, median ns per call, output shape)
    per_node: Vec<(usize, String, String, f64, String)>,
    /// Sum of the medians.
    total_ns: f64,
    iterations: usize,
}

fn op_profile(
    plan: &Arc<TypedRunnableModel>,
    engine: &mut PlanEngine,
    inputs: &[Vec<f32>],
    iterations: usize,
) -> Result<OpProfile> {
    let model = plan.model();
    let mut times: Vec<Vec<u64>> = vec![Vec::with_capacity(iterations); model.nodes().len()];
    let mut state = plan.spawn()?;
    let warmup = iterations / 10;
    for i in 0..(iterations + warmup) {
        let t = engine.tensor(inputs[i % inputs.len()].clone())?;
        let warm = i < warmup;
        state.run_plan_with_eval(tvec!(t.into_tvalue()), |session, op_state, node, input| {
            let t = Instant::now();
            let r = tract_onnx::tract_core::plan::eval(session, op_state, node, input);
            if engine.vzeroupper {
                conveyor_model::avx::vzeroupper();
            }
            if !warm {
                times[node.id].push(t.elapsed().as_nanos() as u64);
            }
            r
        })?;
    }
    let mut per_node: Vec<_> = model
        .nodes()
        .iter()
        .map(|n| {
            let shape = n
                .outputs
                .first()
                .map_or(String::new(), |o| format!("{:?}", o.fact.shape));
            (
                n.id,
                n.name.clone(),
                n.op.name().to_string(),
                median_u64(&times[n.id]),
                shape,
            )
        })
        .collect();
    let total_ns = per_node.iter().map(|n| n.3).sum();
    per_node.sort_by(|a, b| b.3.total_cmp(&a.3));
    Ok(OpProfile {
        per_node,
        total_ns,
        iterations,
    })
}

fn print_op_profile(variant: &str, p: &OpProfile, top: usize) {
    let us = |ns: f64| ns / 1e3;
    let pct = |ns: f64| 100.0 * ns / p.total_ns.max(1e-9);
    println!(
        "\n`{variant}`: sum of the per-node medians {} us per call ({} calls); by op type:\n",
        fmt_us(us(p.total_ns)),
        p.iterations
    );
    let mut by_op: Vec<(String, f64, usize)> = Vec::new();
    for (_, _, op, d, _) in &p.per_node {
        match by_op.iter_mut().find(|(o, _, _)| o == op) {
            Some(e) => {
                e.1 += *d;
                e.2 += 1;
            }
            None => by_op.push((op.clone(), *d, 1)),
        }
    }
    by_op.sort_by(|a, b| b.1.total_cmp(&a.1));
    println!("| op | nodes | us per call (median) | share |\n|---|---|---|---|");
    for (op, d, n) in &by_op {
        println!("| {op} | {n} | {} | {:.1}% |", fmt_us(us(*d)), pct(*d));
    }
    println!("\ntop nodes:\n\n| node | op | output | us per call (median) | share |\n|---|---|---|---|---|");
    for (id, name, op, d, shape) in p.per_node.iter().take(top) {
        println!(
            "| #{id} {name} | {op} | {shape} | {} | {:.1}% |",
            fmt_us(us(*d)),
            pct(*d)
        );
    }
}

/// Median ns to turn a window `Vec` into a tract tensor by copying it (as
/// `ModelRunner::run` does) and by moving its buffer.
fn input_handoff(input: &[f32], shape: [usize; 3]) -> Result<(f64, f64)> {
    let n = 20_000;
    let (mut copy, mut moved) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for _ in 0..n {
        let v = input.to_vec();
        let t = Instant::now();
        let tensor = Tensor::from_shape(&shape, &v)?;
        copy.push(t.elapsed().as_nanos() as u64);
        std::hint::black_box((tensor, v));
        let v = input.to_vec();
        let t = Instant::now();
        let tensor = tract_ndarray::Array::from_shape_vec(shape.to_vec(), v)?.into_tensor();
        moved.push(t.elapsed().as_nanos() as u64);
        std::hint::black_box(tensor);
    }
    Ok((median_u64(&copy), median_u64(&moved)))
}

pub fn run(args: &ProfileArgs) -> Result<()> {
    let all = variants();
    if args.list_variants {
        for v in &all {
            println!("{:24} {}", v.name, v.what);
        }
        return Ok(());
    }
    let chosen: Vec<&Variant> = if args.variants.iter().any(|v| v == "all") {
        all.iter().collect()
    } else {
        args.variants
            .iter()
            .map(|n| {
                all.iter()
                    .find(|v| v.name == n)
                    .ok_or_else(|| anyhow!("no variant {n:?} (see --list-variants)"))
            })
            .collect::<Result<_>>()?
    };
    let plan = bench::Plan {
        seconds: args.seconds,
        rounds: args.rounds.max(1),
        warmup_seconds: 0.2,
    };
    for path in crate::model_paths(&args.models)? {
        if let Err(e) = profile_model(&path, &chosen, args, &plan) {
            eprintln!("{}: {}", path.display(), crate::error_chain(&e));
        }
    }
    Ok(())
}

fn profile_model(
    path: &Path,
    chosen: &[&Variant],
    args: &ProfileArgs,
    plan: &bench::Plan,
) -> Result<()> {
    let meta = ModelMetadata::load(path)?;
    let bytes = std::fs::read(meta.model_path(path))?;
    let (_, cases) = reference::load(path, &meta.model_file, meta.channels * meta.window)?;
    let inputs: Vec<Vec<f32>> = cases.iter().map(|c| c.input.clone()).collect();
    println!(
        "\n## {} ({} {}, input {}x{})\n",
        path.display(),
        meta.id,
        meta.precision,
        meta.channels,
        meta.window
    );

    let mut built = Vec::new();
    for v in chosen {
        let t = Instant::now();
        let r = (v.build)(&bytes, &meta).and_then(|m| m.into_runnable());
        let took = t.elapsed();
        match r {
            Ok(p) => {
                eprintln!(
                    "   {}: built in {:.1} ms, {} nodes",
                    v.name,
                    took.as_secs_f64() * 1e3,
                    p.model().nodes().len()
                );
                built.push((*v, p, took));
            }
            Err(e) => println!("- `{}`: cannot be built: {e:#}", v.name),
        }
    }
    if args.dump {
        if let Some((_, p, _)) = built.iter().find(|(v, _, _)| v.name == "loader") {
            println!("optimised loader plan:\n");
            for n in p.model().nodes() {
                let facts: Vec<String> =
                    n.outputs.iter().map(|o| format!("{:?}", o.fact)).collect();
                let ins: Vec<String> = n.inputs.iter().map(|i| format!("#{}", i.node)).collect();
                println!(
                    "    #{} {} [{}] <- {} => {}",
                    n.id,
                    n.name,
                    n.op.name(),
                    ins.join(","),
                    facts.join(", ")
                );
                for info in n.op.info().unwrap_or_default() {
                    println!("        {info}");
                }
            }
            println!();
        }
    }

    let mut engines: Vec<PlanEngine> = built
        .iter()
        .map(|(v, p, _)| PlanEngine::new(p, &meta, v.input, v.vzeroupper))
        .collect::<Result<_>>()?;

    // do they agree with the loader's plan on the reference windows?
    let mut diffs = vec![0f32; engines.len()];
    for c in &cases {
        let base = engines[0].run(c.input.clone())?;
        for (i, e) in engines.iter_mut().enumerate().skip(1) {
            let out = e.run(c.input.clone())?;
            let d = reference::max_abs_diff(&base, &out).context("output length differs")?;
            diffs[i] = diffs[i].max(d);
        }
    }

    let mut refs: Vec<&mut dyn Engine> = engines.iter_mut().map(|e| e as &mut dyn Engine).collect();
    let timings = bench::measure(&mut refs, &inputs, plan)?;
    let base_p50 = stats::summarize(&timings.samples_ns[0]).map(|s| s.p50_us);
    println!("| variant | p50 us | p99 us | vs `{}` | max abs diff vs it | build ms | what |\n|---|---|---|---|---|---|---|", built[0].0.name);
    for (i, (v, _, took)) in built.iter().enumerate() {
        let s = stats::summarize(&timings.samples_ns[i]).context("no samples")?;
        println!(
            "| {} | {} | {} | {} | {:.1e} | {:.1} | {} |",
            v.name,
            fmt_us(s.p50_us),
            fmt_us(s.p99_us),
            fmt_ratio(base_p50.and_then(|b| stats::ratio(s.p50_us, b))),
            diffs[i],
            took.as_secs_f64() * 1e3,
            v.what
        );
    }
    let (copy_ns, move_ns) = input_handoff(&inputs[0], [1, meta.channels, meta.window])?;
    println!(
        "\ninput handoff ({} values), median of 20,000: `Tensor::from_shape(&shape, &vec)` (ModelRunner::run's copy) {copy_ns:.0} ns, `Array::from_shape_vec(shape, vec)` (move) {move_ns:.0} ns",
        inputs[0].len()
    );
    for (i, (v, p, _)) in built.iter().enumerate() {
        if args.op_profile.iter().any(|n| n == v.name || n == "all") {
            let prof = op_profile(p, &mut engines[i], &inputs, args.iterations)?;
            print_op_profile(v.name, &prof, args.top);
        }
    }
    Ok(())
}
