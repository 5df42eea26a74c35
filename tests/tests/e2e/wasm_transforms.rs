//! WASM transforms with real processes: a transform chain is swapped by
//! SIGHUP while a replay flows and the hub receives every record, each
//! stamped with the one transform version that made it; point-of-sale
//! receipts POSTed to the agent reach the hub with card numbers and
//! e-mails redacted; a failing transform is disabled, visible in the
//! hub's view of the device, and its records are listed by
//! `edge-agent dead-letters`; `check` and `transform test` on the command
//! line.

use std::path::{Path, PathBuf};
use std::process::Command;

use conveyor_e2e::*;
use serde_json::Value;

fn dist(name: &str) -> String {
    repo_root()
        .join("transforms/dist")
        .join(format!("{name}.wasm"))
        .display()
        .to_string()
}

fn replay_config(hub: &Hub, chain: ChainEntry) -> AgentConfig {
    AgentConfig::for_device("line-1")
        .data_dir("state")
        .uplink(&hub.mqtt_url())
        .uplink_with(|u| u.heartbeat_secs = 0.5)
        .source(ReplayConfig {
            rate: Some(200.0),
            ..ReplayConfig::new("motion", data_file("BasicMotions/BasicMotions_TEST.ts"))
        })
        .stage(TransformStageConfig {
            name: Some("motion-prep".into()),
            ..TransformStageConfig::new("motion", vec![chain])
        })
}

#[test]
fn sighup_swaps_a_transform_chain_under_load_and_the_hub_gets_every_record() {
    let dir = tempfile::tempdir().unwrap();
    let hub = Hub::start(dir.path());
    // passthrough@ and scale@ (identity) give the same values: only the
    // version stamped on each record tells them apart.
    let v1 = ChainEntry::new(dist("passthrough"));
    let v2 = ChainEntry::new(dist("scale")).with("scale", 1.0);
    // 4000 readings at 200/s: twenty seconds.
    let mut agent = start_agent(dir.path(), "agent", &replay_config(&hub, v1));
    let config = dir.path().join("agent.toml");
    wait_for("records at the hub", || {
        hub.device("line-1")
            .filter(|d| d["records"].as_u64() >= Some(200))
            .map(|_| ())
    });
    // A reload naming something that is not WASM is refused; the running
    // chain stays.
    let bogus = ChainEntry::new(&config);
    std::fs::write(&config, replay_config(&hub, bogus).to_toml()).unwrap();
    agent.signal(libc::SIGHUP);
    wait_for("the refused reload in the agent's log", || {
        let log = agent.log();
        (log.contains("reload refused") && log.contains("not a WebAssembly module")).then_some(())
    });
    std::fs::write(&config, replay_config(&hub, v2).to_toml()).unwrap();
    agent.signal(libc::SIGHUP);
    assert!(agent.wait().success(), "{}", agent.log());
    assert!(
        agent.log().contains("transform chain swapped"),
        "{}",
        agent.log()
    );

    hub.wait_for_records("line-1", 4000);
    let records = hub.all_records("line-1");
    assert_eq!(records.len(), 4000, "every reading, once");
    let tags: Vec<&str> = records
        .iter()
        .map(|r| {
            let t = r["transforms"]
                .as_array()
                .expect("every record says its transform");
            assert_eq!(t.len(), 1, "{r}");
            t[0].as_str().unwrap()
        })
        .collect();
    let switch = tags
        .iter()
        .position(|t| t.starts_with("scale@"))
        .unwrap_or_else(|| panic!("the new chain never ran"));
    assert!(switch >= 200, "{switch}");
    assert!(tags[..switch].iter().all(|t| t.starts_with("passthrough@")));
    assert!(tags[switch..].iter().all(|t| t.starts_with("scale@")));
    // The values are the file's, in order, whichever version ran.
    let file = std::fs::read_to_string(data_file("BasicMotions/BasicMotions_TEST.ts")).unwrap();
    let first_series = file
        .lines()
        .skip_while(|l| !l.starts_with("@data"))
        .nth(1)
        .unwrap();
    let channel0: Vec<f64> = first_series
        .split(':')
        .next()
        .unwrap()
        .split(',')
        .map(|v| v.parse().unwrap())
        .collect();
    for (i, want) in channel0.iter().enumerate() {
        assert_eq!(
            records[i]["values"][0].as_f64().unwrap(),
            *want,
            "reading {i}"
        );
    }
    let device = hub.device("line-1").unwrap();
    let stage = &device["last_heartbeat"]["stages"][0];
    assert_eq!(stage["kind"], "transform", "{device}");
    assert_eq!(stage["swaps"], 1, "{device}");
    assert!(
        stage["transforms"][0]["transform"]
            .as_str()
            .unwrap()
            .starts_with("scale@"),
        "{device}"
    );
}

/// A module that re-emits each record (one per call) but traps on a
/// negative first value.
pub(crate) fn trap_on_negative(dir: &Path) -> PathBuf {
    let wat = r#"(module
      (@custom "conveyor.transform" "{\"name\":\"fragile\",\"version\":\"1.0.0\",\"abi\":1}")
      (import "conveyor" "emit" (func $emit (param i32 i32)))
      (memory (export "memory") 1)
      (func (export "conveyor_alloc") (param i32) (result i32) i32.const 1024)
      (func (export "conveyor_transform") (param i32 i32 i32) (result i32)
        (if (f64.lt (f64.load offset=24 (local.get 0)) (f64.const 0)) (then unreachable))
        (call $emit (local.get 0) (local.get 1))
        i32.const 0))"#;
    let path = dir.join("fragile.wasm");
    std::fs::write(&path, wat::parse_str(wat).unwrap()).unwrap();
    path
}

#[test]
fn receipts_are_redacted_before_the_uplink_and_a_failing_transform_is_contained() {
    let dir = tempfile::tempdir().unwrap();
    let hub = Hub::start(dir.path());
    let (pos_port, sensor_port) = (free_port(), free_port());
    let config = AgentConfig::for_device("store-7")
        .data_dir("state")
        .uplink(&hub.mqtt_url())
        .uplink_with(|u| u.heartbeat_secs = 0.3)
        .source(HttpSourceConfig {
            keep_payload: true,
            ..HttpSourceConfig::new("pos", ([127, 0, 0, 1], pos_port).into(), &[])
        })
        .source(HttpSourceConfig::new(
            "sensor",
            ([127, 0, 0, 1], sensor_port).into(),
            &["t"],
        ))
        .stage(TransformStageConfig {
            name: Some("pos-redaction".into()),
            ..TransformStageConfig::new("pos", vec![ChainEntry::new(dist("redact-pos"))])
        })
        .stage(TransformStageConfig {
            name: Some("sensor-check".into()),
            batch_size: 1,
            max_consecutive_failures: 2,
            on_disabled: OnDisabled::Drop,
            ..TransformStageConfig::new(
                "sensor",
                vec![ChainEntry::new(trap_on_negative(dir.path()))],
            )
        });
    let mut agent = start_agent(dir.path(), "agent", &config);
    let post = |port: u16, body: &str| {
        let addr = format!("127.0.0.1:{port}").parse().unwrap();
        wait_for("the agent's HTTP source", || {
            http(addr, "POST", "/readings", Some(body)).ok()
        })
    };
    let receipt = r#"{"store":"S-7","items":[{"sku":"8410076472069","qty":1,"price":3.99}],"tender":{"pan":"4111 1111 1111 1111","email":"jane.doe@example.com"},"note":"call 5105105105105100 if lost"}"#;
    let (status, body) = post(pos_port, receipt);
    assert_eq!(status, 200, "{body}");
    // Sensor readings: fine, two poisoned (the transform is disabled after
    // the second), then fine again (dropped to the dead-letter store).
    for t in ["1.5", "-1", "-2", "3"] {
        let (status, body) = post(sensor_port, &format!(r#"{{"t": {t}}}"#));
        assert_eq!(status, 200, "{body}");
    }
    hub.wait_for_records("store-7", 2);
    let records = hub.all_records("store-7");
    let pos = records.iter().find(|r| r["stream"] == "pos").unwrap();
    let payload = pos["payload"].as_str().unwrap();
    let doc: Value = serde_json::from_str(payload).unwrap();
    assert_eq!(doc["tender"]["pan"], "**** **** **** 1111");
    assert_eq!(doc["tender"]["email"], "[redacted-email]");
    assert_eq!(doc["note"], "call ************5100 if lost");
    assert_eq!(doc["items"][0]["sku"], "8410076472069");
    assert!(pos["transforms"][0]
        .as_str()
        .unwrap()
        .starts_with("redact-pos@"));
    let sensor: Vec<f64> = records
        .iter()
        .filter(|r| r["stream"] == "sensor")
        .map(|r| r["values"][0].as_f64().unwrap())
        .collect();
    assert_eq!(sensor, vec![1.5]);

    // The hub sees the disabled transform in the device's heartbeat.
    let stage = wait_for("the disabled transform in a heartbeat", || {
        let d = hub.device("store-7")?;
        let s = d["last_heartbeat"]["stages"][1].clone();
        (s["transforms"][0]["state"] == "disabled" && s["transforms"][0]["dead_lettered"] == 3)
            .then_some(s)
    });
    let t = &stage["transforms"][0];
    assert_eq!(t["failures"]["trap"], 2, "{stage}");
    // The heartbeat carries the last dead letters with their reasons (not
    // their records): the two traps, then the reading dropped while the
    // transform is disabled.
    let notes = hub.device("store-7").unwrap()["last_heartbeat"]["dead_letters"].clone();
    let kinds: Vec<&str> = notes
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["trap", "trap", "disabled"], "{notes}");
    assert_eq!(notes[0]["stage"], "sensor-check");
    assert_eq!(notes[0]["stream"], "sensor");
    assert!(
        notes[0]["reason"].as_str().unwrap().contains("unreachable"),
        "{notes}"
    );
    assert!(notes[0].get("record").is_none(), "{notes}");
    assert!(t["disabled_reason"]
        .as_str()
        .unwrap()
        .contains("2 consecutive failures"));

    // `edge-agent dead-letters` lists what was kept, while the agent runs.
    let out = Command::new(agent_bin())
        .args(["dead-letters", "--json", "--config"])
        .arg(dir.path().join("agent.toml"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let letters: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let kinds: Vec<(&str, f64)> = letters
        .iter()
        .map(|l| {
            (
                l["kind"].as_str().unwrap(),
                l["record"]["values"][0].as_f64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        vec![("trap", -1.0), ("trap", -2.0), ("disabled", 3.0)]
    );
    assert_eq!(letters[0]["transform"], "fragile@1.0.0");
    assert_eq!(letters[0]["stage"], "sensor-check");
    let summary = Command::new(agent_bin())
        .args(["dead-letters", "--config"])
        .arg(dir.path().join("agent.toml"))
        .output()
        .unwrap();
    let summary = String::from_utf8(summary.stdout).unwrap();
    assert!(summary.starts_with("3 dead letter(s)"), "{summary}");
    assert!(
        summary.contains("sensor-check  fragile@1.0.0  trap"),
        "{summary}"
    );
    agent.stop();
}

#[test]
fn check_refuses_a_bad_module_and_transform_test_runs_one() {
    let dir = tempfile::tempdir().unwrap();
    let config = |wasm: &str| {
        AgentConfig::for_device("d1")
            .uplink("mqtt://127.0.0.1:1")
            .source(HttpSourceConfig::new(
                "s",
                ([127, 0, 0, 1], 0).into(),
                &["x"],
            ))
            .stage(TransformStageConfig::new(
                "s",
                vec![ChainEntry::new(wasm).with("above", 0.0)],
            ))
    };
    let check = |config: AgentConfig| {
        let path = write_agent_config(dir.path(), "check", &config);
        Command::new(agent_bin())
            .args(["check", "--config"])
            .arg(&path)
            .output()
            .unwrap()
    };
    let ok = check(config(&dist("threshold")));
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("transform threshold@"));
    let garbage = dir.path().join("garbage.wasm");
    std::fs::write(&garbage, b"\0asm\x01\0\0\0\x05garbage").unwrap();
    let bad = check(config(&garbage.display().to_string()));
    assert_eq!(bad.status.code(), Some(64));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("stages[0].chain[0].wasm"), "{err}");
    assert!(err.contains("invalid WebAssembly"), "{err}");

    let input = dir.path().join("in.jsonl");
    std::fs::write(
        &input,
        "{\"values\":[1]}\n{\"values\":[-1]}\n{\"values\":[2]}\n",
    )
    .unwrap();
    let run = |wasm: &str, config: &str| {
        Command::new(agent_bin())
            .args([
                "transform",
                "test",
                "--wasm",
                wasm,
                "--config",
                config,
                "--input",
            ])
            .arg(&input)
            .output()
            .unwrap()
    };
    let out = run(&dist("threshold"), r#"{"above": 0}"#);
    assert!(out.status.success());
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[1]["values"][0], 2.0);
    let report = String::from_utf8_lossy(&out.stderr);
    assert!(
        report.contains("3 in, 2 out, 0 rejected, 0 failed"),
        "{report}"
    );
    let fragile = trap_on_negative(dir.path()).display().to_string();
    let out = run(&fragile, "{}");
    assert_eq!(out.status.code(), Some(1), "a failed record fails the run");
    let report = String::from_utf8_lossy(&out.stderr);
    assert!(
        report.contains("3 in, 2 out, 0 rejected, 1 failed"),
        "{report}"
    );
    assert!(
        report.contains("trap: wasm `unreachable` instruction executed"),
        "{report}"
    );
}
