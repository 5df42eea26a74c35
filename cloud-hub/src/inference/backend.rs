//! Backends: what runs one batch of windows through a model.
//!
//! The batcher and its workers only see [`Backend`] (shared, one per
//! model) and [`BatchRunner`] (one per worker thread, with its own scratch
//! state), so tract on the CPU, tract-cuda on a GPU and, in the benchmark,
//! ONNX Runtime all sit behind the same dynamic batcher. The device is
//! chosen at run time (`--device`, `[inference] device`); a device this
//! build or this machine cannot use is refused at start with the reason.

use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use conveyor_model::{BatchSize, ModelError, ModelRunner, OnnxModel};

/// Runs batches of one model. Shared by the model's workers.
pub trait Backend: Send + Sync {
    /// `tract-cpu`, `tract-cuda`, `onnxruntime`, ...: shown in the API and
    /// the benchmark.
    fn name(&self) -> &'static str;
    /// A runner for one worker thread.
    fn runner(&self) -> Result<Box<dyn BatchRunner>, BackendError>;
}

/// One worker's handle on a backend.
pub trait BatchRunner: Send {
    /// Runs `n` windows: `input` is `n x channels x window` normalised
    /// values (NCW). Returns `n x classes` probabilities, row by row.
    fn run(&mut self, n: usize, input: Vec<f32>) -> Result<Vec<f32>, BackendError>;
}

/// A backend failure: at start (cannot prepare) or for one batch.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct BackendError(pub String);

/// Where hub models run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    /// tract on the CPU (the default).
    #[default]
    Cpu,
    /// tract-cuda on an NVIDIA GPU (needs the `cuda` cargo feature).
    Cuda,
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Device::Cpu => "cpu",
            Device::Cuda => "cuda",
        })
    }
}

impl FromStr for Device {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda),
            other => Err(format!(
                "unknown device {other:?}; expected \"cpu\" or \"cuda\""
            )),
        }
    }
}

/// Why a model cannot be served on the chosen device.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(
        "device \"cuda\" was requested but this cloud-hub was built without CUDA support; \
         rebuild with `cargo build --release -p cloud-hub --features cuda`"
    )]
    CudaNotBuilt,
    #[error("device \"cuda\" was requested but no usable CUDA GPU was found: {0}")]
    CudaUnavailable(String),
    #[error("model {model}: cannot prepare it for {device}: {cause}")]
    Prepare {
        model: String,
        device: Device,
        cause: String,
    },
}

/// Checks that `device` can be used at all on this machine with this
/// build, before any model is loaded: the clear error comes first.
pub fn check_device(device: Device) -> Result<(), DeviceError> {
    match device {
        Device::Cpu => Ok(()),
        #[cfg(feature = "cuda")]
        Device::Cuda => super::cuda::check_available(),
        #[cfg(not(feature = "cuda"))]
        Device::Cuda => Err(DeviceError::CudaNotBuilt),
    }
}

/// Loads the model described by `metadata` (every check of the edge's
/// loader) and prepares it for `device`, with a dynamic batch dimension.
pub fn load(
    metadata: &Path,
    device: Device,
) -> Result<(conveyor_shared::ModelMetadata, Arc<dyn Backend>), DeviceError> {
    match device {
        Device::Cpu => {
            let model = Arc::new(OnnxModel::load_with(metadata, BatchSize::Dynamic)?);
            Ok((model.meta().clone(), Arc::new(TractCpu { model })))
        }
        #[cfg(feature = "cuda")]
        Device::Cuda => {
            let checked = conveyor_model::load_checked(metadata, BatchSize::Dynamic)?;
            let meta = checked.meta.clone();
            Ok((meta, super::cuda::prepare(checked)?))
        }
        #[cfg(not(feature = "cuda"))]
        Device::Cuda => Err(DeviceError::CudaNotBuilt),
    }
}

/// tract on the CPU: the edge's loader and runner, with a dynamic batch.
pub struct TractCpu {
    model: Arc<OnnxModel>,
}

impl Backend for TractCpu {
    fn name(&self) -> &'static str {
        "tract-cpu"
    }

    fn runner(&self) -> Result<Box<dyn BatchRunner>, BackendError> {
        let runner = self
            .model
            .runner()
            .map_err(|e| BackendError(e.to_string()))?;
        Ok(Box::new(TractCpuRunner(runner)))
    }
}

struct TractCpuRunner(ModelRunner);

impl BatchRunner for TractCpuRunner {
    fn run(&mut self, n: usize, input: Vec<f32>) -> Result<Vec<f32>, BackendError> {
        let rows = self.0.run(input).map_err(|e| BackendError(e.to_string()))?;
        if rows.len() != n {
            return Err(BackendError(format!(
                "the model returned {} rows for {n} windows",
                rows.len()
            )));
        }
        Ok(rows.concat())
    }
}
