//! The committed models (`models/*/*.json`) run by the agent's own code:
//! accuracy on the held-out test split through the real windowing and
//! inference stage, readings of the wrong shape, and a model swap between
//! windows. (Loading, ONNX Runtime parity and hostile models are tested
//! by `conveyor-model`'s `tests/loader.rs`.)

use std::path::{Path, PathBuf};
use std::sync::Arc;

use conveyor_model::recording::Recording;
use conveyor_shared::ModelMetadata;
use edge_agent::inference::InferenceConfig;
use edge_agent::pipeline::{Pipeline, StageConfig, StageContext, StageControl};
use edge_agent::sources::Reading;

fn models_dir() -> PathBuf {
    Path::new(
        &std::env::var_os("CARGO_MANIFEST_DIR")
            .expect("run by cargo, which sets CARGO_MANIFEST_DIR"),
    )
    .join("../models")
}

/// Where the models under test are: the committed ones, or (to try the
/// toolchain's output before committing it) `CONVEYOR_MODELS_DIR`.
fn trained_dir() -> PathBuf {
    std::env::var_os("CONVEYOR_MODELS_DIR").map_or_else(models_dir, PathBuf::from)
}

/// Every model metadata file committed under `models/<dataset>/`.
fn all_models() -> Vec<PathBuf> {
    let mut out = Vec::new();
    for ds in ["basicmotions", "acsf1"] {
        for name in ["edge.int8", "edge.fp32", "hub.fp32"] {
            let p = trained_dir().join(ds).join(format!("{name}.json"));
            assert!(
                p.exists(),
                "missing committed model metadata {}",
                p.display()
            );
            out.push(p);
        }
    }
    out
}

fn test_split(meta: &ModelMetadata) -> PathBuf {
    models_dir()
        .join("data")
        .join(&meta.dataset)
        .join(format!("{}_TEST.ts", meta.dataset))
}

/// Feeds a recording, row by row, through a pipeline holding one inference
/// stage built from config, and returns the prediction records.
fn run_pipeline(model: &Path, recording: &Recording) -> Vec<Reading> {
    run_pipeline_with(model, recording, None)
}

fn run_pipeline_with(
    model: &Path,
    recording: &Recording,
    escalate_below: Option<f32>,
) -> Vec<Reading> {
    run_stage(
        InferenceConfig {
            escalate_below,
            escalate_to: escalate_below.map(|_| "hub-model".to_string()),
            ..InferenceConfig::new(model)
        },
        recording,
    )
}

fn run_stage(config: InferenceConfig, recording: &Recording) -> Vec<Reading> {
    let stage = StageConfig::Inference(config);
    let (mut pipeline, _handles) =
        Pipeline::build(&[stage], &StageContext::new(Path::new("unused"))).unwrap();
    let stream: Arc<str> = "replay".into();
    let mut out = Vec::new();
    for (i, row) in recording.rows.iter().enumerate() {
        let reading = Reading {
            stream: stream.clone(),
            ts_us: i as i64 * 10_000,
            values: row.values.clone(),
            label: row.label.clone(),
            ..Reading::default()
        };
        pipeline.process(reading, &mut out);
    }
    out
}

#[test]
fn predictions_below_the_threshold_carry_their_raw_window() {
    let path = trained_dir().join("acsf1/edge.int8.json");
    let meta = ModelMetadata::load(&path).unwrap();
    let recording = Recording::load(&test_split(&meta), None).unwrap();
    let plain = run_pipeline(&path, &recording);
    let threshold = 0.9;
    let cascaded = run_pipeline_with(&path, &recording, Some(threshold));
    assert_eq!(plain.len(), cascaded.len());
    let mut escalated = 0;
    for (i, (p, c)) in plain.iter().zip(&cascaded).enumerate() {
        assert_eq!(p.prediction, c.prediction, "the edge's answer is the same");
        assert!(p.escalation.is_none());
        let confidence = c.prediction.as_ref().unwrap().confidence;
        match &c.escalation {
            None => assert!(confidence >= threshold, "window {i}: {confidence}"),
            Some(e) => {
                escalated += 1;
                assert!(confidence < threshold, "window {i}: {confidence}");
                assert_eq!(
                    (e.hub_model.as_str(), e.threshold, e.channels),
                    ("hub-model", threshold, 1)
                );
                let rows = &recording.rows[i * meta.window..(i + 1) * meta.window];
                let raw: Vec<f32> = rows.iter().map(|r| r.values[0] as f32).collect();
                assert_eq!(e.window, raw, "window {i}: the raw readings, in order");
            }
        }
    }
    assert!(escalated > 0 && escalated < plain.len(), "{escalated}");
}

/// `teacher_every = 3`: windows 0, 3, 6, ... travel with their raw
/// readings, marked as samples, whatever their confidence; with a
/// threshold too, unsure windows go as well, and a window that is both is
/// marked sampled.
#[test]
fn every_nth_window_is_sampled_for_the_teacher() {
    let path = trained_dir().join("acsf1/edge.int8.json");
    let meta = ModelMetadata::load(&path).unwrap();
    let recording = Recording::load(&test_split(&meta), None).unwrap();
    let config = InferenceConfig {
        escalate_to: Some("hub-model".into()),
        teacher_every: Some(3),
        ..InferenceConfig::new(&path)
    };
    let out = run_stage(config.clone(), &recording);
    assert!(out.len() > 10);
    for (i, r) in out.iter().enumerate() {
        match &r.escalation {
            Some(e) => {
                assert_eq!(i % 3, 0, "window {i}");
                assert!(e.sampled);
                assert_eq!(e.window.len(), meta.window);
            }
            None => assert_ne!(i % 3, 0, "window {i}"),
        }
    }
    let both = run_stage(
        InferenceConfig {
            escalate_below: Some(0.9),
            ..config
        },
        &recording,
    );
    for (i, r) in both.iter().enumerate() {
        let confidence = r.prediction.as_ref().unwrap().confidence;
        let e = r.escalation.as_ref();
        assert_eq!(e.is_some(), i % 3 == 0 || confidence < 0.9, "window {i}");
        assert_eq!(e.is_some_and(|e| e.sampled), i % 3 == 0, "window {i}");
    }
}

#[test]
fn escalation_settings_are_checked() {
    let base = |below: Option<f32>, to: Option<&str>| InferenceConfig {
        name: None,
        model: "m.json".into(),
        stream: None,
        output_stream: None,
        stride: None,
        forward_readings: false,
        escalate_below: below,
        escalate_to: to.map(str::to_string),
        teacher_every: None,
        shadow: None,
    };
    let err = |c: InferenceConfig| c.validate("stages[0]").unwrap_err().to_string();
    assert!(err(base(Some(1.5), Some("hub"))).starts_with("stages[0].escalate_below"));
    assert!(err(base(Some(0.5), None)).starts_with("stages[0].escalate_to: is required"));
    assert!(err(base(None, Some("hub"))).starts_with("stages[0].escalate_below: is required"));
    assert!(err(base(Some(0.5), Some(""))).starts_with("stages[0].escalate_to"));
    base(Some(0.5), Some("hub")).validate("stages[0]").unwrap();
    base(None, None).validate("stages[0]").unwrap();
    // Teacher samples: to a hub model, every N >= 1 windows; with them the
    // hub model is enough, a threshold is not needed.
    let teacher = |every: u32, to: Option<&str>| InferenceConfig {
        teacher_every: Some(every),
        ..base(None, to)
    };
    teacher(4, Some("hub")).validate("stages[0]").unwrap();
    assert!(err(teacher(0, Some("hub"))).starts_with("stages[0].teacher_every: must be at least 1"));
    assert!(err(teacher(4, None)).contains("stages[0].escalate_to: is required with teacher_every"));
}

#[test]
fn test_split_accuracy_through_the_pipeline_matches_the_model_card() {
    for path in all_models() {
        let meta = ModelMetadata::load(&path).unwrap();
        let card = meta
            .metrics
            .clone()
            .expect("the metadata states test metrics");
        let recording = Recording::load(&test_split(&meta), None).unwrap();
        let predictions = run_pipeline(&path, &recording);
        assert_eq!(predictions.len(), card.test_windows, "{}", path.display());
        let mut correct = 0;
        for p in &predictions {
            let pred = p.prediction.as_ref().expect("stage emits predictions");
            assert_eq!(&*p.stream, "replay.predictions");
            assert_eq!(pred.model_id, meta.id);
            assert_eq!(pred.model_version, meta.version);
            assert_eq!(pred.window_len as usize, meta.window);
            assert!(
                !p.label.is_empty(),
                "each test series is one labelled window"
            );
            correct += usize::from(pred.label == p.label);
        }
        let accuracy = correct as f64 / predictions.len() as f64;
        eprintln!(
            "{}@{}: {correct}/{} = {accuracy:.4} (card: {:.4})",
            meta.id,
            meta.version,
            predictions.len(),
            card.test_accuracy
        );
        // Same windows, same model: the engines may disagree on a window
        // whose top two classes are within rounding, nothing more.
        let one_window = 1.0 / card.test_windows as f64;
        assert!(
            (accuracy - card.test_accuracy).abs() <= one_window + 1e-9,
            "{}: pipeline accuracy {accuracy} vs card {}",
            path.display(),
            card.test_accuracy
        );
    }
}

// ---- run time ------------------------------------------------------------

fn reading(values: Vec<f64>, label: &str) -> Reading {
    Reading {
        stream: "motion".into(),
        ts_us: 0,
        values,
        label: label.into(),
        ..Reading::default()
    }
}

#[test]
fn readings_of_the_wrong_shape_are_counted_and_dropped() {
    let path = trained_dir().join("basicmotions/edge.int8.json");
    let config = InferenceConfig {
        name: Some("motion-classifier".into()),
        model: path.clone(),
        stream: Some("motion".into()),
        output_stream: None,
        stride: None,
        forward_readings: false,
        escalate_below: None,
        escalate_to: None,
        teacher_every: None,
        shadow: None,
    };
    let built = config.build(0, "stages[0]").unwrap();
    let mut stage = built.stage;
    let mut out = Vec::new();
    let recording = Recording::load(
        &models_dir().join("data/BasicMotions/BasicMotions_TEST.ts"),
        None,
    )
    .unwrap();
    // A window's worth of good readings with bad ones mixed in: the bad
    // ones neither crash nor break the window.
    for (i, row) in recording.rows.iter().take(100).enumerate() {
        stage.process(reading(row.values.clone(), &row.label), &mut out);
        if i % 10 == 0 {
            stage.process(reading(vec![1.0; 3], ""), &mut out);
            stage.process(reading(vec![], ""), &mut out);
        }
    }
    // Another stream passes through untouched.
    stage.process(
        Reading {
            stream: "other".into(),
            ..reading(vec![1.0], "")
        },
        &mut out,
    );
    assert_eq!(out.len(), 2, "{out:?}");
    assert!(out[0].prediction.is_some());
    assert_eq!(&*out[1].stream, "other");
    let stats = built.monitor.snapshot();
    assert_eq!(stats.dropped.get("wrong_channels"), Some(&20));
    assert_eq!(stats.windows, 1);
    assert_eq!(stats.records_out, 1);
    assert_eq!(stats.model_id, "basicmotions-edge");
}

#[test]
fn a_swapped_model_takes_over_between_windows_and_no_window_is_lost() {
    let int8 = trained_dir().join("basicmotions/edge.int8.json");
    let fp32 = trained_dir().join("basicmotions/edge.fp32.json");
    let config = InferenceConfig {
        name: None,
        model: int8,
        stream: None,
        output_stream: None,
        stride: None,
        forward_readings: false,
        escalate_below: None,
        escalate_to: None,
        teacher_every: None,
        shadow: None,
    };
    let built = config.build(0, "stages[0]").unwrap();
    let StageControl::Model(slot) = built.control.clone() else {
        panic!("an inference stage has a model slot")
    };
    let mut stage = built.stage;
    let recording = Recording::load(
        &models_dir().join("data/BasicMotions/BasicMotions_TEST.ts"),
        None,
    )
    .unwrap();
    let mut out = Vec::new();
    let swap_at = 250; // in the middle of the third window
    for (i, row) in recording.rows.iter().enumerate() {
        if i == swap_at {
            let next = InferenceConfig {
                model: fp32.clone(),
                ..config.clone()
            };
            slot.replace(next.load_model().unwrap()).unwrap();
        }
        stage.process(reading(row.values.clone(), &row.label), &mut out);
    }
    assert_eq!(
        out.len(),
        recording.rows.len() / 100,
        "one prediction per window"
    );
    let versions: Vec<&str> = out
        .iter()
        .map(|r| r.prediction.as_ref().unwrap().model_version.as_str())
        .collect();
    // Windows 0 and 1 finished before the swap; window 2, which was being
    // filled when it happened, and all later ones are the new model's.
    assert!(
        versions[..2].iter().all(|v| v.ends_with("int8")),
        "{versions:?}"
    );
    assert!(
        versions[2..].iter().all(|v| v.ends_with("fp32")),
        "{versions:?}"
    );
    // The windows are consecutive: none lost, none run twice.
    for (i, r) in out.iter().enumerate() {
        let p = r.prediction.as_ref().unwrap();
        assert_eq!(p.window_len, 100);
        assert_eq!(r.label, recording.rows[i * 100].label);
    }
    assert_eq!(built.monitor.snapshot().swaps, 1);

    // A model of another input shape is refused; the running one stays.
    let acsf1 = InferenceConfig {
        model: trained_dir().join("acsf1/edge.int8.json"),
        ..config
    };
    let e = slot.replace(acsf1.load_model().unwrap()).unwrap_err();
    assert!(e.to_string().contains("needs a restart"), "{e}");
    assert!(slot.current().meta().version.ends_with("fp32"));
}

/// Runs the BasicMotions test split through the int8 model with
/// `shadow` beside it: the prediction records and the shadow's tally.
fn shadow_run(
    shadow: Option<PathBuf>,
) -> (Vec<Reading>, Option<conveyor_shared::control::ShadowStats>) {
    let config = InferenceConfig {
        shadow,
        ..InferenceConfig::new(trained_dir().join("basicmotions/edge.int8.json"))
    };
    let built = config.build(0, "stages[0]").unwrap();
    let mut stage = built.stage;
    let recording = Recording::load(
        &models_dir().join("data/BasicMotions/BasicMotions_TEST.ts"),
        None,
    )
    .unwrap();
    let mut out = Vec::new();
    for row in &recording.rows {
        stage.process(reading(row.values.clone(), &row.label), &mut out);
    }
    (out, built.monitor.snapshot().shadow)
}

#[test]
fn a_shadow_sees_every_window_and_changes_nothing_the_stage_sends() {
    let (alone, none) = shadow_run(None);
    assert!(none.is_none());
    let (beside_v2, v2) = shadow_run(Some(models_dir().join("basicmotions/v2/edge.int8.json")));
    let (beside_bad, bad) = shadow_run(Some(
        models_dir().join("basicmotions/bad-shuffled/edge.int8.json"),
    ));
    // The records are the champion's, byte for byte, whatever runs beside it.
    assert_eq!(alone, beside_v2);
    assert_eq!(alone, beside_bad);
    let (v2, bad) = (v2.unwrap(), bad.unwrap());
    assert_eq!(v2.windows, alone.len() as u64);
    assert_eq!(bad.windows, alone.len() as u64);
    assert_eq!((v2.errors, bad.errors), (0, 0));
    assert_eq!(bad.model_version, "2.1.0-int8");
    // A retrained model mostly agrees with the champion; one trained on
    // shuffled labels mostly does not (both cards say so on the test split).
    assert!(v2.agreement() > 0.8, "{v2:?}");
    assert!(bad.agreement() < 0.5, "{bad:?}");
    assert!(v2.champion_confidence > 0.0 && v2.candidate_confidence > 0.0);
    assert!(v2.champion_p50_us > 0 && v2.candidate_p99_us >= v2.candidate_p50_us);
}

#[test]
fn a_shadow_must_take_the_stage_input_and_can_be_started_and_stopped() {
    let config = InferenceConfig {
        shadow: Some(models_dir().join("acsf1/edge.int8.json")),
        ..InferenceConfig::new(trained_dir().join("basicmotions/edge.int8.json"))
    };
    let e = config.build(0, "stages[0]").err().unwrap().to_string();
    assert!(e.contains("stages[0].shadow") && e.contains("1460"), "{e}");

    let built = InferenceConfig::new(trained_dir().join("basicmotions/edge.int8.json"))
        .build(0, "stages[0]")
        .unwrap();
    let StageControl::Model(slot) = built.control.clone() else {
        panic!("an inference stage has a model slot")
    };
    let acsf1 = InferenceConfig::new(models_dir().join("acsf1/edge.int8.json"))
        .load_model()
        .unwrap();
    assert!(slot.set_shadow(Some(acsf1)).is_err());
    let fp32 = InferenceConfig::new(trained_dir().join("basicmotions/edge.fp32.json"))
        .load_model()
        .unwrap();
    let mut stage = built.stage;
    let recording = Recording::load(
        &models_dir().join("data/BasicMotions/BasicMotions_TEST.ts"),
        None,
    )
    .unwrap();
    let mut out = Vec::new();
    for (i, row) in recording.rows.iter().take(600).enumerate() {
        if i == 150 {
            slot.set_shadow(Some(fp32.clone())).unwrap();
        }
        if i == 450 {
            let shadow = built.monitor.snapshot().shadow.unwrap();
            assert_eq!(shadow.model_version, fp32.meta().version);
            assert!(shadow.windows >= 2, "{shadow:?}");
            slot.set_shadow(None).unwrap();
        }
        stage.process(reading(row.values.clone(), &row.label), &mut out);
    }
    assert!(built.monitor.snapshot().shadow.is_none());
    assert_eq!(out.len(), 6);
}
