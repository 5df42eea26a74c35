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
    let toml = format!(
        r#"
device_id = "good-1"
data_dir = "state"
[uplink]
url = "{}"
[[sources]]
type = "replay"
name = "power"
path = {:?}
rate = 0
limit = 1000
"#,
        hub.mqtt_url(),
        data_file("ACSF1/ACSF1_TEST.ts")
    );
    let mut agent = start_agent(d, "agent", &toml);
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
    let base = |source: &str| {
        format!("device_id = \"a1\"\n[uplink]\nurl = \"mqtt://127.0.0.1:1\"\n[[sources]]\n{source}")
    };
    let check = |text: &str| {
        std::fs::write(&config, text).unwrap();
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
    let good = base(&format!(
        "type = \"replay\"\nname = \"m\"\npath = {:?}\nrate = 5\n",
        data_file("BasicMotions/BasicMotions_TEST.ts")
    ));
    let (code, out) = check(&good);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("ok"), "{out}");

    let (code, out) = check(&good.replace("rate = 5", "rate = -5"));
    assert_eq!(code, Some(64));
    assert!(out.contains("sources[0].rate"), "{out}");

    let broken = dir.path().join("broken.ts");
    std::fs::write(&broken, "@data\n1,2,3:1,2:X\n").unwrap();
    let (code, out) = check(&base(&format!(
        "type = \"replay\"\nname = \"m\"\npath = {broken:?}\nrate = 5\n"
    )));
    assert_eq!(code, Some(64));
    assert!(
        out.contains("sources[0].path") && out.contains("broken.ts:2"),
        "{out}"
    );

    // `run` refuses the same config before connecting anywhere.
    std::fs::write(&config, good.replace("rate = 5", "rate = -5")).unwrap();
    let out = Command::new(agent_bin())
        .args(["run", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
}
