//! A `vzeroupper` after every node tract runs.
//!
//! tract-linalg 0.23.9's AVX-512 matrix-multiply kernels (hand-written
//! assembly) return without `vzeroupper`. Everything tract runs after them
//! that is compiled for baseline x86-64 (SSE encoding: quantize and
//! dequantize, im2col, pooling, our glue) then runs with the upper halves
//! of the vector registers dirty, paying a state transition or a false
//! dependency on every SSE instruction. Measured with the inference
//! benchmark (`benches/inference.sh`): the ACSF1 int8 edge model ran 2.5x
//! faster with this hook, outputs bit-identical. Compilers and ONNX
//! Runtime's kernels end AVX code with `vzeroupper`; this is the same, at
//! node granularity, until tract's kernels do it themselves.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::OpState;
use tract_onnx::tract_core::plan::EvalContext;

/// `vzeroupper`, when the CPU has AVX; nothing elsewhere.
#[inline]
pub fn vzeroupper() {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx") {
        // SAFETY: the instruction only zeroes bits 128 and up of the
        // vector registers; it is declared as clobbering every
        // caller-saved register, which on x86-64 includes all of them, so
        // the compiler keeps nothing live in them across it.
        unsafe {
            std::arch::asm!(
                "vzeroupper",
                clobber_abi("C"),
                options(nomem, nostack, preserves_flags)
            )
        }
    }
}

/// `tract_core::plan::eval`, then `vzeroupper`: an evaluation function for
/// `SimpleState::run_plan_with_eval`.
pub fn eval_then_vzeroupper(
    session: &EvalContext<'_>,
    state: Option<&mut (dyn OpState + 'static)>,
    node: &TypedNode,
    input: TVec<TValue>,
) -> TractResult<TVec<TValue>> {
    let r = tract_onnx::tract_core::plan::eval(session, state, node, input);
    vzeroupper();
    r
}
