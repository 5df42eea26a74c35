//! WASM transforms: operator-written record logic (scaling, filtering,
//! featurising, redacting) shipped as small core WebAssembly modules and
//! run sandboxed by wasmtime, so that logic can change without rebuilding
//! or trusting more than the agent already is.
//!
//! The contract with a module is docs/transform-abi.md. Here:
//! `codec` (agent readings to and from the ABI's records), `module` (load, check, compile once, cache by content hash),
//! `instance` (one store, the host functions, the limits of one call),
//! `chain` (a stream's transforms in order; what a failure does),
//! `stage` (the pipeline stage, its config and hot swap),
//! `dead_letter` (where failed records are kept), and
//! `test_tool` (`edge-agent transform test`).

mod chain;
pub mod codec;
pub mod dead_letter;
mod instance;
mod module;
mod stage;
pub mod test_tool;

pub use chain::{OnDisabled, TransformCounters};
pub use dead_letter::{DeadLetter, DeadLetterStore};
pub use instance::{CallFailure, CallOutput, FailureKind, Limits, TransformInstance};
pub use module::{
    read_meta, ModuleError, TransformEngine, TransformMeta, TransformModule, HAS_COMPILER,
};
pub use stage::{ChainEntry, ChainInfo, ChainSlot, TransformStageConfig};
