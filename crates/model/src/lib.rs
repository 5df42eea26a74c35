//! Conveyor's ONNX models, shared by the edge agent, the hub and the
//! benchmarks.
//!
//! It exists so that the hub (which serves models and evaluates the
//! cascade) and the benchmarks get the one model loader, with every check,
//! without linking the edge agent (its WASM runtime, its durable log).
//!
//! * [`model`]: loading a model with tract and checking it against its
//!   metadata ([`OnnxModel`], [`load_checked`]), running it
//!   ([`ModelRunner`]) and reading its answer ([`Scores`]).
//! * [`avx`]: the `vzeroupper` after every node tract runs.
//! * [`fake_quant`]: each QuantizeLinear -> DequantizeLinear pair of a QDQ
//!   int8 model as one branch-free pass, same bits.
//! * [`recording`]: the recorded data files (`.ts`, `.csv`) that replay
//!   sources play back and the reports evaluate models on.

pub mod avx;
pub mod fake_quant;
pub mod model;
pub mod recording;

pub use model::{
    load_checked, BatchSize, CheckedModel, ModelError, ModelRunner, OnnxModel, RunError, Scores,
};
pub use recording::{Recording, ReplayFileError};
