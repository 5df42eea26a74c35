//! Bad input never crashes anything or loses data: malformed payloads are
//! counted by reason and skipped while good data keeps flowing; malformed
//! configs exit with code 64 and a message naming the field.

use std::process::Command;

use conveyor_e2e::*;
use conveyor_shared::{DeviceId, Record, RecordBatch};

fn mosquitto_pub(port: u16, topic: &str, payload: &[u8], dir: &std::path::Path) {
    let file = dir.join("payload.bin");
    std::fs::write(&file, payload).unwrap();
    let status = Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-q",
            "1",
            "-t",
            topic,
            "-f",
        ])
        .arg(&file)
        .status()
        .expect("mosquitto_pub must be installed (.ci/run installs mosquitto-clients)");
    assert!(status.success());
}

fn rejected(hub: &Hub, reason: &str) -> u64 {
    let needle = format!("conveyor_hub_payloads_rejected_total{{reason=\"{reason}\"}} ");
    hub.metrics()
        .lines()
        .find_map(|l| l.strip_prefix(&needle).map(|v| v.trim().parse().unwrap()))
        .unwrap_or(0)
}

fn batch(device: &str, version: u32) -> Vec<u8> {
    let mut b = RecordBatch::new(
        &DeviceId::new(device).unwrap(),
        0,
        vec![Record {
            stream: "s".into(),
            seq: 1,
            source_ts_us: 1,
            values: vec![1.0],
            label: String::new(),
            ..Default::default()
        }],
    );
    b.version = version;
    b.encode_to_bytes()
}

#[test]
fn malformed_payloads_are_counted_and_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let hub = Hub::start(dir.path());
    let p = hub.mqtt_port;
    let d = dir.path();
    mosquitto_pub(
        p,
        "conveyor/v1/evil-1/up/records",
        b"this is not protobuf \xff\xff\xff",
        d,
    );
    mosquitto_pub(
        p,
        "conveyor/v1/evil-1/up/records",
        &batch("someone-else", 1),
        d,
    );
    mosquitto_pub(p, "conveyor/v1/evil-1/up/records", &batch("evil-1", 99), d);
    mosquitto_pub(p, "conveyor/v1/evil-1/up/records", &[], d);
    mosquitto_pub(p, "conveyor/v1/evil-1/status", b"{not json", d);
    mosquitto_pub(p, "conveyor/v1/evil-1/heartbeat", b"[1,2,3]", d);
    mosquitto_pub(p, "conveyor/v1/bad device!/status", b"{}", d);

    for (reason, n) in [
        ("not_protobuf", 1),
        ("device_mismatch", 1),
        // version 99, and the empty payload (an empty protobuf message
        // decodes with version 0)
        ("unsupported_version", 2),
        ("bad_status", 1),
        ("bad_heartbeat", 1),
        ("bad_topic", 1),
    ] {
        wait_for(&format!("{reason} to be counted"), || {
            (rejected(&hub, reason) == n).then_some(())
        });
    }
    let evil = hub.device("evil-1").unwrap();
    assert_eq!(evil["rejected_payloads"].as_u64(), Some(6), "{evil}");
    assert_eq!(evil["records"].as_u64(), Some(0));
    assert!(
        hub.proc.log().contains("payload rejected"),
        "a log line per rejection"
    );

    // The hub is still up and still ingests good data.
    let config = AgentConfig::for_device("good-1")
        .data_dir("state")
        .uplink(&hub.mqtt_url())
        .source(ReplayConfig {
            rate: Some(0.0),
            limit: Some(1000),
            ..ReplayConfig::new("power", data_file("ACSF1/ACSF1_TEST.ts"))
        });
    let mut agent = start_agent(d, "agent", &config);
    assert!(agent.wait().success(), "{}", agent.log());
    hub.wait_for_records("good-1", 1000);
}

#[test]
fn invalid_hub_config_exits_64_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = dir.path().join("hub.toml");
    std::fs::write(
        &config,
        format!("[broker]\nlisten = \"127.0.0.1:{port}\"\n[store]\ndir = \"x\"\n"),
    )
    .unwrap();
    let out = Command::new(hub_bin())
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown field `dir`"), "{err}");
    // Nothing was bound: the broker's port is still free.
    assert!(std::net::TcpListener::bind(("127.0.0.1", port)).is_ok());

    std::fs::write(&config, "[broker]\nmode = \"external\"\n").unwrap();
    let out = Command::new(hub_bin())
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("broker.url: is required"));
}

#[test]
fn invalid_agent_config_exits_64_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.toml");
    let replay = |path: std::path::PathBuf, rate: f64| {
        AgentConfig::for_device("a1")
            .uplink("mqtt://127.0.0.1:1")
            .source(ReplayConfig {
                rate: Some(rate),
                ..ReplayConfig::new("m", path)
            })
    };
    let check = |agent: &AgentConfig| {
        std::fs::write(&config, agent.to_toml()).unwrap();
        let out = Command::new(agent_bin())
            .args(["check", "--config"])
            .arg(&config)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned()
                + &String::from_utf8_lossy(&out.stdout),
        )
    };
    let good = replay(data_file("BasicMotions/BasicMotions_TEST.ts"), 5.0);
    let (code, out) = check(&good);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("ok"), "{out}");

    let negative = replay(data_file("BasicMotions/BasicMotions_TEST.ts"), -5.0);
    let (code, out) = check(&negative);
    assert_eq!(code, Some(64));
    assert!(out.contains("sources[0].rate"), "{out}");

    let broken = dir.path().join("broken.ts");
    std::fs::write(&broken, "@data\n1,2,3:1,2:X\n").unwrap();
    let (code, out) = check(&replay(broken, 5.0));
    assert_eq!(code, Some(64));
    assert!(
        out.contains("sources[0].path") && out.contains("broken.ts:2"),
        "{out}"
    );

    // `run` refuses the same config before connecting anywhere.
    std::fs::write(&config, negative.to_toml()).unwrap();
    let out = Command::new(agent_bin())
        .args(["run", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
}

/// The lines `check` printed that report a problem, each naming its field.
fn problems<'a>(out: &'a str, prefix: &str) -> Vec<&'a str> {
    out.lines().filter_map(|l| l.strip_prefix(prefix)).collect()
}

#[test]
fn check_reports_every_mistake_in_a_file_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let agent = "edge-agent: invalid config: ";

    // Three independent mistakes in three parts of the file.
    let mut config = AgentConfig::for_device("a1")
        .uplink("mqtt://127.0.0.1:1")
        .source(ReplayConfig {
            rate: Some(-5.0),
            ..ReplayConfig::new("m", data_file("BasicMotions/BasicMotions_TEST.ts"))
        })
        .stage(InferenceConfig {
            stride: Some(0),
            ..InferenceConfig::new(repo_root().join("models/basicmotions/edge.int8.json"))
        });
    config.uplink.batch_max_records = 0;
    let (code, out) = check_agent(d, "three", &config);
    assert_eq!(code, Some(64), "{out}");
    let found = problems(&out, agent);
    assert_eq!(found.len(), 3, "{out}");
    assert!(found[0].starts_with("uplink.batch_max_records: "), "{out}");
    assert!(found[1].starts_with("sources[0].rate: "), "{out}");
    assert!(found[2].starts_with("stages[0].stride: "), "{out}");

    // Three parts that cannot be built: two recordings and a model that
    // are not there.
    let config = AgentConfig::for_device("a1")
        .uplink("mqtt://127.0.0.1:1")
        .source(ReplayConfig {
            rate: Some(5.0),
            ..ReplayConfig::new("m", d.join("missing-1.ts"))
        })
        .source(ReplayConfig {
            rate: Some(5.0),
            ..ReplayConfig::new("n", d.join("missing-2.ts"))
        })
        .stage(InferenceConfig::new(d.join("missing-model.json")));
    let (code, out) = check_agent(d, "unbuildable", &config);
    assert_eq!(code, Some(64), "{out}");
    let found = problems(&out, agent);
    assert_eq!(found.len(), 3, "{out}");
    assert!(found[0].starts_with("sources[0].path: ") && found[0].contains("missing-1.ts"));
    assert!(found[1].starts_with("sources[1].path: ") && found[1].contains("missing-2.ts"));
    assert!(found[2].starts_with("stages[0].model: ") && found[2].contains("missing-model"));

    // A file that is not TOML is one error, with its line.
    let path = d.join("syntax.toml");
    std::fs::write(&path, "device_id = \"a1\"\n[uplink\n").unwrap();
    let (code, out) = check_agent_file(&path);
    assert_eq!(code, Some(64), "{out}");
    let found = problems(&out, agent);
    assert_eq!(found.len(), 1, "{out}");
    assert!(out.contains("line 2"), "{out}");

    // The hub: three mistakes in the file, then two models that do not load.
    let hub = "cloud-hub: invalid config: ";
    let hub_check = |text: &str| {
        let path = d.join("hub.toml");
        std::fs::write(&path, text).unwrap();
        let out = Command::new(hub_bin())
            .args(["check", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out) = hub_check(
        "[broker]\nmax_connections = 0\n[store]\npath = \"\"\n\
         [[inference.models]]\nmetadata = \"m.json\"\nmax_batch = 0\n",
    );
    assert_eq!(code, Some(64), "{out}");
    let found = problems(&out, hub);
    assert_eq!(found.len(), 3, "{out}");
    assert!(found[0].starts_with("broker.max_connections: "), "{out}");
    assert!(
        found[1].starts_with("inference.models[0].max_batch: "),
        "{out}"
    );
    assert!(found[2].starts_with("store.path: "), "{out}");
    let (code, out) = hub_check(&format!(
        "[[inference.models]]\nmetadata = {:?}\n[[inference.models]]\nmetadata = {:?}\n",
        d.join("a.json"),
        d.join("b.json")
    ));
    assert_eq!(code, Some(64), "{out}");
    let found = problems(&out, hub);
    assert_eq!(found.len(), 2, "{out}");
    assert!(found[0].starts_with("inference.models[0]: ") && found[0].contains("a.json"));
    assert!(found[1].starts_with("inference.models[1]: ") && found[1].contains("b.json"));
}
