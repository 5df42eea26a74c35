//! No record lost: faults injected into real processes. Each test streams a
//! known set of records and checks at the end that the hub holds every one
//! exactly once, in per-device sequence order.

use conveyor_e2e::*;

fn agent_config(
    device: &str,
    mqtt_port: u16,
    limit: u64,
    rate: u32,
    log: LogConfig,
) -> AgentConfig {
    AgentConfig::for_device(device)
        .data_dir(format!("state-{device}"))
        .uplink(&format!("mqtt://127.0.0.1:{mqtt_port}"))
        .uplink_with(|u| {
            u.batch_max_records = 100;
            u.heartbeat_secs = 0.2;
            u.ack_timeout_ms = 1000;
        })
        .log(log)
        .source(ReplayConfig {
            rate: Some(rate.into()),
            looping: true,
            limit: Some(limit),
            ..ReplayConfig::new("motion", data_file("BasicMotions/BasicMotions_TRAIN.ts"))
        })
}

#[test]
fn hub_killed_mid_stream_and_restarted() {
    let dir = tempfile::tempdir().unwrap();
    let hub = Hub::start(dir.path());
    let n = 20_000;
    let mut agent = start_agent(
        dir.path(),
        "agent",
        &agent_config("f-hubkill", hub.mqtt_port, n, 4000, LogConfig::default()),
    );
    wait_for("some records stored", || {
        (hub.records("f-hubkill") > 2_000).then_some(())
    });
    let hub = hub.kill_and_restart();
    assert!(agent.wait().success(), "{}", agent.log());
    hub.wait_for_records("f-hubkill", n);
    assert_eq!(hub.seqs("f-hubkill"), (0..n).collect::<Vec<_>>());
}

#[test]
fn agent_killed_mid_stream_and_restarted() {
    let dir = tempfile::tempdir().unwrap();
    let hub = Hub::start(dir.path());
    let config = agent_config(
        "f-agentkill",
        hub.mqtt_port,
        10_000,
        4000,
        LogConfig::default(),
    );
    let agent = start_agent(dir.path(), "agent", &config);
    wait_for("some records stored", || {
        (hub.records("f-agentkill") > 2_000).then_some(())
    });
    agent.signal(libc::SIGKILL);
    drop(agent);
    // The restarted agent resumes from its log, and its replay starts over
    // with seqs that continue where the log left off.
    let mut agent = start_agent(dir.path(), "agent", &config);
    assert!(agent.wait().success(), "{}", agent.log());
    let d = wait_for("the final heartbeat", || {
        hub.device("f-agentkill")
            .filter(|d| d["online"] == false && d["last_heartbeat"]["log_records"] == 0)
    });
    let next_seq = d["last_heartbeat"]["next_seq"].as_u64().unwrap();
    assert!(next_seq >= 10_000, "{d}");
    hub.wait_for_records("f-agentkill", next_seq);
    assert_eq!(hub.seqs("f-agentkill"), (0..next_seq).collect::<Vec<_>>());
}

#[test]
fn external_broker_restarted_mid_stream() {
    let dir = tempfile::tempdir().unwrap();
    let (mosquitto, port) = start_mosquitto(dir.path());
    let hub = Hub::start_with(dir.path(), Some(port));
    let n = 15_000;
    let mut agent = start_agent(
        dir.path(),
        "agent",
        &agent_config("f-broker", port, n, 3000, LogConfig::default()),
    );
    wait_for("some records stored", || {
        (hub.records("f-broker") > 2_000).then_some(())
    });
    mosquitto.signal(libc::SIGKILL);
    drop(mosquitto);
    let _mosquitto = start_mosquitto_at(dir.path(), port);
    assert!(agent.wait().success(), "{}", agent.log());
    hub.wait_for_records("f-broker", n);
    assert_eq!(hub.seqs("f-broker"), (0..n).collect::<Vec<_>>());
}

#[test]
fn hub_unreachable_past_the_log_bound_drops_exactly_the_counted_oldest() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let n = 5_000;
    // ~70 bytes a record: 5,000 records do not fit in 64 KiB.
    let log = LogConfig {
        max_bytes: 65536,
        full_policy: FullPolicy::DropOldest,
        ..Default::default()
    };
    let mut agent = start_agent(
        dir.path(),
        "agent",
        &agent_config("f-bound", port, n, 0, log),
    );
    // With nobody listening, everything the replay produces goes to the log.
    wait_for("the replay to finish into the log", || {
        agent.log().contains("replay finished").then_some(())
    });
    let hub = Hub::start_at(dir.path(), port);
    assert!(agent.wait().success(), "{}", agent.log());
    let d = wait_for("the final heartbeat", || {
        hub.device("f-bound")
            .filter(|d| d["online"] == false && d["last_heartbeat"]["log_records"] == 0)
    });
    let dropped = d["last_heartbeat"]["log_dropped_full"].as_u64().unwrap();
    assert!(dropped > 0 && dropped < n, "{d}");
    hub.wait_for_records("f-bound", n - dropped);
    // Exactly the counted records are missing, and they are the oldest.
    assert_eq!(hub.seqs("f-bound"), (dropped..n).collect::<Vec<_>>());
}
