//! Model metadata: the machine-readable card that travels with every ONNX
//! model (`models/<dataset>/<model>.json`).
//!
//! The training scripts in `models/` write it; the edge agent and the hub
//! read it to know how to feed a model (channels, window, stride,
//! normalisation) and how to read its answer (labels). It lives here, not in
//! either binary, because both sides and the future artifact registry must
//! agree on it. Validation is plain data: [`ModelMetadata::validate`] checks
//! that the fields agree with each other; whether the ONNX file agrees with
//! them is the loader's job.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The metadata schema this build reads.
pub const MODEL_META_SCHEMA: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelMetadata {
    pub schema: u32,
    /// Stable name of the model line, e.g. `basicmotions-edge`.
    pub id: String,
    /// Version of this file of the line, e.g. `1.0.0-int8`.
    pub version: String,
    #[serde(default)]
    pub dataset: String,
    /// The ONNX file, relative to the metadata file's folder.
    pub model_file: PathBuf,
    /// Lowercase hex SHA-256 of the ONNX file.
    pub model_sha256: String,
    #[serde(default)]
    pub size_bytes: u64,
    /// `int8` or `fp32`.
    pub precision: String,
    pub input: TensorSpec,
    pub output: TensorSpec,
    /// Values per reading.
    pub channels: usize,
    /// Readings per window.
    pub window: usize,
    /// Readings between the starts of two windows (`window` = no overlap).
    pub stride: usize,
    pub labels: Vec<String>,
    pub normalization: Normalization,
    #[serde(default)]
    pub metrics: Option<ModelMetrics>,
}

/// Name, element type and shape of a model input or output. `-1` in a
/// shape is a dynamic (batch) dimension.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TensorSpec {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<i64>,
    /// `NCW` (batch, channels, time) for windows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layout: Option<String>,
}

/// Per-channel standardisation applied to a window before the model:
/// `(x - mean[c]) / std[c]`, with the training set's statistics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Normalization {
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
}

/// What the training scripts measured with ONNX Runtime on the test split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelMetrics {
    pub test_windows: usize,
    pub test_accuracy: f64,
    #[serde(default)]
    pub test_accuracy_fp32: Option<f64>,
    #[serde(default)]
    pub evaluated_with: String,
}

#[derive(Debug, Error)]
pub enum ModelMetaError {
    #[error("cannot read model metadata {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("model metadata {path} is not valid: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("model metadata field `{field}` is invalid: {reason}")]
    Field { field: &'static str, reason: String },
}

fn field(field: &'static str, reason: impl Into<String>) -> ModelMetaError {
    ModelMetaError::Field {
        field,
        reason: reason.into(),
    }
}

impl ModelMetadata {
    /// Reads and validates a metadata file.
    pub fn load(path: &Path) -> Result<Self, ModelMetaError> {
        let text = std::fs::read(path).map_err(|source| ModelMetaError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let meta: ModelMetadata =
            serde_json::from_slice(&text).map_err(|source| ModelMetaError::Parse {
                path: path.to_path_buf(),
                source,
            })?;
        meta.validate()?;
        Ok(meta)
    }

    /// The ONNX file's path, given the metadata file's path.
    pub fn model_path(&self, metadata_path: &Path) -> PathBuf {
        metadata_path
            .parent()
            .unwrap_or(Path::new("."))
            .join(&self.model_file)
    }

    /// Checks that the fields agree with each other.
    pub fn validate(&self) -> Result<(), ModelMetaError> {
        if self.schema != MODEL_META_SCHEMA {
            return Err(field(
                "schema",
                format!(
                    "schema {} is not supported (this build reads {MODEL_META_SCHEMA})",
                    self.schema
                ),
            ));
        }
        if self.id.is_empty() {
            return Err(field("id", "must not be empty"));
        }
        if self.version.is_empty() {
            return Err(field("version", "must not be empty"));
        }
        if self.model_sha256.len() != 64
            || !self.model_sha256.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Err(field("model_sha256", "must be 64 hex digits"));
        }
        if self.input.dtype != "float32" || self.output.dtype != "float32" {
            return Err(field(
                "input.dtype",
                "only float32 inputs and outputs are supported",
            ));
        }
        if self.channels == 0 || self.window == 0 {
            return Err(field("channels", "channels and window must be at least 1"));
        }
        if self.stride == 0 {
            return Err(field("stride", "must be at least 1"));
        }
        let [_, c, w] = self.input.shape[..] else {
            return Err(field(
                "input.shape",
                format!(
                    "expected [batch, channels, window], got {:?}",
                    self.input.shape
                ),
            ));
        };
        if c != self.channels as i64 || w != self.window as i64 {
            return Err(field(
                "input.shape",
                format!(
                    "{:?} disagrees with channels = {} and window = {}",
                    self.input.shape, self.channels, self.window
                ),
            ));
        }
        let [_, k] = self.output.shape[..] else {
            return Err(field(
                "output.shape",
                format!("expected [batch, classes], got {:?}", self.output.shape),
            ));
        };
        if k != self.labels.len() as i64 || self.labels.is_empty() {
            return Err(field(
                "labels",
                format!("{} labels for an output of {k} classes", self.labels.len()),
            ));
        }
        let n = &self.normalization;
        if n.mean.len() != self.channels || n.std.len() != self.channels {
            return Err(field(
                "normalization",
                format!(
                    "needs one mean and one std per channel ({}), got {} and {}",
                    self.channels,
                    n.mean.len(),
                    n.std.len()
                ),
            ));
        }
        if n.std.iter().any(|s| !s.is_finite() || *s <= 0.0)
            || n.mean.iter().any(|m| !m.is_finite())
        {
            return Err(field(
                "normalization",
                "means must be finite and stds finite and positive",
            ));
        }
        Ok(())
    }

    /// True when the model takes a dynamic batch (hub models).
    pub fn dynamic_batch(&self) -> bool {
        self.input.shape.first() == Some(&-1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> ModelMetadata {
        serde_json::from_str(
            r#"{
              "schema": 1, "id": "basicmotions-edge", "version": "1.0.0-int8",
              "dataset": "BasicMotions", "model_file": "edge.int8.onnx",
              "model_sha256": "0000000000000000000000000000000000000000000000000000000000000000",
              "size_bytes": 1, "precision": "int8",
              "input": {"name": "window", "dtype": "float32", "shape": [1, 2, 4], "layout": "NCW"},
              "output": {"name": "probabilities", "dtype": "float32", "shape": [1, 3]},
              "channels": 2, "window": 4, "stride": 4,
              "labels": ["a", "b", "c"],
              "normalization": {"mean": [0.0, 1.0], "std": [1.0, 2.0]},
              "metrics": {"test_windows": 40, "test_accuracy": 0.975}
            }"#,
        )
        .unwrap()
    }

    #[test]
    fn sample_is_valid() {
        sample().validate().unwrap();
        assert!(!sample().dynamic_batch());
    }

    #[test]
    fn disagreeing_fields_are_named() {
        type Spoil = fn(&mut ModelMetadata);
        let cases: Vec<(Spoil, &str)> = vec![
            (|m| m.channels = 3, "input.shape"),
            (|m| m.labels.pop().map(drop).unwrap_or(()), "labels"),
            (|m| m.normalization.std[1] = 0.0, "normalization"),
            (
                |m| m.normalization.mean.pop().map(drop).unwrap_or(()),
                "normalization",
            ),
            (|m| m.stride = 0, "stride"),
            (|m| m.model_sha256 = "xyz".into(), "model_sha256"),
            (|m| m.schema = 2, "schema"),
            (|m| m.input.shape = vec![2, 4], "input.shape"),
        ];
        for (mutate, name) in cases {
            let mut m = sample();
            mutate(&mut m);
            let e = m.validate().unwrap_err().to_string();
            assert!(e.contains(&format!("`{name}`")), "{name}: {e}");
        }
    }

    #[test]
    fn model_path_is_relative_to_the_metadata() {
        let m = sample();
        assert_eq!(
            m.model_path(Path::new("models/basicmotions/edge.int8.json")),
            Path::new("models/basicmotions/edge.int8.onnx")
        );
    }
}
