//! The two engines behind one call: `run(window) -> probabilities`.
//!
//! Both take the input `Vec` by value (the caller clones a prepared window
//! before starting the clock) and both return the output copied into a
//! fresh `Vec<f32>`, so the timed region is the same for both: wrap the
//! input in the engine's tensor type, run the plan, copy the output out,
//! release the engine's output values.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use conveyor_model::{ModelRunner, OnnxModel};
use conveyor_shared::ModelMetadata;

pub trait Engine {
    /// One window (`channels x window` values, NCW) in, probabilities out.
    fn run(&mut self, input: Vec<f32>) -> Result<Vec<f32>>;
}

/// tract, through the edge agent's own loader and runner: exactly what the
/// agent runs.
pub struct TractEngine {
    runner: ModelRunner,
}

impl TractEngine {
    /// Loads with `OnnxModel::load(path, 1)` and spawns a runner; returns
    /// the engine and the time both took.
    pub fn load(metadata_path: &Path) -> Result<(Self, Duration)> {
        let t = Instant::now();
        let model = Arc::new(OnnxModel::load(metadata_path, 1)?);
        let runner = model.runner()?;
        Ok((TractEngine { runner }, t.elapsed()))
    }
}

impl Engine for TractEngine {
    fn run(&mut self, input: Vec<f32>) -> Result<Vec<f32>> {
        let rows = self.runner.run(input)?;
        // batch 1: one row; moving it out copies nothing
        rows.into_iter().next().context("tract returned no row")
    }
}

/// ONNX Runtime, loaded from a shared library at run time.
pub struct OrtRuntime {
    env: ort::environment::Environment,
    pub version: String,
}

/// Runs `f` with panics turned into errors and the default panic message
/// silenced: `ort` panics (rather than failing) in a few corners of loading
/// a library it cannot use, and the benchmark must go on without ORT.
fn quietly<T>(what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let r = catch_unwind(AssertUnwindSafe(f));
    std::panic::set_hook(hook);
    match r {
        Ok(r) => r,
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            Err(anyhow!("{what}: {msg}"))
        }
    }
}

impl OrtRuntime {
    /// Loads `libonnxruntime.so` from `library` and creates the process's
    /// ORT environment. Any failure is an error, never a panic.
    pub fn load(library: &Path) -> Result<Self> {
        if !library.is_file() {
            return Err(anyhow!("{} does not exist", library.display()));
        }
        quietly("loading ONNX Runtime", || {
            let builder = ort::init_from(library).map_err(|e| anyhow!("{e}"))?;
            let version = ort::info().to_string();
            let env = builder
                .with_name("inference-bench")
                .with_telemetry(false)
                .build()
                .map_err(|e| anyhow!("{e}"))?;
            Ok(OrtRuntime {
                env,
                version: version_from_library_name(library)
                    .unwrap_or_else(|| version_from_build_info(&version)),
            })
        })
    }
}

/// `ORT Build Info: git-branch=rel-1.32.0, git-commit-id=...` -> `1.32.0`
/// (the PyPI wheels say `git-branch=HEAD`: then the commit).
pub fn version_from_build_info(info: &str) -> String {
    let field = |k: &str| {
        info.split([',', ' '])
            .find_map(|p| p.trim().strip_prefix(k).map(str::to_string))
    };
    match field("git-branch=") {
        Some(b) if b.starts_with("rel-") => b.trim_start_matches("rel-").to_string(),
        _ => {
            field("git-commit-id=").map_or_else(|| "unknown".to_string(), |c| format!("commit {c}"))
        }
    }
}

/// `.../libonnxruntime.so.1.32.0` -> `1.32.0`.
pub fn version_from_library_name(path: &Path) -> Option<String> {
    let name = path.file_name()?.to_str()?;
    let v = name.split_once(".so.")?.1;
    (v.split('.').count() >= 2
        && v.split('.')
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())))
    .then(|| v.to_string())
}

pub struct OrtEngine {
    session: ort::session::Session,
    /// `[channels, window]` of one input window.
    window: [usize; 2],
}

impl OrtEngine {
    /// One session on one thread: intra-op 1, inter-op 1, sequential,
    /// every graph optimisation (`ORT_ENABLE_ALL`). Returns the engine and
    /// the time the session took to load and optimise.
    pub fn load(
        rt: &OrtRuntime,
        metadata_path: &Path,
        meta: &ModelMetadata,
    ) -> Result<(Self, Duration)> {
        let file = meta.model_path(metadata_path);
        quietly("creating the ONNX Runtime session", || {
            use ort::session::builder::GraphOptimizationLevel;
            let t = Instant::now();
            let session = ort::session::Session::builder(&rt.env)
                .map_err(|e| anyhow!("{e}"))?
                .with_intra_threads(1)
                .map_err(|e| anyhow!("{e}"))?
                .with_inter_threads(1)
                .map_err(|e| anyhow!("{e}"))?
                .with_parallel_execution(false)
                .map_err(|e| anyhow!("{e}"))?
                .with_optimization_level(GraphOptimizationLevel::All)
                .map_err(|e| anyhow!("{e}"))?
                .commit_from_file(&file)
                .map_err(|e| anyhow!("{}: {e}", file.display()))?;
            let took = t.elapsed();
            if session.inputs().len() != 1 || session.outputs().is_empty() {
                return Err(anyhow!(
                    "{}: {} inputs and {} outputs; a window model has one input",
                    file.display(),
                    session.inputs().len(),
                    session.outputs().len()
                ));
            }
            Ok((
                OrtEngine {
                    session,
                    window: [meta.channels, meta.window],
                },
                took,
            ))
        })
    }
}

impl OrtEngine {
    /// `n` windows in one call (input `[n, channels, window]`, NCW; the
    /// model's batch dimension must be dynamic for `n > 1`): `n x classes`
    /// probabilities, row by row.
    pub fn run_batch(&mut self, n: usize, input: Vec<f32>) -> Result<Vec<f32>> {
        let [c, w] = self.window;
        // takes the Vec without copying it, like a zero-copy tract input would
        let tensor = ort::value::Tensor::from_array(([n, c, w], input))?;
        let outputs = self.session.run(ort::inputs![tensor])?;
        let (_, data) = outputs[0].try_extract_tensor::<f32>()?;
        Ok(data.to_vec())
    }
}

impl Engine for OrtEngine {
    fn run(&mut self, input: Vec<f32>) -> Result<Vec<f32>> {
        self.run_batch(1, input)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_is_read_from_the_build_info() {
        let info =
            "ORT Build Info: git-branch=rel-1.32.0, git-commit-id=abc1234, build type=Release";
        assert_eq!(version_from_build_info(info), "1.32.0");
        assert_eq!(version_from_build_info("something else"), "unknown");
        assert_eq!(
            version_from_build_info(
                "ORT Build Info: git-branch=HEAD, git-commit-id=d1f0a6b, build type=Release"
            ),
            "commit d1f0a6b"
        );
        let lib = Path::new("/v/site-packages/onnxruntime/capi/libonnxruntime.so.1.32.0");
        assert_eq!(version_from_library_name(lib).as_deref(), Some("1.32.0"));
        assert_eq!(
            version_from_library_name(Path::new("libonnxruntime.so")),
            None
        );
    }

    #[test]
    fn a_missing_library_is_an_error_not_a_panic() {
        let e = OrtRuntime::load(Path::new("/nonexistent/libonnxruntime.so"))
            .err()
            .unwrap();
        assert!(e.to_string().contains("does not exist"), "{e}");
    }
}
