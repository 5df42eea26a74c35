//! The hub's store on storage that fails: a full disk that gets space
//! back, and a store file damaged while the hub was down. The hub must not
//! lose, duplicate or acknowledge what it could not store, must say what is
//! wrong (`/healthz` 503 `degraded`, `stats.store`), must recover without a
//! restart, and must refuse a damaged store with an error an operator can
//! act on, never a panic. (The agent's side is `edge_storage_faults`.)

use std::process::Command;

use conveyor_e2e::tmpfs::Tmpfs;
use conveyor_e2e::*;

fn agent_config(device: &str, mqtt_port: u16, limit: u64) -> AgentConfig {
    AgentConfig::for_device(device)
        .data_dir(format!("state-{device}"))
        .uplink(&format!("mqtt://127.0.0.1:{mqtt_port}"))
        .uplink_with(|u| {
            u.batch_max_records = 100;
            u.heartbeat_secs = 0.2;
            u.ack_timeout_ms = 1000;
        })
        .source(ReplayConfig {
            // As fast as the replay goes.
            rate: Some(0.into()),
            looping: true,
            limit: Some(limit),
            ..ReplayConfig::new("motion", data_file("BasicMotions/BasicMotions_TRAIN.ts"))
        })
}

#[test]
fn hub_store_full_disk_recovers_without_restart() {
    let Some(disk) = Tmpfs::mount("hub_store_full_disk_recovers_without_restart", 4 << 20) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut hub = Hub::start_with_store(dir.path(), &disk.join("hub-store"));
    let pid = hub.proc.pid();
    let n = 60_000;
    let device = "s-full";
    let mut agent = start_agent(dir.path(), "agent", &agent_config(device, hub.mqtt_port, n));

    // 60,000 records do not fit in 4 MiB: the hub says its store is
    // degraded, and acknowledges nothing it could not store.
    let stats = wait_for("the hub to report its store degraded", || {
        let (status, health) = hub.health();
        let stats = hub.get("/api/v1/stats");
        (status == 503 && health["status"] == "degraded" && stats["store"]["healthy"] == false)
            .then_some(stats)
    });
    let store = &stats["store"];
    assert!(store["error"].is_string(), "{stats}");
    assert!(store["since_us"].is_i64(), "{stats}");
    assert!(store["write_failures"].as_u64() >= Some(1), "{stats}");
    assert!(hub.records(device) < n, "{stats}");
    let metrics = hub.metrics();
    assert!(
        metrics.contains("conveyor_hub_store_write_failures_total")
            && !metrics.contains("conveyor_hub_store_write_failures_total 0"),
        "{metrics}"
    );

    // Space returns: the same hub process takes the backlog, without a
    // restart.
    disk.resize(256 << 20);
    assert!(agent.wait().success(), "{}", agent.log());
    hub.wait_for_records(device, n);
    assert_eq!(
        hub.seqs(device),
        (0..n).collect::<Vec<_>>(),
        "each record once"
    );

    let (status, health) = wait_for("/healthz ok again", || {
        let (status, health) = hub.health();
        (status == 200).then_some((status, health))
    });
    assert_eq!((status, &health["status"]), (200, &"ok".into()), "{health}");
    let stats = hub.get("/api/v1/stats");
    let store = &stats["store"];
    assert_eq!(store["healthy"], true, "{stats}");
    assert!(store["error"].is_null(), "{stats}");
    assert!(store["recoveries"].as_u64() >= Some(1), "{stats}");
    assert!(store["free_bytes"].as_u64() > Some(0), "{stats}");
    // Counted once each: nothing that was rolled back is counted.
    assert_eq!(stats["records_received"], n, "{stats}");
    let metrics = hub.metrics();
    assert!(
        metrics.contains("conveyor_hub_store_healthy 1"),
        "{metrics}"
    );

    assert!(
        hub.proc.try_wait().is_none(),
        "the hub exited:\n{}",
        hub.proc.log()
    );
    assert_eq!(hub.proc.pid(), pid);
    let log = hub.proc.log();
    assert!(!log.contains("panicked"), "{log}");
    assert!(log.contains("the store cannot write"), "{log}");
    assert!(log.contains("healthy"), "{log}");
}

/// Overwrites 512-byte blocks every 64 KiB of `file` (after its first
/// 64 KiB, the header's) with a pattern no page holds.
fn damage(file: &std::path::Path) {
    let blocks = damage_blocks(file, 64 * 1024, 64 * 1024);
    assert!(
        blocks >= 4,
        "the store file has only {blocks} blocks to damage"
    );
}

fn store_check(path: &std::path::Path) -> (Option<i32>, String) {
    let out = Command::new(hub_bin())
        .args(["store", "check", "--path"])
        .arg(path)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn hub_corrupt_store_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut hub = Hub::start(dir.path());
    let n = 20_000;
    let device = "s-corrupt";
    let mut agent = start_agent(dir.path(), "agent", &agent_config(device, hub.mqtt_port, n));
    assert!(agent.wait().success(), "{}", agent.log());
    hub.wait_for_records(device, n);
    assert!(hub.proc.stop().success(), "{}", hub.proc.log());
    let store = hub.store.clone();
    let (code, out) = store_check(&store);
    assert_eq!(code, Some(0), "a sound store checks ok: {out}");
    assert!(out.contains("ok"), "{out}");

    damage(&store.join("hub.redb"));
    let mut cmd = Command::new(hub_bin());
    cmd.args(["serve", "--config"])
        .arg(dir.path().join("hub.toml"));
    let mut serve = Proc::spawn(
        "cloud-hub on the damaged store",
        cmd,
        dir.path().join("serve.log"),
    );
    let code = serve.wait().code();
    let stderr = serve.log();
    assert!(
        code.is_some_and(|c| c != 0 && c != 101),
        "{code:?}: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    let shown = store.display().to_string();
    assert!(stderr.contains(&shown), "names the store: {stderr}");
    assert!(
        stderr.contains("aside") && stderr.contains("cloud-hub store check"),
        "says what to do: {stderr}"
    );

    let (code, out) = store_check(&store);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("corrupt") && out.contains(&shown), "{out}");
    assert!(!out.contains("panicked"), "{out}");
}
