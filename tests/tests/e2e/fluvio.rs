//! Fluvio as the second transport, against a real local cluster
//! (`fluvio-run`: an SC and SPUs on loopback): agents stream through it,
//! the hub reads the records topic and answers through the downlink topic,
//! beside agents on MQTT. Skipped, loudly, where the cluster's binaries are
//! not there (see `conveyor_e2e::fluvio`).

use conveyor_e2e::fluvio::{self, Cluster};
use conveyor_e2e::*;

/// An agent replaying `limit` records of `file` (without end: None) to
/// `url`, as fast as it can (`rate` 0) or at `rate` records/s.
fn agent_at(device: &str, url: &str, file: &str, limit: Option<u64>, rate: f64) -> AgentConfig {
    AgentConfig::for_device(device)
        .data_dir(format!("state-{device}"))
        .uplink(url)
        .uplink_with(|u| {
            u.batch_max_records = 64;
            u.heartbeat_secs = 0.5;
        })
        .source(ReplayConfig {
            rate: Some(rate),
            looping: true,
            limit,
            ..ReplayConfig::new("replay", data_file(file))
        })
}

fn replay_agent(device: &str, url: &str, file: &str, limit: u64) -> AgentConfig {
    agent_at(device, url, file, Some(limit), 0.0)
}

fn assert_exactly_once(hub: &Hub, device: &str, n: u64) {
    hub.wait_for_records(device, n);
    let seqs = hub.seqs(device);
    assert_eq!(
        seqs,
        (0..n).collect::<Vec<_>>(),
        "{device}: every seq once, in order"
    );
}

#[test]
fn a_mixed_fleet_streams_over_fluvio_and_mqtt_exactly_once() {
    if fluvio::skip("a_mixed_fleet_streams_over_fluvio_and_mqtt_exactly_once") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(dir.path(), 1);
    let hub = Hub::start_serving(dir.path(), &cluster.hub_toml(""));
    let fleet = [
        (
            "flv-watch",
            cluster.url(),
            "BasicMotions/BasicMotions_TRAIN.ts",
            3_000,
        ),
        ("flv-plug", cluster.url(), "ACSF1/ACSF1_TRAIN.ts", 2_500),
        (
            "mqtt-watch",
            hub.mqtt_url(),
            "BasicMotions/BasicMotions_TEST.ts",
            2_000,
        ),
    ];
    let mut agents: Vec<(&str, u64, Proc)> = fleet
        .iter()
        .map(|(device, url, file, n)| {
            let config = replay_agent(device, url, file, *n);
            (*device, *n, start_agent(dir.path(), device, &config))
        })
        .collect();
    // An agent with a limit exits once its log is drained: every record
    // was acknowledged by the hub, over the transport it came by.
    for (device, _, agent) in &mut agents {
        assert!(agent.wait().success(), "{device} failed:\n{}", agent.log());
    }
    for (device, n, _) in &agents {
        assert_exactly_once(&hub, device, *n);
    }

    // The records topic holds the Fluvio agents' batches, keyed by their
    // MQTT-style topic, readable by Fluvio's own client and decodable
    // with the published .proto.
    let records = fluvio::read_all(&cluster.url(), "conveyor-records");
    let batches: Vec<&(String, Vec<u8>)> = records
        .iter()
        .filter(|(k, _)| k == "conveyor/v1/flv-watch/up/records")
        .collect();
    assert!(
        !batches.is_empty(),
        "no batches of flv-watch in the records topic"
    );
    let text = protoc_decode("conveyor.v1.RecordBatch", &batches[0].1);
    assert!(text.contains("device_id: \"flv-watch\""), "{text}");
    assert!(
        records.iter().all(|(k, _)| !k.contains("mqtt-watch")),
        "the MQTT agent's messages stay off Fluvio"
    );
    // Status and heartbeats travel the same way; the hub saw both agents.
    assert!(records
        .iter()
        .any(|(k, _)| k == "conveyor/v1/flv-plug/status"));
    let device = hub.device("flv-plug").unwrap();
    assert!(!device["last_heartbeat"].is_null(), "{device}");
}

/// A paced agent that streams until it is stopped, so every fault below
/// lands mid-stream however long the cluster takes to settle.
fn paced_agent(device: &str, url: &str, file: &str) -> AgentConfig {
    agent_at(device, url, file, None, 400.0)
}

/// `text` without its terminal colour codes (`ESC [ ... m`).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Stops a streaming agent (SIGTERM), then starts it once more with
/// nothing left to replay: it exits once its log is drained, that is once
/// the hub has acknowledged every record as durable, and says its next
/// seq. Then the hub holds every seq the agent ever gave, once, in order.
fn drain_and_check(
    dir: &std::path::Path,
    hub: &Hub,
    device: &str,
    agent: &mut Proc,
    config: &AgentConfig,
) {
    agent.signal(libc::SIGTERM);
    assert!(agent.wait().success(), "{device} failed:\n{}", agent.log());
    let mut drain = config.clone();
    for s in &mut drain.sources {
        if let SourceConfig::Replay(r) = s {
            r.limit = Some(0);
        }
    }
    let mut again = start_agent(dir, device, &drain);
    assert!(again.wait().success(), "{device} failed:\n{}", again.log());
    // The agent's last word: "edge agent stopped acked=.. left_in_log=0
    // next_seq=N".
    let log = strip_ansi(&again.log());
    let stopped = log
        .lines()
        .rfind(|l| l.contains("edge agent stopped"))
        .unwrap_or_else(|| panic!("{device}: no final line:\n{log}"));
    assert!(stopped.contains("left_in_log=0"), "{stopped}");
    let next_seq: u64 = stopped
        .split("next_seq=")
        .nth(1)
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{device}: no next_seq in {stopped:?}"));
    assert!(next_seq > 1_000, "{stopped}");
    assert_exactly_once(hub, device, next_seq);
}

/// SIGKILL of `spus` mid-stream, 3 s away, started again; then both
/// `devices` stream on.
fn spus_away(cluster: &mut Cluster, spus: &[usize], hub: &Hub, devices: [&str; 2]) {
    for &i in spus {
        cluster.kill_spu(i);
    }
    // The outage's length, not a wait for something to happen.
    std::thread::sleep(std::time::Duration::from_secs(3));
    for &i in spus {
        cluster.start_spu(i);
    }
    let [a, b] = devices;
    let before = (hub.records(a), hub.records(b));
    wait_for("both agents to stream on after the SPUs' return", || {
        (hub.records(a) > before.0 + 300 && hub.records(b) > before.1 + 300).then_some(())
    });
}

/// SIGKILL of the SPU that leads agent A's partition of a topic
/// replicated on two SPUs, mid-stream, and the SPU back a few seconds
/// later. Whether Fluvio fails over to the follower in that time or the
/// partition waits for its leader (Fluvio 0.18.1 does either, see
/// decision 0046), the agents' logs hold what was not acknowledged:
/// nothing is lost or stored twice.
#[test]
fn an_spu_killed_mid_stream_loses_and_duplicates_nothing() {
    if fluvio::skip("an_spu_killed_mid_stream_loses_and_duplicates_nothing") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(dir.path(), 2);
    // Both topics replicated on both SPUs (the hub finds them made).
    cluster.create_topic("conveyor-records", 2, 2);
    cluster.create_topic("conveyor-downlink", 2, 2);
    let hub = Hub::start_serving(dir.path(), &cluster.hub_toml(""));
    let (a, b) = ("flv-a", "flv-b");
    let config_a = paced_agent(a, &cluster.url(), "BasicMotions/BasicMotions_TRAIN.ts");
    let config_b = paced_agent(b, &cluster.url(), "ACSF1/ACSF1_TRAIN.ts");
    let mut agent_a = start_agent(dir.path(), a, &config_a);
    let mut agent_b = start_agent(dir.path(), b, &config_b);

    wait_for("records of flv-a", || (hub.records(a) > 500).then_some(()));
    cluster.wait_in_sync("conveyor-records");
    cluster.wait_in_sync("conveyor-downlink");
    let partition = conveyor_transport::fluvio::partition_of(a, 2);
    let leader = cluster.leader("conveyor-records", partition);
    spus_away(&mut cluster, &[leader], &hub, [a, b]);

    drain_and_check(dir.path(), &hub, a, &mut agent_a, &config_a);
    drain_and_check(dir.path(), &hub, b, &mut agent_b, &config_b);
}

/// SIGKILL of the hub and of an agent mid-stream, then the cluster's SPU
/// away for a while: the hub resumes after its committed offsets, the
/// agent's log resends what was not acknowledged, and the logs hold
/// everything through the outage and drain when the SPU is back.
#[test]
fn hub_and_agent_killed_and_the_cluster_away_nothing_lost_or_duplicated() {
    if fluvio::skip("hub_and_agent_killed_and_the_cluster_away_nothing_lost_or_duplicated") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(dir.path(), 1);
    let mut hub = Hub::start_serving(dir.path(), &cluster.hub_toml(""));
    let (a, b) = ("flv-a", "flv-b");
    let config_a = paced_agent(a, &cluster.url(), "BasicMotions/BasicMotions_TRAIN.ts");
    let config_b = paced_agent(b, &cluster.url(), "ACSF1/ACSF1_TRAIN.ts");
    let mut agent_a = start_agent(dir.path(), a, &config_a);
    let mut agent_b = start_agent(dir.path(), b, &config_b);
    wait_for("records of both agents", || {
        (hub.records(a) > 300 && hub.records(b) > 300).then_some(())
    });

    // SIGKILL of the hub: it resumes after its last committed offsets.
    let before = hub.records(a) + hub.records(b);
    hub = hub.kill_and_restart();
    wait_for("records after the hub's restart", || {
        (hub.records(a) + hub.records(b) > before + 300).then_some(())
    });

    // SIGKILL of an agent: its log resends what was not acknowledged.
    agent_b.signal(libc::SIGKILL);
    agent_b.wait();
    let before = hub.records(b);
    agent_b = start_agent(dir.path(), b, &config_b);
    wait_for("flv-b to stream again", || {
        (hub.records(b) > before + 200).then_some(())
    });

    // The cluster's only SPU away: the agents' logs hold everything and
    // drain when it is back.
    spus_away(&mut cluster, &[0], &hub, [a, b]);

    drain_and_check(dir.path(), &hub, a, &mut agent_a, &config_a);
    drain_and_check(dir.path(), &hub, b, &mut agent_b, &config_b);
}

/// The demo's mixed fleet: two agents over a local Fluvio cluster the demo
/// starts, two over the embedded MQTT broker, one hub; the watches' model
/// update reaches the Fluvio watch as desired state through the downlink
/// topic, and the MQTT watch as a retained message. Longer than tokio's
/// blocking threads live idle (10 s): the cluster must outlive them.
#[test]
fn the_demo_runs_a_mixed_fleet_and_updates_it_over_both_transports() {
    if fluvio::skip("the_demo_runs_a_mixed_fleet_and_updates_it_over_both_transports") {
        return;
    }
    let tools = fluvio::tools().unwrap();
    let (s, stderr) = run_demo(&[
        "--transport",
        "mixed",
        "--agents",
        "4",
        "--duration",
        "15",
        "--rate",
        "200",
        "--update-after",
        "2",
        "--fluvio-dir",
        tools.to_str().unwrap(),
    ]);
    assert!(stderr.contains("Fluvio    fluvio://127.0.0.1:"), "{stderr}");
    assert_eq!(s["transport"], "mixed", "{s}");
    let devices = s["devices"].as_array().unwrap();
    let over = |t: &str| devices.iter().filter(|d| d["transport"] == t).count();
    assert_eq!((over("fluvio"), over("mqtt")), (2, 2), "{s}");
    for d in devices {
        assert!(d["received"].as_u64().unwrap() > 0, "{d}");
        if d["stream"] == "motion" {
            assert_eq!(d["running"], "basicmotions-edge@2.0.0-int8", "{d}");
        }
    }
    assert_eq!(s["update"]["applied"], 2, "{s}");
}
