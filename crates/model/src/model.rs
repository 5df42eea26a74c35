//! Loading an ONNX model with tract and running it on one window.
//!
//! Loading does every check once, up front, so a bad model is refused by
//! `edge-agent check` (and by a hot swap) with a reason, never at the
//! first window: the metadata must be valid, the file must be the one the
//! metadata's SHA-256 names, it must parse, every operator must be one
//! tract implements, and the model's own input and output shapes must be
//! the metadata's. The model is then optimised for a fixed batch (the
//! edge: one window per call) or a dynamic one (the hub's batcher), so
//! each call runs a prepared plan. [`load_checked`] stops before the
//! optimisation, for a backend that prepares the graph itself (the hub's
//! CUDA backend).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use conveyor_shared::model_meta::{ModelMetaError, ModelMetadata};
use sha2::{Digest, Sha256};
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::Factoid;

/// Why a model cannot be used. Every variant names the model (its
/// metadata path) and the cause.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("model {path}: {source}")]
    Metadata {
        path: PathBuf,
        source: ModelMetaError,
    },
    #[error("model {path}: cannot read model file {file}: {source}")]
    ReadFile {
        path: PathBuf,
        file: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "model {path}: {file} does not match the metadata's model_sha256 \
         (expected {expected}, file has {actual}); the file is truncated, damaged or not this model"
    )]
    HashMismatch {
        path: PathBuf,
        file: PathBuf,
        expected: String,
        actual: String,
    },
    #[error("model {path}: {file} is not a valid ONNX model: {cause}")]
    Malformed {
        path: PathBuf,
        file: PathBuf,
        cause: String,
    },
    #[error("model {path}: operator {op:?} (node {node:?}) is not supported by this build's ONNX runtime (tract)")]
    UnsupportedOperator {
        path: PathBuf,
        op: String,
        node: String,
    },
    #[error("model {path}: shape mismatch: {detail}")]
    Shape { path: PathBuf, detail: String },
    #[error("model {path}: cannot prepare the model for running: {cause}")]
    Optimise { path: PathBuf, cause: String },
}

/// How many windows one call of a prepared model takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchSize {
    /// Exactly this many (the edge runs 1).
    Fixed(usize),
    /// Any number: the batch dimension stays a symbol, `N`. The model file
    /// must declare its batch dimension dynamic (the hub models do).
    Dynamic,
}

/// A loaded, optimised model, shared between the stage that runs it and
/// whoever swaps it.
pub struct OnnxModel {
    meta: ModelMetadata,
    metadata_path: PathBuf,
    plan: Arc<TypedRunnableModel>,
    batch: BatchSize,
}

impl std::fmt::Debug for OnnxModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnnxModel")
            .field("id", &self.meta.id)
            .field("version", &self.meta.version)
            .field("path", &self.metadata_path)
            .finish()
    }
}

impl OnnxModel {
    /// Loads the model described by the metadata file at `metadata_path`,
    /// prepared to run `batch` windows per call (`load(path, 1)` at the edge).
    pub fn load(metadata_path: &Path, batch: usize) -> Result<Self, ModelError> {
        Self::load_with(metadata_path, BatchSize::Fixed(batch))
    }

    /// Loads and optimises a model for the given batch size.
    pub fn load_with(metadata_path: &Path, batch: BatchSize) -> Result<Self, ModelError> {
        let checked = load_checked(metadata_path, batch)?;
        let plan = checked
            .typed
            .into_optimized()
            .and_then(|mut m| {
                // tract runs ORT's QDQ graph literally; the fused pass gives
                // the same bits in one branch-free sweep (fake_quant.rs)
                crate::fake_quant::fuse_fake_quant(&mut m)?;
                m.into_runnable()
            })
            .map_err(|e| ModelError::Optimise {
                path: checked.metadata_path.clone(),
                cause: format!("{e:#}"),
            })?;
        Ok(OnnxModel {
            meta: checked.meta,
            metadata_path: checked.metadata_path,
            plan,
            batch,
        })
    }

    pub fn meta(&self) -> &ModelMetadata {
        &self.meta
    }

    pub fn metadata_path(&self) -> &Path {
        &self.metadata_path
    }

    pub fn batch(&self) -> BatchSize {
        self.batch
    }

    /// A runner with its own scratch state; one per thread that calls the
    /// model.
    pub fn runner(self: &Arc<Self>) -> Result<ModelRunner, ModelError> {
        let state = self.plan.spawn().map_err(|e| ModelError::Optimise {
            path: self.metadata_path.clone(),
            cause: format!("{e:#}"),
        })?;
        Ok(ModelRunner {
            model: self.clone(),
            state,
        })
    }
}

/// A model that passed every check, typed but not yet optimised.
pub struct CheckedModel {
    pub meta: ModelMetadata,
    pub metadata_path: PathBuf,
    /// The graph with its input fixed to `[batch, channels, window]`
    /// (`batch` is the symbol `N` for [`BatchSize::Dynamic`]).
    pub typed: TypedModel,
}

/// Reads the metadata and the model file and does every check (checksum,
/// parse, operators, shapes), stopping before optimisation.
pub fn load_checked(metadata_path: &Path, batch: BatchSize) -> Result<CheckedModel, ModelError> {
    let path = metadata_path.to_path_buf();
    let meta = ModelMetadata::load(metadata_path).map_err(|source| ModelError::Metadata {
        path: path.clone(),
        source,
    })?;
    let file = meta.model_path(metadata_path);
    let bytes = std::fs::read(&file).map_err(|source| ModelError::ReadFile {
        path: path.clone(),
        file: file.clone(),
        source,
    })?;
    let actual = hex::encode(Sha256::digest(&bytes));
    if !actual.eq_ignore_ascii_case(&meta.model_sha256) {
        return Err(ModelError::HashMismatch {
            path,
            file,
            expected: meta.model_sha256.clone(),
            actual,
        });
    }
    let typed = check(&bytes, &meta, batch).map_err(|e| e.with_path(&path, &file))?;
    Ok(CheckedModel {
        meta,
        metadata_path: path,
        typed,
    })
}

/// What [`check`] found wrong, before the paths are attached.
enum PrepareError {
    Malformed(String),
    Unsupported { op: String, node: String },
    Shape(String),
}

impl PrepareError {
    fn with_path(self, path: &Path, file: &Path) -> ModelError {
        let path = path.to_path_buf();
        match self {
            PrepareError::Malformed(cause) => ModelError::Malformed {
                path,
                file: file.to_path_buf(),
                cause,
            },
            PrepareError::Unsupported { op, node } => {
                ModelError::UnsupportedOperator { path, op, node }
            }
            PrepareError::Shape(detail) => ModelError::Shape { path, detail },
        }
    }
}

fn check(bytes: &[u8], meta: &ModelMetadata, batch: BatchSize) -> Result<TypedModel, PrepareError> {
    // `quant_pre_process` leaves symbolic shape hints on intermediate
    // values that clash with the concrete input shape; the graph's own
    // input and output declarations are still read.
    let onnx = onnx().with_ignore_value_info(true);
    let mut reader = bytes;
    let proto = onnx
        .proto_model_for_read(&mut reader)
        .map_err(|e| PrepareError::Malformed(format!("{e:#}")))?;
    let mut model = onnx
        .model_for_proto_model(&proto)
        .map_err(|e| PrepareError::Malformed(format!("{e:#}")))?;
    if let Some(node) = model
        .nodes()
        .iter()
        .find(|n| n.op.name().starts_with("Unimplemented("))
    {
        let name = node.op.name();
        let op = name
            .trim_start_matches("Unimplemented(")
            .trim_end_matches(')')
            .to_string();
        return Err(PrepareError::Unsupported {
            op,
            node: node.name.clone(),
        });
    }

    let inputs = model
        .input_outlets()
        .map_err(|e| PrepareError::Malformed(e.to_string()))?;
    if inputs.len() != 1 {
        return Err(PrepareError::Shape(format!(
            "the model has {} inputs; a window model has exactly one",
            inputs.len()
        )));
    }
    let input_node = &model.nodes()[inputs[0].node];
    if input_node.name != meta.input.name {
        return Err(PrepareError::Shape(format!(
            "the model's input is named {:?}, the metadata says {:?}",
            input_node.name, meta.input.name
        )));
    }
    // The shape the model declares, where it is concrete, must be the
    // metadata's (a dynamic batch dimension is fine).
    let shape = &input_node.outputs[0].fact.shape;
    if shape.rank().concretize().is_some() {
        let dims: Vec<Option<TDim>> = shape.dims().map(|d| d.concretize()).collect();
        let declared: Vec<String> = dims
            .iter()
            .map(|d| d.as_ref().map_or("?".to_string(), |d| d.to_string()))
            .collect();
        let agrees = dims.len() == 3
            && dims[1..]
                .iter()
                .zip([meta.channels, meta.window])
                .all(|(d, e)| {
                    d.as_ref()
                        .and_then(|d| d.to_i64().ok())
                        .is_none_or(|d| d == e as i64)
                });
        if !agrees {
            return Err(PrepareError::Shape(format!(
                "the model takes input [{}], the metadata says {} channels x {} readings",
                declared.join(", "),
                meta.channels,
                meta.window
            )));
        }
    }
    let n: TDim = match batch {
        BatchSize::Fixed(n) => n.into(),
        BatchSize::Dynamic => model.symbols.sym("N").into(),
    };
    model = model
        .with_input_fact(
            0,
            f32::fact([n.clone(), meta.channels.into(), meta.window.into()]).into(),
        )
        .map_err(|e| PrepareError::Shape(format!("{e:#}")))?;
    let typed = model
        .into_typed()
        .map_err(|e| PrepareError::Shape(format!("{e:#}")))?;
    let outputs = typed
        .output_outlets()
        .map_err(|e| PrepareError::Malformed(e.to_string()))?;
    let out_fact = typed
        .outlet_fact(outputs[0])
        .map_err(|e| PrepareError::Malformed(e.to_string()))?;
    let want = [n, meta.labels.len().into()];
    if out_fact.shape.dims() != &want[..] {
        return Err(PrepareError::Shape(format!(
            "the model outputs {:?}, the metadata's {} labels need [{}, {}]",
            out_fact.shape,
            meta.labels.len(),
            want[0],
            want[1]
        )));
    }
    Ok(typed)
}

/// Runs one model, window by window, reusing its scratch memory.
pub struct ModelRunner {
    model: Arc<OnnxModel>,
    state: TypedSimpleState,
}

/// The model's answer for one window.
#[derive(Debug, Clone, PartialEq)]
pub struct Scores {
    pub class_index: usize,
    pub confidence: f32,
    pub probabilities: Vec<f32>,
}

impl ModelRunner {
    pub fn model(&self) -> &Arc<OnnxModel> {
        &self.model
    }

    /// Runs the model on `input`: `n x channels x window` values, already
    /// normalised, in NCW order (`n` is the model's fixed batch, or any
    /// number for a dynamic one). Returns one probability row per window.
    pub fn run(&mut self, input: Vec<f32>) -> Result<Vec<Vec<f32>>, RunError> {
        let m = &self.model.meta;
        let per_window = m.channels * m.window;
        let n = input.len() / per_window;
        let expected = match self.model.batch {
            BatchSize::Fixed(b) => b,
            BatchSize::Dynamic => n.max(1),
        };
        if input.len() != expected * per_window {
            return Err(RunError(format!(
                "got {} input values, the model takes {expected} x {} x {}",
                input.len(),
                m.channels,
                m.window
            )));
        }
        let shape = [expected, m.channels, m.window];
        let tensor = Tensor::from_shape(&shape, &input).map_err(|e| RunError(format!("{e:#}")))?;
        let outputs = self
            .state
            .run_plan_with_eval(
                tvec!(tensor.into_tvalue()),
                crate::avx::eval_then_vzeroupper,
            )
            .map_err(|e| RunError(format!("{e:#}")))?;
        let k = m.labels.len();
        let flat: Vec<f32> = outputs[0]
            .to_plain_array_view::<f32>()
            .map_err(|e| RunError(format!("{e:#}")))?
            .iter()
            .copied()
            .collect();
        if flat.len() != expected * k {
            return Err(RunError(format!(
                "the model returned {} values, expected {}",
                flat.len(),
                expected * k
            )));
        }
        if flat.iter().any(|v| !v.is_finite()) {
            return Err(RunError("the model returned a non-finite value".into()));
        }
        Ok(flat.chunks(k).map(<[f32]>::to_vec).collect())
    }

    /// Runs a batch-1 model on one window and picks the most likely class.
    pub fn classify(&mut self, input: Vec<f32>) -> Result<Scores, RunError> {
        let probabilities = self.run(input)?.swap_remove(0);
        Ok(Scores::from_probabilities(probabilities))
    }
}

impl Scores {
    /// The wire prediction of `meta`'s model (the window fields are left
    /// to the caller).
    pub fn into_prediction(self, meta: &ModelMetadata) -> conveyor_shared::Prediction {
        conveyor_shared::Prediction {
            model_id: meta.id.clone(),
            model_version: meta.version.clone(),
            label: meta.labels[self.class_index].clone(),
            class_index: self.class_index as u32,
            confidence: self.confidence,
            probabilities: self.probabilities,
            ..Default::default()
        }
    }

    pub fn from_probabilities(probabilities: Vec<f32>) -> Self {
        let (class_index, confidence) = probabilities.iter().copied().enumerate().fold(
            (0, f32::NEG_INFINITY),
            |best, (i, p)| {
                if p > best.1 {
                    (i, p)
                } else {
                    best
                }
            },
        );
        Scores {
            class_index,
            confidence,
            probabilities,
        }
    }
}

/// A model call that failed at run time (counted and logged by the stage).
#[derive(Debug, thiserror::Error)]
#[error("inference failed: {0}")]
pub struct RunError(pub String);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_takes_the_first_of_equal_scores() {
        let s = Scores::from_probabilities(vec![0.1, 0.45, 0.45]);
        assert_eq!(s.class_index, 1);
        assert_eq!(s.confidence, 0.45);
    }
}
