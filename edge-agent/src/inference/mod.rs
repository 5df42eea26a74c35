//! On-device inference: ONNX models run by tract on windows of readings.
//!
//! The `conveyor-model` crate loads and checks a model and runs it;
//! `window` cuts streams into windows (plain data); `stage` is the
//! pipeline stage that joins the two and lets a model be swapped between
//! windows; `shadow` tallies a candidate run beside the model.

pub mod shadow;
pub mod stage;
pub mod window;

pub use stage::{InferenceConfig, ModelSlot, SwapError};
