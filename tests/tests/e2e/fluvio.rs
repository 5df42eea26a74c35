//! Fluvio as the second transport, against a real local cluster
//! (`fluvio-run`: an SC and SPUs on loopback): agents stream through it,
//! the hub reads the records topic and answers through the downlink topic,
//! beside agents on MQTT. Skipped, loudly, where the cluster's binaries are
//! not there (see `conveyor_e2e::fluvio`).

use conveyor_e2e::fluvio::{self, Cluster};
use conveyor_e2e::*;

/// An agent replaying `limit` records of `file` to `url`, as fast as it
/// can (`rate` 0) or at `rate` records/s.
fn agent_at(device: &str, url: &str, file: &str, limit: u64, rate: f64) -> AgentConfig {
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
            limit: Some(limit),
            ..ReplayConfig::new("replay", data_file(file))
        })
}

fn replay_agent(device: &str, url: &str, file: &str, limit: u64) -> AgentConfig {
    agent_at(device, url, file, limit, 0.0)
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

/// A paced agent: it streams for several seconds, so faults land mid-stream.
fn paced_agent(device: &str, url: &str, file: &str, limit: u64) -> AgentConfig {
    agent_at(device, url, file, limit, 400.0)
}

#[test]
#[ignore = "fails today: after the SIGKILL of the partition's leader SPU, Fluvio's consumer \
            streams (the hub's reader, the agent's downlink) keep reconnecting to the dead SPU \
            instead of the new leader; the links must re-open their streams (issue 18)"]
fn spu_hub_and_agent_killed_and_the_cluster_away_nothing_lost_or_duplicated() {
    if fluvio::skip("spu_hub_and_agent_killed_and_the_cluster_away_nothing_lost_or_duplicated") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(dir.path(), 2);
    // Both topics replicated on both SPUs (the hub finds them made).
    cluster.create_topic("conveyor-records", 2, 2);
    cluster.create_topic("conveyor-downlink", 2, 2);
    let mut hub = Hub::start_serving(dir.path(), &cluster.hub_toml(""));
    let (a, b) = ("flv-a", "flv-b");
    let n = 6_000;
    let mut agent_a = start_agent(
        dir.path(),
        a,
        &paced_agent(a, &cluster.url(), "BasicMotions/BasicMotions_TRAIN.ts", n),
    );
    let config_b = paced_agent(b, &cluster.url(), "ACSF1/ACSF1_TRAIN.ts", n);
    let mut agent_b = start_agent(dir.path(), b, &config_b);

    // SIGKILL of the SPU that leads agent A's partition: the other replica
    // takes over, and the SPU comes back later.
    wait_for("records of flv-a", || (hub.records(a) > 500).then_some(()));
    let partition = conveyor_transport::fluvio::partition_of(a, 2);
    let leader = cluster.leader("conveyor-records", partition);
    cluster.kill_spu(leader);
    let before = hub.records(a);
    wait_for("flv-a to keep streaming without its leader SPU", || {
        (hub.records(a) > before + 300).then_some(())
    });
    cluster.start_spu(leader);

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

    // The whole cluster away for a while: the agents' logs hold everything
    // and drain when it is back.
    cluster.kill_spu(0);
    cluster.kill_spu(1);
    // The outage's length, not a wait for something to happen.
    std::thread::sleep(std::time::Duration::from_secs(3));
    cluster.start_spu(0);
    cluster.start_spu(1);

    for (device, agent) in [(a, &mut agent_a), (b, &mut agent_b)] {
        assert!(agent.wait().success(), "{device} failed:\n{}", agent.log());
        assert_exactly_once(&hub, device, n);
    }
}
