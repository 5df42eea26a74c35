//! The committed models (`models/*/*.json`, and the edge variants in
//! `models/basicmotions/{v2,bad-shuffled}/`) loaded and run by the model
//! crate: parity with ONNX Runtime's reference outputs, and hostile or
//! mismatched models refused with a reason. (Moved from the edge agent's
//! `tests/inference.rs`; the tests through the pipeline stayed there.)

use std::path::{Path, PathBuf};
use std::sync::Arc;

use conveyor_model::{ModelError, OnnxModel, Recording};
use conveyor_shared::ModelMetadata;
use prost::Message;
use sha2::{Digest, Sha256};

fn models_dir() -> PathBuf {
    Path::new(
        &std::env::var_os("CARGO_MANIFEST_DIR")
            .expect("run by cargo, which sets CARGO_MANIFEST_DIR"),
    )
    .join("../../models")
}

/// Where the models under test are: the committed ones, or (to try the
/// toolchain's output before committing it) `CONVEYOR_MODELS_DIR`.
fn trained_dir() -> PathBuf {
    std::env::var_os("CONVEYOR_MODELS_DIR").map_or_else(models_dir, PathBuf::from)
}

/// The later versions of an edge model `train.py` builds (its `variants`),
/// int8 only: the OTA demo's update and the rollout tests' bad candidate.
const VARIANTS: [&str; 2] = ["basicmotions/v2", BAD_CANDIDATE];

/// `basicmotions-edge` `2.1.0-int8`: a test fixture trained on shuffled
/// labels, which passes every static check and predicts wrong.
const BAD_CANDIDATE: &str = "basicmotions/bad-shuffled";

/// Every model metadata file committed under `models/<dataset>/`, and the
/// variants' under `models/<dataset>/<folder>/`.
fn all_models() -> Vec<PathBuf> {
    let mut out = Vec::new();
    for ds in ["basicmotions", "acsf1"] {
        for name in ["edge.int8", "edge.fp32", "hub.fp32"] {
            out.push(trained_dir().join(ds).join(format!("{name}.json")));
        }
    }
    for dir in VARIANTS {
        out.push(trained_dir().join(dir).join("edge.int8.json"));
    }
    for p in &out {
        assert!(
            p.exists(),
            "missing committed model metadata {}",
            p.display()
        );
    }
    out
}

#[derive(serde::Deserialize)]
struct Reference {
    cases: Vec<Case>,
}

#[derive(serde::Deserialize)]
struct Case {
    input: Vec<f32>,
    output: Vec<f32>,
}

/// Largest difference allowed between tract's and ONNX Runtime's
/// probabilities. fp32 graphs differ only in summation order (seen: under
/// 4e-7 over every test window). int8 graphs compute the same integer
/// arithmetic but may round a requantisation one step apart: over every
/// test window the largest difference seen was 5e-3 (ACSF1 int8), with the
/// same class picked every time. A fused-softmax fault (every output 1.0)
/// is off by more than 0.5.
fn tolerance(meta: &ModelMetadata) -> f32 {
    if meta.precision == "int8" {
        1e-2
    } else {
        1e-4
    }
}

#[test]
fn tract_matches_onnx_runtime_reference_outputs() {
    for path in all_models() {
        let model = Arc::new(OnnxModel::load(&path, 1).unwrap());
        let meta = model.meta().clone();
        let reference = load_reference(&path);
        assert!(!reference.cases.is_empty());
        let mut runner = model.runner().unwrap();
        let mut worst = 0f32;
        for (i, case) in reference.cases.iter().enumerate() {
            let got = runner.run(case.input.clone()).unwrap().swap_remove(0);
            assert_eq!(got.len(), case.output.len());
            let diff = max_diff(&got, &case.output);
            worst = worst.max(diff);
            assert!(
                diff <= tolerance(&meta),
                "{}: case {i}: tract {got:?} vs onnxruntime {:?} (max diff {diff})",
                path.display(),
                case.output
            );
            let argmax = |v: &[f32]| {
                v.iter()
                    .enumerate()
                    .max_by(|a, b| a.1.total_cmp(b.1))
                    .unwrap()
                    .0
            };
            assert_eq!(
                argmax(&got),
                argmax(&case.output),
                "{}: case {i}",
                path.display()
            );
        }
        eprintln!(
            "{}@{}: {} cases, max |tract - onnxruntime| = {worst:.2e} (tolerance {:.0e})",
            meta.id,
            meta.version,
            reference.cases.len(),
            tolerance(&meta)
        );
    }
}

/// The loader fuses each QuantizeLinear -> DequantizeLinear pair into one
/// pass (`conveyor_model::fake_quant`); that must change no bit of any
/// answer. tract's own plan of the same checked graph, unfused, is the
/// reference, on every recorded window of every model; the int8 models
/// must actually have had pairs to fuse (else this would prove nothing).
#[test]
fn the_fused_quantize_gives_tract_s_own_bits() {
    use conveyor_model::{fake_quant, load_checked, BatchSize};
    use tract_onnx::prelude::*;
    use tract_onnx::tract_core::ops::quant::QuantizeLinearU8;
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    for path in all_models() {
        let unfused = load_checked(&path, BatchSize::Fixed(1))
            .unwrap()
            .typed
            .into_optimized()
            .unwrap();
        let quantizers = unfused
            .nodes()
            .iter()
            .filter(|n| {
                n.op_as::<tract_onnx::tract_core::ops::element_wise::ElementWiseOp>()
                    .is_some_and(|e| e.0.downcast_ref::<QuantizeLinearU8>().is_some())
            })
            .count();
        let mut fused = unfused.clone();
        let (pairs, lone) = fake_quant::fuse_fake_quant(&mut fused).unwrap();
        let meta = ModelMetadata::load(&path).unwrap();
        if meta.precision == "int8" {
            assert!(pairs > 0, "{}: no pair fused", path.display());
        }
        assert_eq!(pairs + lone, quantizers, "{}", path.display());

        let mut plain = unfused.into_runnable().unwrap().spawn().unwrap();
        let model = Arc::new(OnnxModel::load(&path, 1).unwrap());
        let mut runner = model.runner().unwrap();
        let shape = [1, meta.channels, meta.window];
        for (i, case) in load_reference(&path).cases.iter().enumerate() {
            let x = Tensor::from_shape(&shape, &case.input).unwrap();
            let want = plain.run(tvec!(x.into_tvalue())).unwrap();
            let want = want[0].try_as_plain_ram().unwrap();
            let got = runner.run(case.input.clone()).unwrap().swap_remove(0);
            assert_eq!(
                bits(&got),
                bits(want.as_slice::<f32>().unwrap()),
                "{}: case {i}",
                path.display()
            );
        }
        eprintln!(
            "{}@{}: {pairs} Q->DQ pairs fused, {lone} lone quantize(s) made branch-free, same bits",
            meta.id, meta.version
        );
    }
}

/// The fault the parity test exists for: tract fuses `DequantizeLinear ->
/// Softmax -> QuantizeLinear` into a lookup table that answers 1.0 for
/// every class. A model quantised with its Softmax inside the int8 region
/// must fail the very comparison the committed models pass.
#[test]
fn the_parity_check_catches_a_quantised_softmax() {
    use tract_onnx::pb::{NodeProto, TensorProto};
    let path = trained_dir().join("basicmotions/edge.int8.json");
    let meta = ModelMetadata::load(&path).unwrap();
    let onnx = std::fs::read(meta.model_path(&path)).unwrap();
    let mut proto = tract_onnx::pb::ModelProto::decode(&onnx[..]).unwrap();
    let graph = proto.graph.as_mut().unwrap();
    let softmax = graph
        .node
        .iter_mut()
        .find(|n| n.op_type == "Softmax")
        .expect("the int8 model keeps its Softmax in fp32");
    let output = softmax.output[0].clone();
    softmax.output[0] = "softmax_fp32".into();
    let node = |op: &str, input: &str, out: &str| NodeProto {
        op_type: op.into(),
        name: format!("{op}_after_softmax"),
        input: vec![input.into(), "sm_scale".into(), "sm_zero".into()],
        output: vec![out.into()],
        ..Default::default()
    };
    graph
        .node
        .push(node("QuantizeLinear", "softmax_fp32", "softmax_u8"));
    graph
        .node
        .push(node("DequantizeLinear", "softmax_u8", &output));
    graph.initializer.push(TensorProto {
        name: "sm_scale".into(),
        data_type: 1, // FLOAT
        float_data: vec![1.0 / 255.0],
        ..Default::default()
    });
    graph.initializer.push(TensorProto {
        name: "sm_zero".into(),
        data_type: 2, // UINT8
        int32_data: vec![0],
        ..Default::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let bytes = proto.encode_to_vec();
    std::fs::write(dir.path().join("edge.int8.onnx"), &bytes).unwrap();
    let mut json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    json["model_sha256"] = hex::encode(Sha256::digest(&bytes)).into();
    let bad = dir.path().join("edge.int8.json");
    std::fs::write(&bad, serde_json::to_vec(&json).unwrap()).unwrap();

    let reference = load_reference(&path);
    let model = Arc::new(OnnxModel::load(&bad, 1).unwrap());
    let mut runner = model.runner().unwrap();
    let worst = reference
        .cases
        .iter()
        .map(|c| max_diff(&runner.run(c.input.clone()).unwrap()[0], &c.output))
        .fold(0f32, f32::max);
    eprintln!("quantised softmax: max diff {worst}");
    // An engine that ran this graph correctly would be within one uint8
    // step (1/255) of the reference; tract's fused table is not.
    assert!(
        worst > tolerance(&meta),
        "a quantised Softmax went unnoticed: max diff {worst}"
    );
}

/// The bad candidate is a plausible update of `basicmotions-edge` (same id,
/// input, output, labels and normalisation; it loads, which is every check
/// the agent makes before running a model), but on the whole BasicMotions
/// test split, read by the replay source's parser, normalised as the agent
/// does and run by tract, it is mostly wrong where 1.0.0 is right.
#[test]
fn the_bad_candidate_passes_the_static_checks_and_predicts_wrong() {
    let good_path = trained_dir().join("basicmotions/edge.int8.json");
    let bad_path = trained_dir().join(BAD_CANDIDATE).join("edge.int8.json");
    let good = Arc::new(OnnxModel::load(&good_path, 1).unwrap());
    let bad = Arc::new(OnnxModel::load(&bad_path, 1).unwrap());
    let (g, b) = (good.meta(), bad.meta());
    assert_eq!(b.id, g.id);
    assert_eq!(b.version, "2.1.0-int8");
    assert_eq!(b.precision, g.precision);
    assert_eq!((&b.input, &b.output), (&g.input, &g.output));
    assert_eq!(
        (b.channels, b.window, b.stride),
        (g.channels, g.window, g.stride)
    );
    assert_eq!(b.labels, g.labels);
    assert_eq!(b.normalization, g.normalization);

    let test = Recording::load(
        &models_dir().join("data/BasicMotions/BasicMotions_TEST.ts"),
        None,
    )
    .unwrap();
    let (c, w) = (g.channels, g.window);
    assert_eq!(test.rows.len() % w, 0);
    let norm = &g.normalization;
    let (mut runner_good, mut runner_bad) = (good.runner().unwrap(), bad.runner().unwrap());
    let (mut n, mut good_right, mut bad_right, mut agree) = (0usize, 0usize, 0usize, 0usize);
    for series in test.rows.chunks(w) {
        // As the agent's window does it: in f64, then to f32, NCW.
        let mut input = vec![0f32; c * w];
        for (t, row) in series.iter().enumerate() {
            for (ch, v) in row.values.iter().enumerate() {
                input[ch * w + t] = ((v - norm.mean[ch]) / norm.std[ch]) as f32;
            }
        }
        let label = &series[0].label;
        let ig = runner_good.classify(input.clone()).unwrap().class_index;
        let ib = runner_bad.classify(input).unwrap().class_index;
        n += 1;
        good_right += usize::from(&g.labels[ig] == label);
        bad_right += usize::from(&b.labels[ib] == label);
        agree += usize::from(ig == ib);
    }
    let frac = |k: usize| k as f64 / n as f64;
    eprintln!(
        "tract on {n} test windows: {}@{} accuracy {:.4}; {}@{} accuracy {:.4} \
         (metadata, onnxruntime: {:.4}), argmax agreement with {} {:.4}",
        g.id,
        g.version,
        frac(good_right),
        b.id,
        b.version,
        frac(bad_right),
        b.metrics.as_ref().unwrap().test_accuracy,
        g.version,
        frac(agree)
    );
    assert_eq!(n, 40);
    assert!(frac(good_right) >= 0.95, "1.0.0 should be right");
    // Chance is 0.25 for 4 classes; the fixture measured 0.20.
    assert!(frac(bad_right) <= 0.4, "the bad candidate is too good");
    assert!(frac(agree) <= 0.4, "the bad candidate agrees with 1.0.0");
}

fn load_reference(model_json: &Path) -> Reference {
    let path = model_json
        .parent()
        .unwrap()
        .join("reference")
        .join(model_json.file_name().unwrap());
    serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max)
}

// ---- hostile and mismatched models -------------------------------------

struct Fixture {
    dir: tempfile::TempDir,
    meta: serde_json::Value,
    onnx: Vec<u8>,
}

impl Fixture {
    fn new() -> Self {
        let src = trained_dir().join("basicmotions");
        let meta: serde_json::Value =
            serde_json::from_slice(&std::fs::read(src.join("edge.fp32.json")).unwrap()).unwrap();
        let onnx = std::fs::read(src.join("edge.fp32.onnx")).unwrap();
        Fixture {
            dir: tempfile::tempdir().unwrap(),
            meta,
            onnx,
        }
    }

    /// Writes the model and its metadata; `rehash` makes the metadata's
    /// SHA-256 match the (possibly damaged) file.
    fn write(&self, rehash: bool) -> PathBuf {
        let mut meta = self.meta.clone();
        meta["model_file"] = "model.onnx".into();
        if rehash {
            meta["model_sha256"] = hex::encode(Sha256::digest(&self.onnx)).into();
        }
        std::fs::write(self.dir.path().join("model.onnx"), &self.onnx).unwrap();
        let path = self.dir.path().join("model.json");
        std::fs::write(&path, serde_json::to_vec(&meta).unwrap()).unwrap();
        path
    }

    fn load(&self, rehash: bool) -> Result<OnnxModel, ModelError> {
        OnnxModel::load(&self.write(rehash), 1)
    }
}

fn assert_err(result: Result<OnnxModel, ModelError>, expect: &[&str]) -> ModelError {
    let e = result.expect_err("the model must be refused");
    let text = e.to_string();
    assert!(text.contains("model.json"), "names the model: {text}");
    for s in expect {
        assert!(text.contains(s), "{text:?} should mention {s:?}");
    }
    e
}

#[test]
fn the_unaltered_fixture_loads() {
    Fixture::new().load(true).unwrap();
}

#[test]
fn missing_model_file_is_named() {
    let f = Fixture::new();
    let path = f.write(false);
    std::fs::remove_file(f.dir.path().join("model.onnx")).unwrap();
    let e = assert_err(OnnxModel::load(&path, 1), &["model.onnx", "No such file"]);
    assert!(matches!(e, ModelError::ReadFile { .. }));
}

#[test]
fn truncated_model_fails_its_checksum_or_its_parse() {
    let mut f = Fixture::new();
    f.onnx.truncate(f.onnx.len() / 2);
    let e = assert_err(f.load(false), &["model_sha256", "truncated"]);
    assert!(matches!(e, ModelError::HashMismatch { .. }));
    // Even with a checksum that matches the damaged file, the parse fails.
    let e = assert_err(f.load(true), &["not a valid ONNX model"]);
    assert!(matches!(e, ModelError::Malformed { .. }), "{e}");
}

#[test]
fn garbage_bytes_are_not_a_model() {
    let mut f = Fixture::new();
    f.onnx = b"\x00\x01this is not protobuf at all\xff\xfe".repeat(10);
    let e = assert_err(f.load(true), &["not a valid ONNX model"]);
    assert!(matches!(e, ModelError::Malformed { .. }), "{e}");
}

#[test]
fn unsupported_operator_is_named() {
    let mut f = Fixture::new();
    let mut proto = tract_onnx::pb::ModelProto::decode(&f.onnx[..]).unwrap();
    let graph = proto.graph.as_mut().unwrap();
    let node = graph
        .node
        .iter_mut()
        .find(|n| n.op_type == "Relu")
        .expect("the edge model has a Relu");
    node.op_type = "FancyReluFromTheFuture".into();
    f.onnx = proto.encode_to_vec();
    let e = assert_err(f.load(true), &["FancyReluFromTheFuture", "not supported"]);
    assert!(matches!(e, ModelError::UnsupportedOperator { .. }), "{e}");
}

#[test]
fn metadata_that_disagrees_with_the_model_is_refused() {
    // Metadata says 3 channels; the model takes 6.
    let mut f = Fixture::new();
    f.meta["channels"] = 3.into();
    f.meta["input"]["shape"] = serde_json::json!([1, 3, 100]);
    f.meta["normalization"]["mean"] = serde_json::json!([0.0, 0.0, 0.0]);
    f.meta["normalization"]["std"] = serde_json::json!([1.0, 1.0, 1.0]);
    let e = assert_err(f.load(true), &["shape mismatch", "3 channels"]);
    assert!(matches!(e, ModelError::Shape { .. }), "{e}");

    // Metadata lists 5 labels; the model has 4 outputs.
    let mut f = Fixture::new();
    f.meta["labels"]
        .as_array_mut()
        .unwrap()
        .push("Juggling".into());
    f.meta["output"]["shape"] = serde_json::json!([1, 5]);
    let e = assert_err(f.load(true), &["shape mismatch", "5 labels"]);
    assert!(matches!(e, ModelError::Shape { .. }), "{e}");

    // Metadata that contradicts itself names the field.
    let mut f = Fixture::new();
    f.meta["normalization"]["std"] = serde_json::json!([1.0]);
    assert_err(f.load(true), &["`normalization`"]);

    // Not JSON at all.
    let f = Fixture::new();
    let path = f.write(true);
    std::fs::write(&path, b"{ this is not json").unwrap();
    let e = assert_err(OnnxModel::load(&path, 1), &["not valid"]);
    assert!(matches!(e, ModelError::Metadata { .. }));
}
