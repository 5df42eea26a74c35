//! The `cuda` feature's backend: hub models on an NVIDIA GPU with tract-cuda.
//!
//! It exists so that a hub with a GPU can serve the heavier models from it
//! behind the same [`Backend`]/[`BatchRunner`] traits (and the same dynamic
//! batcher) as tract on the CPU: the checked graph is handed to tract's
//! `cuda` runtime (tract-cuda 0.23.9), which rewrites the ops it has kernels
//! for into GPU ops, uploads the weights once, and copies the outputs back
//! to the host; the runner gets plain `f32` probabilities, as on the CPU.
//!
//! Without a GPU: tract-cuda opens the CUDA libraries at run time (cudarc's
//! dynamic loading), so this builds on a machine with no CUDA install, and
//! nothing is loaded until `--device cuda` is asked for. Then
//! [`check_available`] loads the driver, initialises it and opens the
//! runtime, NVRTC, cuBLAS and cuDNN libraries, then creates the CUDA
//! context (compiling tract's kernels with NVRTC on first use, cached
//! under `~/.cache/tract/`): any step that fails is
//! [`DeviceError::CudaUnavailable`] with tract-cuda's own reason (no
//! `libcuda.so`, `cuInit` failing for want of a device, a missing
//! library or toolkit header), before any model is loaded. tract-cuda
//! panics in places where it cannot create its context or a stream; every
//! call into it here runs under [`std::panic::catch_unwind`], so those
//! panics come back as errors, without the panic report on stderr.
//!
//! CUDA streams are per thread in tract-cuda: a runner must stay on the
//! worker thread that first runs it (the service's workers do), and each
//! worker thread gets its stream the first time it runs a batch.

use std::any::Any;
use std::cell::Cell;
use std::panic::{self, AssertUnwindSafe};
use std::sync::{Arc, Once};

use conveyor_model::CheckedModel;
use tract_onnx::prelude::*;

use super::backend::{Backend, BackendError, BatchRunner, Device, DeviceError};

/// The name tract-cuda registers its runtime under.
const RUNTIME: &str = "cuda";

/// Checks that this machine can run tract-cuda: the driver and the CUDA
/// libraries load, a device is there, and a context and a stream (with
/// their cuBLAS and cuDNN handles) can be created on it.
pub fn check_available() -> Result<(), DeviceError> {
    // Loads libcuda itself (without cudarc, which panics on a missing
    // library), calls cuInit and checks the driver's version, then probes
    // the other libraries; the result is cached once it is Ok.
    tract_cuda::utils::ensure_cuda_runtime_dependencies("tract-cuda")
        .map_err(|e| DeviceError::CudaUnavailable(format!("{e:#}")))?;
    // The context (device 0, the kernels) and this thread's stream.
    guarded(|| tract_cuda::with_cuda_stream(|_| Ok(())))
        .and_then(|r| r.map_err(|e| format!("{e:#}")))
        .map_err(DeviceError::CudaUnavailable)
}

/// Prepares a checked model for the GPU.
pub fn prepare(checked: CheckedModel) -> Result<Arc<dyn Backend>, DeviceError> {
    check_available()?;
    let CheckedModel {
        meta,
        metadata_path,
        typed,
    } = checked;
    let failed = |cause: String| DeviceError::Prepare {
        model: metadata_path.display().to_string(),
        device: Device::Cuda,
        cause,
    };
    let runtime = runtime_for_name(RUNTIME)
        .map_err(|e| DeviceError::CudaUnavailable(format!("{e:#}")))?
        .ok_or_else(|| failed(format!("tract has no {RUNTIME:?} runtime registered")))?;
    // Translates the ops tract-cuda has kernels for (the others stay on
    // the CPU, with copies in between), optimises, plans, uploads the
    // weights.
    let plan = guarded(|| runtime.prepare(typed))
        .and_then(|r| r.map_err(|e| format!("{e:#}")))
        .map_err(failed)?;
    Ok(Arc::new(TractCuda {
        plan: Arc::from(plan),
        per_window: meta.channels * meta.window,
        shape: [meta.channels, meta.window],
        classes: meta.labels.len(),
    }))
}

/// A model prepared for the GPU by tract-cuda.
struct TractCuda {
    plan: Arc<dyn Runnable>,
    per_window: usize,
    /// `[channels, window]`.
    shape: [usize; 2],
    classes: usize,
}

impl Backend for TractCuda {
    fn name(&self) -> &'static str {
        "tract-cuda"
    }

    fn runner(&self) -> Result<Box<dyn BatchRunner>, BackendError> {
        let state = guarded(|| self.plan.spawn())
            .and_then(|r| r.map_err(|e| format!("{e:#}")))
            .map_err(BackendError)?;
        Ok(Box::new(TractCudaRunner {
            state,
            per_window: self.per_window,
            shape: self.shape,
            classes: self.classes,
        }))
    }
}

struct TractCudaRunner {
    state: Box<dyn State>,
    per_window: usize,
    shape: [usize; 2],
    classes: usize,
}

impl BatchRunner for TractCudaRunner {
    fn run(&mut self, n: usize, input: Vec<f32>) -> Result<Vec<f32>, BackendError> {
        if n == 0 || input.len() != n * self.per_window {
            return Err(BackendError(format!(
                "got {} input values for {n} windows, the model takes n x {} x {}",
                input.len(),
                self.shape[0],
                self.shape[1]
            )));
        }
        let tensor = Tensor::from_shape(&[n, self.shape[0], self.shape[1]], &input)
            .map_err(|e| BackendError(format!("{e:#}")))?;
        let state = &mut self.state;
        let outputs = guarded(|| state.run(tvec!(tensor.into_tvalue())))
            .and_then(|r| r.map_err(|e| format!("{e:#}")))
            .map_err(|e| BackendError(format!("inference failed on the GPU: {e}")))?;
        let output = outputs
            .first()
            .ok_or_else(|| BackendError("the model returned no output".into()))?;
        // The plan's outputs are synced back to the host by tract-cuda.
        let flat: Vec<f32> = output
            .to_plain_array_view::<f32>()
            .map_err(|e| BackendError(format!("{e:#}")))?
            .iter()
            .copied()
            .collect();
        if flat.len() != n * self.classes {
            return Err(BackendError(format!(
                "the model returned {} values for {n} windows of {} classes",
                flat.len(),
                self.classes
            )));
        }
        if flat.iter().any(|v| !v.is_finite()) {
            return Err(BackendError("the model returned a non-finite value".into()));
        }
        Ok(flat)
    }
}

thread_local! {
    /// Set while this thread runs [`guarded`]: its panics are reported as
    /// errors, not by the panic hook.
    static GUARDED: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` (a call into tract-cuda), turning a panic into an error with
/// the panic's message. The process's panic hook stays silent for panics
/// caught here and reports all others as before.
fn guarded<R>(f: impl FnOnce() -> R) -> Result<R, String> {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if !GUARDED.with(Cell::get) {
                previous(info);
            }
        }));
    });
    let outer = GUARDED.with(|g| g.replace(true));
    let result = panic::catch_unwind(AssertUnwindSafe(f));
    GUARDED.with(|g| g.set(outer));
    result.map_err(|payload| format!("tract-cuda panicked: {}", panic_message(&*payload)))
}

fn panic_message(payload: &(dyn Any + Send)) -> &str {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s
    } else {
        "(no message)"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_in_tract_cuda_comes_back_as_an_error() {
        let caught = guarded(|| -> u32 { panic!("Could not create CUDA context: {}", 7) });
        assert_eq!(
            caught,
            Err("tract-cuda panicked: Could not create CUDA context: 7".to_string())
        );
        assert_eq!(guarded(|| 3), Ok(3));
        // Nested: the outer guard still holds after the inner one.
        let nested = guarded(|| {
            let inner = guarded::<()>(|| panic!("inner"));
            assert!(inner.is_err());
            panic!("outer")
        });
        assert_eq!(nested, Err::<(), _>("tract-cuda panicked: outer".into()));
        assert!(!GUARDED.with(Cell::get));
    }
}
