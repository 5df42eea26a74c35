//! The live sources (HTTP push, MQTT from a local shop-floor broker) and
//! the hub on an external broker, each with real processes end to end.

use std::process::Command;

use conveyor_e2e::*;
use conveyor_shared::BrokerUrl;

#[test]
fn http_source_accepts_good_readings_and_explains_bad_ones() {
    let dir = tempfile::tempdir().unwrap();
    let hub = Hub::start(dir.path());
    let port = free_port();
    let config = AgentConfig::for_device("store-7")
        .data_dir("state")
        .uplink(&hub.mqtt_url())
        .source(HttpSourceConfig {
            timestamp_field: Some("ts_ms".into()),
            ..HttpSourceConfig::new(
                "fridge",
                ([127, 0, 0, 1], port).into(),
                &["temperature", "door_open"],
            )
        });
    let mut agent = start_agent(dir.path(), "agent", &config);
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    wait_for("the HTTP source to listen", || {
        std::net::TcpStream::connect(addr).ok()
    });

    let (status, body) = http(
        addr,
        "POST",
        "/readings",
        Some(r#"{"temperature": 4.5, "door_open": 0, "ts_ms": 1700000000000}"#),
    )
    .unwrap();
    assert_eq!(status, 200, "{body}");
    let (status, body) = http(
        addr,
        "POST",
        "/readings",
        Some(r#"[{"temperature": 5.0, "door_open": 1}, {"temperature": "warm", "door_open": 1}, {"door_open": 0}]"#),
    )
    .unwrap();
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["accepted"], 1);
    assert_eq!(v["rejected"][0]["index"], 1);
    assert!(
        v["rejected"][0]["error"]
            .as_str()
            .unwrap()
            .contains("\"temperature\" is a string"),
        "{v}"
    );
    assert!(
        v["rejected"][1]["error"]
            .as_str()
            .unwrap()
            .contains("\"temperature\" is missing"),
        "{v}"
    );
    let (status, body) = http(addr, "POST", "/readings", Some("{broken")).unwrap();
    assert_eq!(status, 400, "{body}");

    hub.wait_for_records("store-7", 2);
    let records = hub.all_records("store-7");
    assert_eq!(records[0]["values"], serde_json::json!([4.5, 0.0]));
    assert_eq!(records[0]["source_ts_us"], 1_700_000_000_000_000i64);
    assert_eq!(records[1]["values"], serde_json::json!([5.0, 1.0]));
    assert_eq!(records[1]["stream"], "fridge");

    // The agent reports its rejections in its heartbeat.
    assert!(agent.stop().success());
    let d = hub.device("store-7").unwrap();
    assert_eq!(
        d["last_heartbeat"]["sources"]["fridge"]["rejected"], 3,
        "{d}"
    );
    assert_eq!(
        d["last_heartbeat"]["sources"]["fridge"]["records"], 2,
        "{d}"
    );
}

#[test]
fn mqtt_source_reads_a_local_mosquitto() {
    let dir = tempfile::tempdir().unwrap();
    let hub = Hub::start(dir.path());
    let (_mosquitto, local_port) = start_mosquitto(dir.path());
    let config = AgentConfig::for_device("line-3")
        .data_dir("state")
        .uplink(&hub.mqtt_url())
        .source(MqttSourceConfig::new(
            "vibration",
            BrokerUrl::parse(&format!("mqtt://127.0.0.1:{local_port}")).unwrap(),
            "plant/line3/+/vibration",
            &["rms", "peak"],
        ));
    let mut agent = start_agent(dir.path(), "agent", &config);
    wait_for("the agent to be online", || {
        hub.device("line-3").filter(|d| d["online"] == true)
    });
    // The source subscribes right after connecting; publish until the
    // first reading arrives, then a known sequence.
    let publish = |payload: &str| {
        let ok = Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &local_port.to_string(), "-q", "1"])
            .args(["-t", "plant/line3/motor-a/vibration", "-m", payload])
            .status()
            .unwrap()
            .success();
        assert!(ok);
    };
    wait_for("the MQTT source's subscription", || {
        publish(r#"{"rms": 0.0, "peak": 0.0}"#);
        hub.device("line-3")
            .filter(|d| d["records"].as_u64() >= Some(1))
    });
    for i in 1..=20 {
        publish(&format!(r#"{{"rms": {i}.5, "peak": {}}}"#, i * 2));
    }
    publish("not json at all");
    let records = wait_for("the last reading at the hub", || {
        let records = hub.all_records("line-3");
        (records.last()?["values"] == serde_json::json!([20.5, 40.0])).then_some(records)
    });
    // The 20 readings arrived in order, after however many probes.
    let tail: Vec<&serde_json::Value> = records[records.len() - 20..]
        .iter()
        .map(|r| &r["values"])
        .collect();
    for (i, values) in tail.iter().enumerate() {
        let i = i as f64 + 1.0;
        assert_eq!(**values, serde_json::json!([i + 0.5, i * 2.0]));
    }
    assert!(agent.stop().success(), "{}", agent.log());
    let d = hub.device("line-3").unwrap();
    assert_eq!(
        d["last_heartbeat"]["sources"]["vibration"]["rejected"], 1,
        "{d}"
    );
}

#[test]
fn hub_on_an_external_mosquitto() {
    let dir = tempfile::tempdir().unwrap();
    let (_mosquitto, port) = start_mosquitto(dir.path());
    let hub = Hub::start_with(dir.path(), Some(port));
    assert_eq!(hub.get("/healthz")["broker"], "external");
    wait_for("the hub's subscription on mosquitto", || {
        // The hub subscribes right after connecting; a status message
        // shows when it is in place.
        let ok = Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1", "-r"])
            .args(["-t", "conveyor/v1/probe/status", "-m"])
            .arg(r#"{"device_id":"probe","state":"offline"}"#)
            .status()
            .unwrap()
            .success();
        assert!(ok);
        hub.device("probe")
    });
    let config = AgentConfig::for_device("ext-1")
        .data_dir("state")
        .uplink(&format!("mqtt://127.0.0.1:{port}"))
        .source(ReplayConfig {
            rate: Some(0.0),
            limit: Some(3000),
            looping: true,
            ..ReplayConfig::new("motion", data_file("BasicMotions/BasicMotions_TEST.ts"))
        });
    let mut agent = start_agent(dir.path(), "agent", &config);
    assert!(agent.wait().success(), "{}", agent.log());
    hub.wait_for_records("ext-1", 3000);
    let seqs: Vec<u64> = hub
        .all_records("ext-1")
        .iter()
        .map(|r| r["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, (0..3000).collect::<Vec<_>>());
}
