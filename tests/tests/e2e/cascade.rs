//! The edge-to-hub cascade with real processes: an agent runs the int8
//! edge model on the ACSF1 test split and escalates every prediction under
//! its threshold; the hub's fp32 model decides those. Every prediction gets
//! exactly one final result, routed by the threshold, stored with its
//! record, published on the device's results topic (read by a plain
//! `mosquitto_sub`, decoded by `protoc` with the published schema) and on
//! the live Server-Sent Events stream. Bad requests (an unknown hub model,
//! malformed API calls, CUDA where there is none) are refused alone.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use conveyor_e2e::*;
use conveyor_shared::{Decider, FinalPrediction, ResultBatch};
use serde_json::Value;

const THRESHOLD: f32 = 0.9;

fn agent_config(
    hub: &Hub,
    device: &str,
    dataset: &str,
    escalate_to: &str,
    threshold: f32,
) -> AgentConfig {
    let (stream, file) = match dataset {
        "acsf1" => ("power", "ACSF1/ACSF1_TEST.ts"),
        _ => ("motion", "BasicMotions/BasicMotions_TEST.ts"),
    };
    AgentConfig::for_device(device)
        .data_dir(format!("state-{device}"))
        .uplink(&hub.mqtt_url())
        .uplink_with(|u| u.heartbeat_secs = 0.5)
        .source(ReplayConfig {
            rate: Some(0.0),
            ..ReplayConfig::new(stream, data_file(file))
        })
        .stage(InferenceConfig {
            escalate_below: Some(threshold),
            escalate_to: Some(escalate_to.into()),
            ..InferenceConfig::new(
                repo_root()
                    .join("models")
                    .join(dataset)
                    .join("edge.int8.json"),
            )
        })
}

/// Reads `mosquitto_sub` output (one hex payload per line) until `n`
/// results have arrived; checks each against protoc's decoding.
fn read_mqtt_results(lines: impl Iterator<Item = String>, n: usize) -> Vec<FinalPrediction> {
    let mut out = Vec::new();
    for line in lines {
        let (topic, hex) = line.split_once(' ').expect("topic and payload");
        assert_eq!(topic, "conveyor/v1/plug-1/down/results");
        let bytes = hex_decode(hex);
        let ours = ResultBatch::decode_checked(&bytes).unwrap();
        let text = protoc_decode("conveyor.v1.ResultBatch", &bytes);
        assert!(text.contains("device_id: \"plug-1\""), "{text}");
        assert_eq!(
            text.matches("results {").count(),
            ours.results.len(),
            "{text}"
        );
        // (proto3 leaves a zero out of the encoding: seq 0 shows no line.)
        for r in ours.results.iter().filter(|r| r.seq > 0) {
            assert!(text.contains(&format!("seq: {}", r.seq)), "{text}");
        }
        let by_hub = ours
            .results
            .iter()
            .filter(|r| r.decider() == Decider::Hub)
            .count();
        assert_eq!(
            text.matches("decided_by: DECIDER_HUB").count(),
            by_hub,
            "{text}"
        );
        out.extend(ours.results);
        if out.len() >= n {
            break;
        }
    }
    out
}

/// The lines `mosquitto_sub` prints, once its subscription is known to be
/// in place: a probe published on a matching topic (that no device uses)
/// has come back. Fails, rather than hangs, if a line is slow to come.
fn subscribed_lines(hub: &Hub, stdout: std::process::ChildStdout) -> impl Iterator<Item = String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let probe = "conveyor/v1/probe-0/down/results";
    wait_for("mosquitto_sub's subscription", || {
        let _ = Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &hub.mqtt_port.to_string()])
            .args(["-t", probe, "-m", "probe", "-q", "1"])
            .status();
        let line = rx.recv_timeout(Duration::from_millis(300)).ok()?;
        line.starts_with(probe).then_some(())
    });
    std::iter::from_fn(move || {
        loop {
            let line = rx
                .recv_timeout(Duration::from_secs(60))
                .expect("a results message from mosquitto_sub within 60 s");
            // Late copies of the probe are not results.
            if !line.starts_with(probe) {
                return Some(line);
            }
        }
    })
}

/// Subscribes to the live results stream (HTTP/1.0, so the body is the
/// raw event stream) and returns the results of `n` notifications' worth.
fn sse_results(hub: &Hub, device: &str) -> impl Iterator<Item = Value> {
    let mut s = TcpStream::connect(hub.http).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(
        s,
        "GET /api/v1/results/stream?device={device} HTTP/1.0\r\nHost: x\r\n\r\n"
    )
    .unwrap();
    let mut reader = BufReader::new(s);
    let mut status = String::new();
    reader.read_line(&mut status).unwrap();
    assert!(status.contains(" 200 "), "{status}");
    reader
        .lines()
        .map_while(Result::ok)
        .filter_map(|l| l.strip_prefix("data:").map(|d| d.trim().to_string()))
        .filter_map(|d| serde_json::from_str::<Value>(&d).ok())
        .flat_map(|v| v["results"].as_array().cloned().unwrap_or_default())
}

#[test]
fn the_cascade_routes_by_threshold_and_every_result_goes_out() {
    let dir = tempfile::tempdir().unwrap();
    let hub = Hub::start_serving(dir.path(), &hub_models_toml());
    let sub = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &hub.mqtt_port.to_string()])
        .args(["-t", "conveyor/v1/+/down/results", "-F", "%t %x", "-q", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mosquitto_sub must be installed (.ci/run installs mosquitto-clients)");
    let mut sub = scopeguard(sub);
    let sub_lines = subscribed_lines(&hub, sub.0.stdout.take().unwrap());
    // The SSE subscription is in place once its response has begun.
    let sse = std::thread::spawn({
        let stream = sse_results(&hub, "plug-1");
        move || stream.take(100).collect::<Vec<Value>>()
    });

    let mut agent = start_agent(
        dir.path(),
        "plug",
        &agent_config(&hub, "plug-1", "acsf1", "acsf1-hub", THRESHOLD),
    );
    // 100 series x 1460 readings, replayed once: 100 windows.
    assert!(agent.wait().success(), "{}", agent.log());
    let mqtt = read_mqtt_results(sub_lines, 100);
    let results = wait_for("100 final results", || {
        let page = hub.get("/api/v1/devices/plug-1/results?from=0&limit=1000");
        let r = page["results"].as_array().cloned().unwrap_or_default();
        (r.len() == 100).then_some(r)
    });
    let records = hub.all_records("plug-1");
    assert_eq!(records.len(), 100, "prediction records only");

    // Routing: decided by the hub exactly when the edge was unsure.
    let mut by_hub = 0;
    let mut correct = (0, 0);
    for (rec, res) in records.iter().zip(&results) {
        assert_eq!(rec["seq"], res["seq"]);
        assert_eq!(&rec["result"], res, "stored with its record");
        let edge = rec["prediction"]["confidence"].as_f64().unwrap() as f32;
        let escalated = edge < THRESHOLD;
        assert_eq!(rec.get("escalation").is_some(), escalated, "{rec}");
        if escalated {
            let window = rec["escalation"]["window"].as_array().unwrap().len();
            assert_eq!(window, 1460, "the whole raw window travels");
        }
        let decided = res["decided_by"].as_str().unwrap();
        assert_eq!(decided, if escalated { "hub" } else { "edge" }, "{res}");
        assert!(res.get("hub_error").is_none(), "{res}");
        let model = res["prediction"]["model_id"].as_str().unwrap();
        assert_eq!(model, if escalated { "acsf1-hub" } else { "acsf1-edge" });
        assert_eq!(res["prediction"]["window_len"], 1460);
        by_hub += usize::from(escalated);
        correct.0 += usize::from(res["prediction"]["label"] == res["label"]);
        correct.1 += usize::from(rec["prediction"]["label"] == rec["label"]);
    }
    assert!(
        by_hub > 0 && by_hub < 100,
        "a threshold of {THRESHOLD} escalates some ACSF1 windows, not all: {by_hub}"
    );
    eprintln!(
        "cascade at {THRESHOLD}: {by_hub}/100 escalated; final {} right, edge alone {} right",
        correct.0, correct.1
    );
    let hb = wait_for("the agent's final heartbeat", || {
        let d = hub.device("plug-1")?;
        let s = d["last_heartbeat"]["stages"][0].clone();
        (s["records_out"] == 100).then_some(s)
    });
    assert_eq!(hb["escalated"].as_u64(), Some(by_hub as u64));
    let device = hub.device("plug-1").unwrap();
    assert_eq!(device["finals"]["results"], 100);
    assert_eq!(device["finals"]["by_hub"].as_u64(), Some(by_hub as u64));

    // The same 100 results on MQTT and on the live stream.
    let seqs = |it: &mut dyn Iterator<Item = (u64, String)>| it.collect::<BTreeMap<u64, String>>();
    let want = seqs(&mut results.iter().map(|r| {
        (
            r["seq"].as_u64().unwrap(),
            r["decided_by"].as_str().unwrap().to_string(),
        )
    }));
    let got_mqtt = seqs(&mut mqtt.iter().map(|r| {
        let d = if r.decider() == Decider::Hub {
            "hub"
        } else {
            "edge"
        };
        (r.seq, d.to_string())
    }));
    assert_eq!(got_mqtt, want, "MQTT results");
    let live = sse.join().unwrap();
    let got_sse = seqs(&mut live.iter().map(|r| {
        (
            r["seq"].as_u64().unwrap(),
            r["decided_by"].as_str().unwrap().to_string(),
        )
    }));
    assert_eq!(got_sse, want, "SSE results");
    let metrics = hub.metrics();
    assert!(
        metrics.contains(&format!(
            "conveyor_hub_inference_requests_total{{model=\"acsf1-hub\",outcome=\"ok\"}} {by_hub}"
        )),
        "{metrics}"
    );
    assert!(
        metrics.contains("conveyor_hub_results_published_total 100"),
        "{metrics}"
    );
}

/// Kills the child on drop.
struct Guard(std::process::Child);
impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
fn scopeguard(c: std::process::Child) -> Guard {
    Guard(c)
}

#[test]
fn bad_requests_are_refused_alone() {
    let dir = tempfile::tempdir().unwrap();
    let hub = Hub::start_serving(dir.path(), &hub_models_toml());

    // An agent escalating everything to a model the hub does not serve:
    // every window keeps the edge's answer, with the reason.
    let mut agent = start_agent(
        dir.path(),
        "watch",
        &agent_config(&hub, "watch-1", "basicmotions", "no-such-model", 1.0),
    );
    assert!(agent.wait().success(), "{}", agent.log());
    let results = wait_for("40 final results", || {
        let page = hub.get("/api/v1/devices/watch-1/results?from=0&limit=1000");
        let r = page["results"].as_array().cloned().unwrap_or_default();
        (r.len() == 40).then_some(r)
    });
    for r in &results {
        assert_eq!(r["decided_by"], "edge", "{r}");
        assert_eq!(r["prediction"]["model_id"], "basicmotions-edge");
        let e = r["hub_error"].as_str().unwrap();
        assert!(e.contains("unknown model \"no-such-model\""), "{e}");
    }
    let metrics = hub.metrics();
    assert!(
        metrics.contains(
            "conveyor_hub_inference_requests_total{model=\"unknown\",outcome=\"unknown_model\"} 40"
        ),
        "{metrics}"
    );

    // The one-off inference API.
    let window: Vec<Vec<f32>> = vec![vec![0.5; 6]; 100];
    let body = serde_json::json!({ "window": window }).to_string();
    let (status, text) = http(
        hub.http,
        "POST",
        "/api/v1/models/basicmotions-hub/infer",
        Some(&body),
    )
    .unwrap();
    assert_eq!(status, 200, "{text}");
    let p: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(p["model_id"], "basicmotions-hub");
    assert_eq!(p["probabilities"].as_array().unwrap().len(), 4);
    let wrong: Vec<Vec<f32>> = vec![vec![0.5; 3]; 100];
    let cases = [
        (
            "basicmotions-hub",
            serde_json::json!({ "window": wrong }).to_string(),
            400,
            "takes windows of 100 readings x 6 channels",
        ),
        ("nope", body.clone(), 404, "unknown model"),
        (
            "basicmotions-hub",
            "{\"window\": 7}".to_string(),
            400,
            "invalid request body",
        ),
        (
            "basicmotions-hub",
            "{\"window\": [[1, 2], [3]]}".to_string(),
            400,
            "every reading needs the same channels",
        ),
    ];
    for (model, body, want, says) in cases {
        let (status, text) = http(
            hub.http,
            "POST",
            &format!("/api/v1/models/{model}/infer"),
            Some(&body),
        )
        .unwrap();
        assert_eq!(status, want, "{model} {body}: {text}");
        let e: Value = serde_json::from_str(&text).unwrap();
        assert!(e["error"].as_str().unwrap().contains(says), "{text}");
    }
    let models = hub.get("/api/v1/models");
    let bm = models["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == "basicmotions-hub")
        .unwrap()
        .clone();
    assert_eq!(bm["requests_ok"], 1, "{bm}");
    assert_eq!(bm["backend"], "tract-cpu");
    assert!(
        hub.get("/healthz")["status"] == "ok",
        "the hub keeps serving"
    );

    // CUDA on a build or machine without it: a clear error, exit 64,
    // before any port is bound.
    let out = Command::new(hub_bin())
        .args(["check", "--config"])
        .arg(dir.path().join("hub.toml"))
        .args(["--device", "cuda"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("device \"cuda\""), "{stderr}");
}

#[test]
fn escalations_left_pending_are_answered_after_a_restart() {
    use cloud_hub::cascade::split::test_windows;
    use conveyor_shared::{DeviceId, Escalation, ModelMetadata, Prediction, Record};

    // A store as a hub killed right after storing three escalated records
    // leaves it: the records and their pending marks, no results.
    let dir = tempfile::tempdir().unwrap();
    let meta = ModelMetadata::load(&repo_root().join("models/acsf1/hub.fp32.json")).unwrap();
    let windows = test_windows(&repo_root().join("models/data"), &meta).unwrap();
    {
        let store = cloud_hub::store::open(&dir.path().join("hub-store")).unwrap();
        let records: Vec<Record> = windows[..3]
            .iter()
            .enumerate()
            .map(|(i, w)| Record {
                stream: "power.predictions".into(),
                seq: i as u64 + 1,
                source_ts_us: 1_700_000_000_000_000 + i as i64,
                label: w.label.clone(),
                prediction: Some(Prediction {
                    model_id: "acsf1-edge".into(),
                    label: "0".into(),
                    confidence: 0.3,
                    window_len: 1460,
                    ..Default::default()
                }),
                escalation: Some(Escalation {
                    hub_model: "acsf1-hub".into(),
                    threshold: 0.9,
                    channels: 1,
                    window: w.values.clone(),
                    sampled: false,
                }),
                ..Default::default()
            })
            .collect();
        let n = store
            .append(&DeviceId::new("plug-9").unwrap(), &records, 1, &mut |_| ())
            .unwrap();
        assert_eq!(n.escalated.len(), 3);
        store.commit().unwrap();
        assert_eq!(store.pending().unwrap().len(), 3);
    }
    let hub = Hub::start_serving(dir.path(), &hub_models_toml());
    let results = wait_for("the pending escalations answered", || {
        let page = hub.get("/api/v1/devices/plug-9/results?from=0&limit=10");
        let r = page["results"].as_array().cloned().unwrap_or_default();
        (r.len() == 3).then_some(r)
    });
    for (r, w) in results.iter().zip(&windows) {
        assert_eq!(r["decided_by"], "hub", "{r}");
        assert_eq!(r["prediction"]["model_id"], "acsf1-hub");
        assert_eq!(r["edge"]["confidence"].as_f64(), Some(0.3f32 as f64));
        assert_eq!(r["label"], w.label.as_str());
    }
    // Answered for good: a second restart asks nothing again.
    let hub = hub.restart();
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !hub.metrics()
            .contains("conveyor_hub_inference_requests_total{model=\"acsf1-hub\""),
        "nothing left pending"
    );
}
