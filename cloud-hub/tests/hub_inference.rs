//! The hub's inference service on the committed hub models and the real
//! held-out test data: dynamic batching gives the same answers as one
//! window at a time, the accuracy is the model card's, and bad requests
//! (unknown model, wrong shape, bad values, overload, a failing or
//! panicking model) fail alone while the service keeps answering.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cloud_hub::cascade::split::{test_windows, TestWindow};
use cloud_hub::inference::backend::{self, Backend, BackendError, BatchRunner, Device};
use cloud_hub::inference::batcher::BatchPolicy;
use cloud_hub::inference::service::ServeSpec;
use cloud_hub::inference::stats::InferenceMetrics;
use cloud_hub::inference::{InferError, InferenceService};
use conveyor_shared::{ModelMetadata, Prediction};
use futures_util::future::join_all;

fn repo() -> PathBuf {
    Path::new(
        &std::env::var_os("CARGO_MANIFEST_DIR")
            .expect("run by cargo, which sets CARGO_MANIFEST_DIR"),
    )
    .join("..")
}

fn hub_model(dataset: &str) -> PathBuf {
    repo().join("models").join(dataset).join("hub.fp32.json")
}

fn serve(
    meta: &ModelMetadata,
    backend: Arc<dyn Backend>,
    max_batch: usize,
    max_delay_ms: u64,
    workers: usize,
    queue: usize,
) -> InferenceService {
    InferenceService::from_specs(
        Device::Cpu,
        vec![ServeSpec {
            meta: meta.clone(),
            backend,
            policy: BatchPolicy {
                max_batch,
                max_delay: Duration::from_millis(max_delay_ms),
            },
            workers,
            queue,
        }],
        InferenceMetrics::default(),
    )
    .unwrap()
}

async fn one_by_one(
    s: &InferenceService,
    meta: &ModelMetadata,
    w: &[TestWindow],
) -> Vec<Prediction> {
    let mut out = Vec::new();
    for x in w {
        out.push(s.infer(&meta.id, meta.channels, &x.values).await.unwrap());
    }
    out
}

async fn all_at_once(
    s: &InferenceService,
    meta: &ModelMetadata,
    w: &[TestWindow],
) -> Vec<Prediction> {
    join_all(
        w.iter()
            .map(|x| s.infer(&meta.id, meta.channels, &x.values)),
    )
    .await
    .into_iter()
    .map(Result::unwrap)
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_answers_equal_unbatched_answers_and_the_card_accuracy() {
    for dataset in ["basicmotions", "acsf1"] {
        let (meta, backend) = backend::load(&hub_model(dataset), Device::Cpu).unwrap();
        let windows = test_windows(&repo().join("models/data"), &meta).unwrap();
        assert_eq!(
            windows.len(),
            meta.metrics.as_ref().unwrap().test_windows,
            "{dataset}"
        );

        let single = serve(&meta, backend.clone(), 1, 0, 1, 1024);
        let batched = serve(&meta, backend, 32, 50, 2, 1024);
        let a = one_by_one(&single, &meta, &windows).await;
        let b = all_at_once(&batched, &meta, &windows).await;

        let (batches, run) = batched.metrics().batches(&meta.id);
        assert_eq!(run as usize, windows.len());
        assert!(
            batches < run,
            "{dataset}: {run} concurrent requests ran in {batches} calls: no batching happened"
        );
        assert_eq!(single.metrics().batches(&meta.id).0 as usize, windows.len());
        let mut correct = 0;
        for (i, ((x, y), w)) in a.iter().zip(&b).zip(&windows).enumerate() {
            assert_eq!(x.label, y.label, "{dataset} window {i}");
            for (p, q) in x.probabilities.iter().zip(&y.probabilities) {
                assert!((p - q).abs() < 1e-5, "{dataset} window {i}: {p} vs {q}");
            }
            correct += (y.label == w.label) as usize;
        }
        let accuracy = correct as f64 / windows.len() as f64;
        assert!(
            (accuracy - meta.metrics.as_ref().unwrap().test_accuracy).abs() < 1e-9,
            "{dataset}: accuracy {accuracy}, the card says {}",
            meta.metrics.as_ref().unwrap().test_accuracy
        );
        let view = &batched.views()[0];
        assert_eq!(view.requests_ok as usize, windows.len());
        assert!(view.mean_batch > 1.0);
    }
}

#[tokio::test]
async fn bad_requests_fail_alone_and_are_counted() {
    let (meta, backend) = backend::load(&hub_model("basicmotions"), Device::Cpu).unwrap();
    let windows = test_windows(&repo().join("models/data"), &meta).unwrap();
    let s = serve(&meta, backend, 8, 1, 1, 64);

    let e = s
        .infer("no-such-model", 6, &windows[0].values)
        .await
        .unwrap_err();
    assert!(matches!(e, InferError::UnknownModel { .. }), "{e}");
    assert!(
        e.to_string().contains("basicmotions-hub"),
        "names what is served: {e}"
    );

    let e = s.infer(&meta.id, 3, &windows[0].values).await.unwrap_err();
    assert!(matches!(e, InferError::WrongShape { .. }), "{e}");
    let e = s
        .infer(&meta.id, 6, &windows[0].values[..599])
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("takes windows of 100 readings x 6 channels"),
        "{e}"
    );

    let mut nan = windows[0].values.clone();
    nan[17] = f32::NAN;
    let e = s.infer(&meta.id, 6, &nan).await.unwrap_err();
    assert_eq!(e, InferError::BadValues { index: 17 });

    // The service still answers.
    let ok = s.infer(&meta.id, 6, &windows[0].values).await.unwrap();
    assert_eq!(ok.model_id, "basicmotions-hub");

    let m = s.metrics();
    assert_eq!(m.requests("unknown", "unknown_model"), 1);
    assert_eq!(m.requests(&meta.id, "wrong_shape"), 2);
    assert_eq!(m.requests(&meta.id, "bad_values"), 1);
    assert_eq!(m.requests(&meta.id, "ok"), 1);
    assert_eq!(s.views()[0].requests_failed, 3);
}

/// A backend whose calls fail, panic or block, as told.
struct Faulty {
    classes: usize,
    mode: &'static str,
    release: Arc<AtomicBool>,
}

impl Backend for Faulty {
    fn name(&self) -> &'static str {
        "faulty"
    }
    fn runner(&self) -> Result<Box<dyn BatchRunner>, BackendError> {
        Ok(Box::new(FaultyRunner {
            classes: self.classes,
            mode: self.mode,
            release: self.release.clone(),
            calls: 0,
        }))
    }
}

struct FaultyRunner {
    classes: usize,
    mode: &'static str,
    release: Arc<AtomicBool>,
    calls: usize,
}

impl BatchRunner for FaultyRunner {
    fn run(&mut self, n: usize, _input: Vec<f32>) -> Result<Vec<f32>, BackendError> {
        self.calls += 1;
        let ok = vec![1.0 / self.classes as f32; n * self.classes];
        match (self.mode, self.calls) {
            ("fail", 1) => Err(BackendError("device lost".into())),
            ("panic", 1) => panic!("kernel bug"),
            ("short", 1) => Ok(vec![0.5]),
            ("block", _) => {
                while !self.release.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(1));
                }
                Ok(ok)
            }
            _ => Ok(ok),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_or_panicking_model_call_fails_only_its_batch() {
    let meta = ModelMetadata::load(&hub_model("basicmotions")).unwrap();
    let window = vec![0.0f32; 600];
    for mode in ["fail", "panic", "short"] {
        let backend = Arc::new(Faulty {
            classes: 4,
            mode,
            release: Default::default(),
        });
        let s = serve(&meta, backend, 4, 0, 1, 16);
        let e = s.infer(&meta.id, 6, &window).await.unwrap_err();
        assert!(matches!(e, InferError::Failed { .. }), "{mode}: {e}");
        let p = s.infer(&meta.id, 6, &window).await.unwrap();
        assert_eq!(p.probabilities.len(), 4, "{mode}: the worker carries on");
        assert_eq!(s.metrics().requests(&meta.id, "failed"), 1, "{mode}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_refuses_new_requests_instead_of_growing() {
    let meta = ModelMetadata::load(&hub_model("basicmotions")).unwrap();
    let release = Arc::new(AtomicBool::new(false));
    let backend = Arc::new(Faulty {
        classes: 4,
        mode: "block",
        release: release.clone(),
    });
    let s = Arc::new(serve(&meta, backend, 1, 0, 1, 2));
    let window = vec![0.0f32; 600];
    // One request in the (blocked) worker, one waiting for a worker in the
    // dispatcher, two in the queue: everything after that is refused.
    let mut pending = Vec::new();
    for _ in 0..12 {
        let s = s.clone();
        let w = window.clone();
        let id = meta.id.clone();
        pending.push(tokio::spawn(async move { s.infer(&id, 6, &w).await }));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    release.store(true, Ordering::SeqCst);
    let mut ok = 0;
    let mut overloaded = 0;
    for p in pending {
        match p.await.unwrap() {
            Ok(_) => ok += 1,
            Err(InferError::Overloaded { .. }) => overloaded += 1,
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert!(overloaded > 0, "nothing was refused ({ok} answered)");
    assert!(
        ok >= 3,
        "the queued requests are answered once the model frees up"
    );
    assert_eq!(s.metrics().requests(&meta.id, "overloaded"), overloaded);
}

#[test]
fn cuda_is_a_clear_error_where_it_cannot_be_used() {
    if cfg!(feature = "cuda") {
        return; // tests/cuda_unavailable.rs covers that build
    }
    let e = backend::check_device(Device::Cuda).unwrap_err().to_string();
    assert!(
        e.contains("built without CUDA support") && e.contains("--features cuda"),
        "{e}"
    );
    let e = InferenceService::start(
        &toml::from_str(&format!(
            "device = \"cuda\"\n[[models]]\nmetadata = {:?}\n",
            hub_model("acsf1")
        ))
        .unwrap(),
        InferenceMetrics::default(),
    )
    .err()
    .expect("refused");
    assert!(e.to_string().contains("cuda"), "{e}");
}

#[test]
fn a_broken_model_or_duplicate_id_refuses_to_start_naming_the_entry() {
    let dir = tempfile::tempdir().unwrap();
    let meta = std::fs::read_to_string(hub_model("acsf1")).unwrap();
    let broken = dir.path().join("hub.fp32.json");
    std::fs::write(&broken, &meta).unwrap();
    std::fs::write(dir.path().join("hub.fp32.onnx"), b"not onnx").unwrap();
    let config = |paths: &[&Path]| {
        let mut t = String::new();
        for p in paths {
            t += &format!("[[models]]\nmetadata = {p:?}\n");
        }
        toml::from_str(&t).unwrap()
    };
    let e = InferenceService::start(&config(&[&hub_model("acsf1"), &broken]), Default::default())
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.starts_with("inference.models[1]:") && e.contains("model_sha256"),
        "{e}"
    );
    let e = InferenceService::start(
        &config(&[&hub_model("acsf1"), &hub_model("acsf1")]),
        Default::default(),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("already served by inference.models[0]"), "{e}");
}
