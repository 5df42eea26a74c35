//! The `cuda` feature's backend, on whatever machine runs the tests.
//!
//! Without a usable GPU (no driver, no device, a missing CUDA library):
//! `--device cuda` must be refused with the reason, by the device check
//! and by the loader, never with a panic. With one: the GPU must give the
//! CPU's probabilities for the same batch.
#![cfg(feature = "cuda")]

use std::path::Path;

use cloud_hub::inference::backend::{self, Device, DeviceError};

fn hub_model() -> std::path::PathBuf {
    Path::new(
        &std::env::var_os("CARGO_MANIFEST_DIR")
            .expect("run by cargo, which sets CARGO_MANIFEST_DIR"),
    )
    .join("../models/basicmotions/hub.fp32.json")
}

#[test]
fn cuda_is_refused_with_a_reason_or_matches_the_cpu() {
    let metadata = &hub_model();
    match backend::check_device(Device::Cuda) {
        Err(e) => no_gpu(metadata, e),
        Ok(()) => with_gpu(metadata),
    }
}

fn no_gpu(metadata: &Path, e: DeviceError) {
    let message = e.to_string();
    eprintln!("no usable GPU here: {message}");
    assert!(
        matches!(e, DeviceError::CudaUnavailable(_)),
        "expected CudaUnavailable, got {e:?}"
    );
    assert!(
        message.contains("no usable CUDA GPU"),
        "the message should say there is no usable CUDA GPU: {message}"
    );
    // The loader refuses too, with an error (a panic fails the test).
    let loaded = backend::load(metadata, Device::Cuda);
    let e = match loaded {
        Ok((_, backend)) => panic!(
            "check_device(Cuda) failed but load(.., Cuda) gave backend {}",
            backend.name()
        ),
        Err(e) => e,
    };
    assert!(
        e.to_string().contains("no usable CUDA GPU"),
        "load(.., Cuda) should give the device check's reason: {e}"
    );
    // And the CPU still serves the model.
    backend::load(metadata, Device::Cpu).expect("the CPU backend loads the hub model");
}

fn with_gpu(metadata: &Path) {
    const N: usize = 3;
    let (meta, cuda) = backend::load(metadata, Device::Cuda).expect("load the model for CUDA");
    let (_, cpu) = backend::load(metadata, Device::Cpu).expect("load the model for the CPU");
    assert_eq!(cuda.name(), "tract-cuda");
    let per_window = meta.channels * meta.window;
    let classes = meta.labels.len();
    // Three different, deterministic, roughly standardised windows.
    let input: Vec<f32> = (0..N * per_window)
        .map(|i| ((i as f32) * 0.37).sin() * (1.0 + (i / per_window) as f32 * 0.5))
        .collect();
    let on_cpu = cpu
        .runner()
        .unwrap()
        .run(N, input.clone())
        .expect("CPU run");
    let mut runner = cuda.runner().unwrap();
    // Twice: the second run reuses the worker's stream and state.
    for _ in 0..2 {
        let on_gpu = runner.run(N, input.clone()).expect("GPU run");
        assert_eq!(on_gpu.len(), N * classes);
        assert_eq!(on_cpu.len(), N * classes);
        for (i, (g, c)) in on_gpu.iter().zip(&on_cpu).enumerate() {
            assert!(
                (g - c).abs() <= 1e-4,
                "window {} class {}: GPU {g} vs CPU {c}",
                i / classes,
                i % classes
            );
        }
        for row in on_gpu.chunks(classes) {
            let sum: f32 = row.iter().sum();
            assert!((sum - 1.0).abs() < 1e-3, "probabilities sum to {sum}");
        }
    }
    // A batch of another size goes through the same plan.
    let one = runner
        .run(1, input[..per_window].to_vec())
        .expect("GPU run of 1");
    for (g, c) in one.iter().zip(&on_cpu[..classes]) {
        assert!((g - c).abs() <= 1e-4, "batch of 1: GPU {g} vs CPU {c}");
    }
}
