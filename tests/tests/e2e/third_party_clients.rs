//! The wire protocol as outsiders see it: a plain `mosquitto_sub` reads the
//! uplink off the hub's embedded broker, and `protoc --decode` decodes it
//! with nothing but the published `shared/proto/conveyor.proto`.

use std::process::{Command, Stdio};

use conveyor_e2e::*;

fn agent_config(device: &str, mqtt: &str) -> AgentConfig {
    AgentConfig::for_device(device)
        .data_dir("state")
        .uplink(mqtt)
        .uplink_with(|u| {
            u.batch_max_records = 10;
            u.batch_max_delay_ms = 5000;
        })
        .source(ReplayConfig {
            rate: Some(200.0),
            looping: true,
            ..ReplayConfig::new("motion", data_file("BasicMotions/BasicMotions_TRAIN.ts"))
        })
}

#[test]
fn mosquitto_sub_reads_the_uplink_and_protoc_decodes_it() {
    let dir = tempfile::tempdir().unwrap();
    let hub = Hub::start(dir.path());
    // `-F %x` prints each payload as one line of hex: binary-safe.
    let sub = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &hub.mqtt_port.to_string()])
        .args([
            "-t",
            "conveyor/v1/+/up/records",
            "-C",
            "3",
            "-F",
            "%t %x",
            "-q",
            "1",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mosquitto_sub must be installed (.ci/run installs mosquitto-clients)");
    // The agent streams until stopped, so whenever mosquitto_sub's
    // subscription lands, three batches follow.
    let mut agent = start_agent(
        dir.path(),
        "agent",
        &agent_config("interop-1", &hub.mqtt_url()),
    );
    let out = sub.wait_with_output().unwrap();
    assert!(agent.stop().success(), "{}", agent.log());
    assert!(
        out.status.success(),
        "mosquitto_sub: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    let mut seqs = Vec::new();
    for line in lines {
        let (topic, hex) = line.split_once(' ').unwrap();
        assert_eq!(topic, "conveyor/v1/interop-1/up/records");
        let decoded = protoc_decode("conveyor.v1.RecordBatch", &hex_decode(hex));
        assert!(decoded.contains("version: 1"), "{decoded}");
        assert!(decoded.contains("device_id: \"interop-1\""), "{decoded}");
        assert!(decoded.contains("stream: \"motion\""), "{decoded}");
        assert!(decoded.contains("label: \"Standing\""), "{decoded}");
        // Our own decoder agrees with protoc, record for record and value
        // for value. (A batch holds at most 10 records; the first after
        // connecting may hold fewer.)
        let ours =
            <conveyor_shared::RecordBatch as prost::Message>::decode(&hex_decode(hex)[..]).unwrap();
        let n = ours.records.len();
        assert!((1..=10).contains(&n), "{decoded}");
        assert_eq!(decoded.matches("records {").count(), n, "{decoded}");
        assert_eq!(
            decoded.matches("values: ").count(),
            6 * n,
            "6 channels per record: {decoded}"
        );
        let last = ours.records.last().unwrap();
        if last.seq > 0 {
            assert!(decoded.contains(&format!("seq: {}", last.seq)), "{decoded}");
        }
        seqs.extend(ours.records.iter().map(|r| r.seq));
    }
    // Consecutive batches of one device: seqs grow by one, no gaps.
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
}

#[test]
fn status_is_retained_json_with_a_last_will() {
    let dir = tempfile::tempdir().unwrap();
    let hub = Hub::start(dir.path());
    // An agent that never finishes: its source is an idle HTTP endpoint.
    let port = free_port();
    let config = AgentConfig::for_device("will-1")
        .data_dir("state")
        .uplink(&hub.mqtt_url())
        .uplink_with(|u| u.keep_alive_secs = 5)
        .source(HttpSourceConfig::new(
            "env",
            ([127, 0, 0, 1], port).into(),
            &["t"],
        ));
    let agent = start_agent(dir.path(), "agent", &config);
    wait_for("the agent to be online", || {
        hub.device("will-1").filter(|d| d["online"] == true)
    });
    let retained = |expect: &str| {
        let out = Command::new("mosquitto_sub")
            .args(["-h", "127.0.0.1", "-p", &hub.mqtt_port.to_string()])
            .args(["-t", "conveyor/v1/will-1/status", "-C", "1", "-W", "10"])
            .output()
            .unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        let v: serde_json::Value =
            serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{e}: {text:?}"));
        assert_eq!(v["state"], expect, "{v}");
        v
    };
    retained("online");
    // SIGKILL: no goodbye, so the broker publishes the last will.
    agent.signal(libc::SIGKILL);
    wait_for("the last will to mark the agent offline", || {
        hub.device("will-1").filter(|d| d["online"] == false)
    });
    let v = retained("offline");
    assert_eq!(
        v["clean"], false,
        "the last will says the agent vanished: {v}"
    );
}
