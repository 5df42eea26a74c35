//! Two real edge agents stream a known number of records through the
//! embedded broker; the hub must hold every one exactly once, in sequence
//! order per device, with the values of the replayed data set.

use conveyor_e2e::*;

fn replay_agent(device: &str, mqtt: &str, file: &str, limit: u64) -> AgentConfig {
    AgentConfig::for_device(device)
        .data_dir(format!("state-{device}"))
        .uplink(mqtt)
        .uplink_with(|u| {
            u.batch_max_records = 64;
            u.heartbeat_secs = 0.5;
        })
        .source(ReplayConfig {
            rate: Some(0.0),
            looping: true,
            limit: Some(limit),
            ..ReplayConfig::new("replay", data_file(file))
        })
}

/// The rows of a `.ts` file, one per time step, as the replay emits them.
fn ts_rows(file: &str) -> Vec<Vec<f64>> {
    let text = std::fs::read_to_string(data_file(file)).unwrap();
    let mut rows = Vec::new();
    let mut data = false;
    for line in text.lines() {
        if line.trim() == "@data" {
            data = true;
            continue;
        }
        if !data || line.trim().is_empty() {
            continue;
        }
        let mut channels: Vec<Vec<f64>> = line
            .split(':')
            .map(|c| c.split(',').filter_map(|v| v.trim().parse().ok()).collect())
            .collect();
        channels.pop(); // the label
        for t in 0..channels[0].len() {
            rows.push(channels.iter().map(|c| c[t]).collect());
        }
    }
    rows
}

#[test]
fn two_agents_every_record_exactly_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let hub = Hub::start(dir.path());
    // The watch loops past the end of its 4000-row file; the plug does not
    // reach the end of its 146000 rows.
    let watch_n = 6_000;
    let plug_n = 5_000;
    let mut watch = start_agent(
        dir.path(),
        "watch",
        &replay_agent(
            "e2e-watch",
            &hub.mqtt_url(),
            "BasicMotions/BasicMotions_TRAIN.ts",
            watch_n,
        ),
    );
    let mut plug = start_agent(
        dir.path(),
        "plug",
        &replay_agent("e2e-plug", &hub.mqtt_url(), "ACSF1/ACSF1_TRAIN.ts", plug_n),
    );
    assert!(
        watch.wait().success(),
        "watch agent failed:\n{}",
        watch.log()
    );
    assert!(plug.wait().success(), "plug agent failed:\n{}", plug.log());

    for (device, n, file, width) in [
        (
            "e2e-watch",
            watch_n,
            "BasicMotions/BasicMotions_TRAIN.ts",
            6,
        ),
        ("e2e-plug", plug_n, "ACSF1/ACSF1_TRAIN.ts", 1),
    ] {
        hub.wait_for_records(device, n);
        let records = hub.all_records(device);
        let seqs: Vec<u64> = records.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
        assert_eq!(
            seqs,
            (0..n).collect::<Vec<_>>(),
            "{device}: every seq once, in order"
        );
        // The values are the data set's, row by row (looping for the watch).
        let rows = ts_rows(file);
        for r in records.iter().step_by(997) {
            let seq = r["seq"].as_u64().unwrap() as usize;
            let values: Vec<f64> = r["values"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect();
            assert_eq!(values.len(), width);
            assert_eq!(values, rows[seq % rows.len()], "{device} seq {seq}");
            assert_eq!(r["stream"], "replay");
            assert!(
                r["label"].is_string(),
                "replayed records carry the class label"
            );
        }
        // The agent said goodbye: a clean offline status and a final
        // heartbeat that accounts for every record.
        let d = hub.device(device).unwrap();
        assert_eq!(d["online"], false, "{d}");
        assert_eq!(d["status"]["clean"], true, "{d}");
        assert_eq!(
            d["last_heartbeat"]["records_acked"].as_u64(),
            Some(n),
            "{d}"
        );
        assert_eq!(d["last_heartbeat"]["log_records"].as_u64(), Some(0), "{d}");
        assert_eq!(d["highest_seq"].as_u64(), Some(n - 1));
    }
    let stats = hub.get("/api/v1/stats");
    assert_eq!(
        stats["records_received"].as_u64(),
        Some(watch_n + plug_n),
        "{stats}"
    );
    assert_eq!(stats["payloads_rejected"].as_u64(), Some(0), "{stats}");
}

#[test]
fn restarted_agent_continues_its_sequence_and_the_hub_keeps_its_data() {
    let dir = tempfile::tempdir().unwrap();
    let mut hub = Hub::start(dir.path());
    let config = replay_agent(
        "e2e-restart",
        &hub.mqtt_url(),
        "BasicMotions/BasicMotions_TEST.ts",
        500,
    );
    for round in 1..=2u64 {
        let mut agent = start_agent(dir.path(), "agent", &config);
        assert!(agent.wait().success(), "round {round}:\n{}", agent.log());
        hub.wait_for_records("e2e-restart", 500 * round);
    }
    let seqs: Vec<u64> = hub
        .all_records("e2e-restart")
        .iter()
        .map(|r| r["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, (0..1000).collect::<Vec<_>>());

    // The hub restarts on the same store: records and the device survive.
    assert!(hub.proc.stop().success());
    let http_before = hub.http;
    drop(hub);
    let hub = Hub::start(dir.path());
    assert_ne!(hub.http, http_before, "a fresh port, same store");
    assert_eq!(hub.all_records("e2e-restart").len(), 1000);
    let d = hub.device("e2e-restart").unwrap();
    assert_eq!(d["records"].as_u64(), Some(1000));
    assert_eq!(d["online"], false);
}

#[test]
fn agent_reconnects_by_itself_when_the_hub_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let hub = Hub::start(dir.path());
    let config = AgentConfig::for_device("e2e-reconnect")
        .data_dir("state")
        .uplink(&hub.mqtt_url())
        .uplink_with(|u| u.heartbeat_secs = 0.2)
        .source(ReplayConfig {
            rate: Some(200.0),
            looping: true,
            ..ReplayConfig::new("motion", data_file("BasicMotions/BasicMotions_TEST.ts"))
        });
    let mut agent = start_agent(dir.path(), "agent", &config);
    wait_for("records before the restart", || {
        hub.device("e2e-reconnect")
            .filter(|d| d["records"].as_u64() > Some(100))
    });
    let hub = hub.restart();
    let before = hub.device("e2e-reconnect").unwrap()["records"]
        .as_u64()
        .unwrap();
    // The agent notices, reconnects on its own and streams on.
    wait_for("the agent to reconnect and stream on", || {
        hub.device("e2e-reconnect").filter(|d| {
            d["online"] == true
                && d["records"].as_u64() > Some(before + 100)
                && d["last_heartbeat"]["connects"].as_u64() >= Some(2)
        })
    });
    assert!(agent.stop().success(), "{}", agent.log());
    // Stored seqs strictly grow: no record is held twice. (Records that were
    // in flight while the broker was down may be missing: durable
    // store-and-forward is the durable log's job.)
    let seqs: Vec<u64> = hub
        .all_records("e2e-reconnect")
        .iter()
        .map(|r| r["seq"].as_u64().unwrap())
        .collect();
    assert!(seqs.windows(2).all(|w| w[1] > w[0]));
    assert!(seqs.len() as u64 > before + 100);
}
