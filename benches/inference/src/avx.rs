//! The AVX upper-state fix, as a plan evaluation hook.
//!
//! tract-linalg 0.23.9's AVX-512 matrix-multiply kernels (`avx512_mmm_*`,
//! hand-written assembly) clear the vector registers on entry
//! (`vzeroall`) but return without `vzeroupper`. Everything tract runs
//! after them that is compiled for the baseline x86-64 target (legacy SSE
//! encoding: quantize/dequantize, im2col, pad, reductions, our own glue)
//! then executes with the upper halves of the vector registers "dirty",
//! which costs a transition or a false dependency on every SSE
//! instruction: 2-4x slower loops on this AMD EPYC (measured), and a known
//! penalty on Intel cores as well. ONNX Runtime's kernels end with
//! `vzeroupper`, as compilers do for AVX code.
//!
//! [`eval_then_vzeroupper`] is `tract_core::plan::eval` followed by a
//! `vzeroupper` (when the CPU has AVX): a drop-in evaluation function for
//! `SimpleState::run_plan_with_eval`.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::OpState;
use tract_onnx::tract_core::plan::EvalContext;

/// `vzeroupper`, when the CPU has AVX; nothing elsewhere.
#[inline]
pub fn vzeroupper() {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx") {
        // Zeroes bits 128 and up of every vector register: declared as a
        // clobber of all caller-saved registers, which on x86-64 SysV are
        // all of the vector registers.
        unsafe {
            std::arch::asm!(
                "vzeroupper",
                clobber_abi("C"),
                options(nomem, nostack, preserves_flags)
            )
        }
    }
}

/// `tract_core::plan::eval`, then [`vzeroupper`].
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
