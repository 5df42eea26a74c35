//! On-device inference: ONNX models run by tract on windows of readings.
//!
//! `model` loads and checks a model and runs it; `window` cuts streams into
//! windows (plain data); `stage` is the pipeline stage that joins the two
//! and lets a model be swapped between windows.

pub mod avx;
pub mod model;
pub mod stage;
pub mod window;

pub use model::{ModelError, ModelRunner, OnnxModel, Scores};
pub use stage::{InferenceConfig, ModelSlot, SwapError};
