//! Edge inference with real processes: an agent runs the committed int8
//! model on the held-out test split and the hub scores what arrives; a
//! model is swapped by SIGHUP while data flows; `edge-agent check` refuses
//! models that cannot work.

use std::process::Command;

use conveyor_e2e::*;
use serde_json::Value;

fn model(rel: &str) -> String {
    repo_root().join("models").join(rel).display().to_string()
}

fn agent_config(hub: &Hub, rate: u32, model_json: &str) -> AgentConfig {
    AgentConfig::for_device("watch-1")
        .data_dir("state")
        .uplink(&hub.mqtt_url())
        .uplink_with(|u| u.heartbeat_secs = 0.5)
        .source(ReplayConfig {
            rate: Some(rate.into()),
            ..ReplayConfig::new("motion", data_file("BasicMotions/BasicMotions_TEST.ts"))
        })
        .stage(InferenceConfig {
            name: Some("motion-classifier".into()),
            ..InferenceConfig::new(model_json)
        })
}

/// The class of each test series, in file order.
fn series_labels() -> Vec<String> {
    std::fs::read_to_string(data_file("BasicMotions/BasicMotions_TEST.ts"))
        .unwrap()
        .lines()
        .skip_while(|l| !l.starts_with("@data"))
        .skip(1)
        .map(|l| l.rsplit(':').next().unwrap().trim().to_string())
        .collect()
}

fn card_accuracy(model_json: &str) -> (u64, f64) {
    let meta: Value = serde_json::from_slice(&std::fs::read(model_json).unwrap()).unwrap();
    (
        meta["metrics"]["test_windows"].as_u64().unwrap(),
        meta["metrics"]["test_accuracy"].as_f64().unwrap(),
    )
}

#[test]
fn agent_predicts_the_test_split_and_the_hub_scores_it() {
    let dir = tempfile::tempdir().unwrap();
    let hub = Hub::start(dir.path());
    let int8 = model("basicmotions/edge.int8.json");
    let mut agent = start_agent(dir.path(), "agent", &agent_config(&hub, 0, &int8));
    // 40 series x 100 readings, replayed once: 40 windows, 40 predictions;
    // the raw readings stay on the device.
    assert!(agent.wait().success(), "{}", agent.log());
    hub.wait_for_records("watch-1", 40);
    let records = hub.all_records("watch-1");
    assert_eq!(records.len(), 40);
    let truth = series_labels();
    for (r, truth) in records.iter().zip(&truth) {
        assert_eq!(r["stream"], "motion.predictions");
        assert_eq!(&r["label"], truth, "each window carries its series' label");
        let p = &r["prediction"];
        assert_eq!(p["model_id"], "basicmotions-edge");
        assert_eq!(p["window_len"], 100);
        let c = p["confidence"].as_f64().unwrap();
        assert!(c > 0.0 && c <= 1.0, "{p}");
        assert_eq!(p["probabilities"].as_array().unwrap().len(), 4);
    }
    let device = hub.device("watch-1").unwrap();
    let version = records[0]["prediction"]["model_version"].as_str().unwrap();
    let tally = &device["predictions"][format!("basicmotions-edge@{version}")];
    assert_eq!(tally["predictions"], 40, "{device}");
    assert_eq!(tally["scored"], 40, "{device}");
    let (windows, accuracy) = card_accuracy(&int8);
    assert_eq!(windows, 40);
    let correct = tally["correct"].as_u64().unwrap();
    assert!(
        (correct as f64 / 40.0 - accuracy).abs() <= 1.0 / 40.0 + 1e-9,
        "hub scored {correct}/40, the model card says {accuracy}"
    );
    // The heartbeat reports the stage.
    let stage = &device["last_heartbeat"]["stages"][0];
    assert_eq!(stage["name"], "motion-classifier");
    assert_eq!(stage["records_in"], 4000);
    assert_eq!(stage["windows"], 40);
}

#[test]
fn sighup_swaps_the_model_between_windows_without_losing_one() {
    let dir = tempfile::tempdir().unwrap();
    let hub = Hub::start(dir.path());
    let int8 = model("basicmotions/edge.int8.json");
    let fp32 = model("basicmotions/edge.fp32.json");
    // 4000 readings at 200/s: twenty seconds, a window every half second;
    // time enough for two reloads even on a slow CI machine.
    let mut agent = start_agent(dir.path(), "agent", &agent_config(&hub, 200, &int8));
    let config = dir.path().join("agent.toml");
    wait_for("a few predictions at the hub", || {
        hub.device("watch-1")
            .filter(|d| d["records"].as_u64() >= Some(4))
            .map(|_| ())
    });

    // A reload that names a model that is not there is refused; the agent
    // keeps running its model.
    std::fs::write(
        &config,
        agent_config(&hub, 200, "/nonexistent/model.json").to_toml(),
    )
    .unwrap();
    agent.signal(libc::SIGHUP);
    wait_for("the refused reload in the agent's log", || {
        agent.log().contains("reload refused").then_some(())
    });

    std::fs::write(&config, agent_config(&hub, 200, &fp32).to_toml()).unwrap();
    agent.signal(libc::SIGHUP);
    assert!(agent.wait().success(), "{}", agent.log());
    assert!(agent.log().contains("model swapped"), "{}", agent.log());

    hub.wait_for_records("watch-1", 40);
    let records = hub.all_records("watch-1");
    assert_eq!(records.len(), 40, "one prediction per window, none lost");
    let versions: Vec<&str> = records
        .iter()
        .map(|r| r["prediction"]["model_version"].as_str().unwrap())
        .collect();
    let switch = versions
        .iter()
        .position(|v| v.ends_with("fp32"))
        .unwrap_or_else(|| panic!("the new model never ran: {versions:?}"));
    assert!(switch >= 4, "{versions:?}");
    assert!(
        versions[..switch].iter().all(|v| v.ends_with("int8")),
        "{versions:?}"
    );
    assert!(
        versions[switch..].iter().all(|v| v.ends_with("fp32")),
        "{versions:?}"
    );
    // Consecutive, complete windows in the file's order: window i is test
    // series i, whichever model ran it.
    let truth = series_labels();
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r["label"], truth[i], "window {i}");
        assert_eq!(r["prediction"]["window_len"], 100);
    }
    let starts: Vec<i64> = records
        .iter()
        .map(|r| r["prediction"]["window_start_us"].as_i64().unwrap())
        .collect();
    assert!(starts.windows(2).all(|p| p[1] > p[0]), "{starts:?}");
    let device = hub.device("watch-1").unwrap();
    assert_eq!(
        device["last_heartbeat"]["stages"][0]["swaps"], 1,
        "{device}"
    );
}

fn check(dir: &std::path::Path, config: &AgentConfig) -> (i32, String, String) {
    let path = write_agent_config(dir, "check", config);
    let out = Command::new(agent_bin())
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_validates_models_against_their_streams() {
    let dir = tempfile::tempdir().unwrap();
    let base = |data: &str, model_json: &str| {
        AgentConfig::for_device("d1")
            .uplink("mqtt://127.0.0.1:1")
            .source(ReplayConfig {
                rate: Some(10.0),
                ..ReplayConfig::new("s", data_file(data))
            })
            .stage(InferenceConfig::new(model_json))
    };
    let (code, stdout, stderr) = check(
        dir.path(),
        &base(
            "BasicMotions/BasicMotions_TEST.ts",
            &model("basicmotions/edge.int8.json"),
        ),
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("model basicmotions-edge@") && stdout.contains("6 channels x 100 readings"),
        "{stdout}"
    );

    // A smart-plug stream (1 value per reading) into the watch model (6).
    let (code, _, stderr) = check(
        dir.path(),
        &base("ACSF1/ACSF1_TEST.ts", &model("basicmotions/edge.int8.json")),
    );
    assert_eq!(code, 64, "{stderr}");
    assert!(stderr.contains("stages[0].model"), "{stderr}");
    assert!(
        stderr.contains("takes 6 channels") && stderr.contains("gives 1"),
        "{stderr}"
    );

    // A model file that is not there.
    let (code, _, stderr) = check(
        dir.path(),
        &base(
            "BasicMotions/BasicMotions_TEST.ts",
            "/nonexistent/edge.json",
        ),
    );
    assert_eq!(code, 64, "{stderr}");
    assert!(
        stderr.contains("stages[0].model") && stderr.contains("/nonexistent/edge.json"),
        "{stderr}"
    );

    // A damaged model: the metadata's checksum no longer matches.
    let damaged = dir.path().join("damaged");
    std::fs::create_dir(&damaged).unwrap();
    for f in ["edge.int8.json", "edge.int8.onnx"] {
        std::fs::copy(
            repo_root().join("models/basicmotions").join(f),
            damaged.join(f),
        )
        .unwrap();
    }
    let onnx = damaged.join("edge.int8.onnx");
    let bytes = std::fs::read(&onnx).unwrap();
    std::fs::write(&onnx, &bytes[..bytes.len() / 3]).unwrap();
    let (code, _, stderr) = check(
        dir.path(),
        &base(
            "BasicMotions/BasicMotions_TEST.ts",
            &damaged.join("edge.int8.json").display().to_string(),
        ),
    );
    assert_eq!(code, 64, "{stderr}");
    assert!(
        stderr.contains("truncated, damaged or not this model"),
        "{stderr}"
    );
}
