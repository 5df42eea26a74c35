//! Storage faults at the edge, on real filesystems: a size-limited tmpfs is
//! a real full disk (and grows back with a remount), a tmpfs remounted
//! read-only is a real read-only disk, and a log file with blocks
//! overwritten is what a failing SD card leaves. Each test checks that the
//! agent never panics or stops, that every record it could keep reaches
//! the hub exactly once, and that what it could not keep is counted and
//! reported in its heartbeat. Where mounting is not allowed the tmpfs
//! tests say SKIPPED loudly and return.

use conveyor_e2e::tmpfs::Tmpfs;
use conveyor_e2e::*;

fn agent_config(
    device: &str,
    data_dir: &std::path::Path,
    mqtt_port: u16,
    limit: u64,
    rate: u32,
    log: LogConfig,
) -> AgentConfig {
    AgentConfig::for_device(device)
        .data_dir(data_dir.display().to_string())
        .uplink(&format!("mqtt://127.0.0.1:{mqtt_port}"))
        .uplink_with(|u| {
            u.batch_max_records = 500;
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

/// Waits for `n` records at the hub; on a timeout, says what the agent's
/// last heartbeat said.
fn wait_for_delivery(hub: &Hub, device: &str, n: u64) {
    let start = std::time::Instant::now();
    while start.elapsed() < PATIENCE {
        if hub.device(device).and_then(|d| d["records"].as_u64()) == Some(n) {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!(
        "timed out waiting for {n} records from {device}; the hub holds {:?}; last heartbeat: {}",
        hub.device(device).map(|d| d["records"].clone()),
        hub.heartbeat(device).unwrap_or_default()
    );
}

fn assert_no_panic(proc: &Proc) {
    let log = proc.log();
    assert!(!log.contains("panicked"), "{} panicked:\n{log}", proc.name);
}

fn assert_each_once(seqs: &[u64]) {
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "every record once, in seq order"
    );
}

/// The agent's data_dir on a 3 MB filesystem, the hub away, readings at
/// full speed: the disk fills, and the agent keeps taking readings with
/// `drop_oldest` (the disk is one more bound), reports the full disk once
/// the hub is there, and goes back to its own bound when space returns.
#[test]
fn agent_full_disk_keeps_running_and_recovers() {
    let Some(disk) = Tmpfs::mount("agent_full_disk_keeps_running_and_recovers", 3 << 20) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mqtt_port = free_port();
    // At 10k readings/s the source is still running when space returns
    // (the disk fills after about 30k), so the agent is there to see it.
    let n = 100_000;
    let device = "sf-full";
    let mut agent = start_agent(
        dir.path(),
        "agent",
        &agent_config(
            device,
            &disk.join("state"),
            mqtt_port,
            n,
            10_000,
            LogConfig::default(),
        ),
    );
    wait_for("the agent to meet the full disk", || {
        agent.log().contains("disk full").then_some(())
    });
    assert!(
        agent.try_wait().is_none(),
        "the agent keeps running:\n{}",
        agent.log()
    );

    // The hub comes; the disk is still full, and the agent says so.
    let hub = Hub::start_at(dir.path(), mqtt_port);
    let hb = wait_for("a heartbeat reporting the full disk", || {
        hub.heartbeat(device).filter(|h| h["log_disk_full"] == true)
    });
    assert_eq!(hb["storage_fault"], "disk full", "{hb}");
    assert!(hb["disk_free_bytes"].as_u64().is_some(), "{hb}");

    // Space returns: the agent lifts the bound by itself.
    disk.resize(64 << 20);
    wait_for("a heartbeat with the disk no longer full", || {
        hub.heartbeat(device)
            .filter(|h| h["log_disk_full"] == false && h["storage_fault"].is_null())
    });
    assert!(agent.wait().success(), "{}", agent.log());
    assert_no_panic(&agent);

    let hb = hub.heartbeat(device).unwrap();
    let dropped =
        hb["log_dropped_full"].as_u64().unwrap() + hb["log_dropped_unwritable"].as_u64().unwrap();
    let seqs = hub.seqs(device);
    assert_each_once(&seqs);
    eprintln!(
        "full disk: {} records delivered, {dropped} dropped, {} storage faults",
        seqs.len(),
        hb["storage_faults"]
    );
    assert!(dropped > 0, "a 3 MB disk cannot hold {n} records: {hb}");
    // A record dropped from the log while its batch was in flight may
    // still have reached the hub: the count of drops bounds what is
    // missing, it does not equal it.
    let missing = n - seqs.len() as u64;
    assert!(
        missing <= dropped,
        "every reading not at the hub is counted as dropped: {missing} missing, {hb}"
    );
    let next_seq = hb["next_seq"].as_u64().unwrap();
    assert!(seqs.iter().all(|&s| s < next_seq), "{hb}");
    assert_eq!(hb["log_records"], 0, "{hb}");
}

/// The same full disk with `block`: the agent holds its sources back
/// instead of dropping, and once the hub is there its acknowledgements
/// make room on the still-full disk, so every reading arrives, none lost.
#[test]
fn agent_full_disk_with_block_loses_nothing() {
    let Some(disk) = Tmpfs::mount("agent_full_disk_with_block_loses_nothing", 3 << 20) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mqtt_port = free_port();
    let n = 60_000;
    let device = "sf-full-block";
    let log = LogConfig {
        full_policy: FullPolicy::Block,
        ..LogConfig::default()
    };
    let mut agent = start_agent(
        dir.path(),
        "agent",
        &agent_config(device, &disk.join("state"), mqtt_port, n, 10_000, log),
    );
    wait_for("the agent to meet the full disk", || {
        agent.log().contains("disk full").then_some(())
    });
    assert!(
        agent.try_wait().is_none(),
        "the agent keeps running:\n{}",
        agent.log()
    );
    let hub = Hub::start_at(dir.path(), mqtt_port);
    wait_for_delivery(&hub, device, n);
    assert!(agent.wait().success(), "{}", agent.log());
    assert_no_panic(&agent);
    assert_eq!(
        hub.seqs(device),
        (0..n).collect::<Vec<_>>(),
        "block loses nothing"
    );
    let hb = hub.heartbeat(device).unwrap();
    assert_eq!(hb["log_dropped_full"], 0, "{hb}");
    assert_eq!(hb["log_dropped_unwritable"], 0, "{hb}");
}

/// A log written while the hub was away, then blocks of its file
/// overwritten: the agent moves the file aside, salvages what it can,
/// counts the rest as lost, and its new records get seqs past every one
/// used, so the hub stores them instead of dropping them as duplicates.
#[test]
fn agent_corrupt_log_is_moved_aside_and_seqs_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("state");
    let device = "sf-corrupt";
    let mqtt_port = free_port();
    let log = || LogConfig::default();

    // 1. Delivered: seqs 0..2000 at the hub.
    let mut hub = Hub::start_at(dir.path(), mqtt_port);
    let mut agent = start_agent(
        dir.path(),
        "a1",
        &agent_config(device, &data_dir, mqtt_port, 2000, 20_000, log()),
    );
    assert!(agent.wait().success(), "{}", agent.log());
    hub.wait_for_records(device, 2000);

    // 2. Written, never delivered: the hub is away.
    assert!(hub.proc.stop().success(), "{}", hub.proc.log());
    let mut agent = start_agent(
        dir.path(),
        "a2",
        &agent_config(device, &data_dir, mqtt_port, 3000, 20_000, log()),
    );
    wait_for("3000 records in the log", || {
        let s = std::fs::read_to_string(data_dir.join("log/next-seq")).ok()?;
        s.contains(&format!("held={:020}", 3000)).then_some(())
    });
    assert!(agent.stop().success(), "{}", agent.log());
    drop(hub);

    // 3. A failing SD card.
    let file = data_dir.join("log/log.redb");
    damage_blocks(&file, 4096, 16 * 1024);

    // 4. The hub is back, the agent starts on the damaged log.
    hub = Hub::start_at(dir.path(), mqtt_port);
    let mut agent = start_agent(
        dir.path(),
        "a3",
        &agent_config(device, &data_dir, mqtt_port, 1000, 20_000, log()),
    );
    assert!(agent.wait().success(), "{}", agent.log());
    assert_no_panic(&agent);
    let log_text = agent.log();
    assert!(
        log_text.contains("is corrupt") && log_text.contains(&file.display().to_string()),
        "names the file and why:\n{log_text}"
    );
    let aside: Vec<_> = std::fs::read_dir(data_dir.join("log"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("log.corrupt-"))
        .collect();
    assert_eq!(aside.len(), 1, "kept for forensics: {aside:?}");

    let hb = hub.heartbeat(device).unwrap();
    let lost = hb["log_lost_corrupt"].as_u64().unwrap();
    assert!(lost > 0 && lost <= 3000, "{hb}");
    let seqs = hub.seqs(device);
    assert_each_once(&seqs);
    assert_eq!(
        seqs.len() as u64,
        2000 + (3000 - lost) + 1000,
        "the first 2000, what was salvaged, and every new record: {hb}"
    );
    eprintln!("corrupt log: {} of 3000 salvaged, {lost} lost", 3000 - lost);
    for line in log_text
        .lines()
        .filter(|l| l.contains("salvag") || l.contains("corrupt"))
    {
        eprintln!("  {line}");
    }
    let new = seqs.iter().filter(|&&s| s >= 5000).count();
    assert_eq!(
        new, 1000,
        "the new records' seqs are past every one used before"
    );
}

/// The agent starts on a disk the kernel remounted read-only: it runs,
/// says so in its heartbeat, holds its sources back (`block`), and once
/// the disk is writable again delivers every reading, none lost.
#[test]
fn agent_read_only_disk_holds_back_and_recovers() {
    let Some(disk) = Tmpfs::mount("agent_read_only_disk_holds_back_and_recovers", 64 << 20) else {
        return;
    };
    std::fs::create_dir_all(disk.join("state")).unwrap();
    disk.remount_read_only();
    let dir = tempfile::tempdir().unwrap();
    let hub = Hub::start(dir.path());
    let device = "sf-ro";
    let n = 5000;
    let log = LogConfig {
        full_policy: FullPolicy::Block,
        ..LogConfig::default()
    };
    let mut agent = start_agent(
        dir.path(),
        "agent",
        &agent_config(device, &disk.join("state"), hub.mqtt_port, n, 5000, log),
    );
    let hb = wait_for("a heartbeat reporting the read-only disk", || {
        hub.heartbeat(device).filter(|h| {
            h["storage_fault"]
                .as_str()
                .is_some_and(|f| f.contains("Read-only"))
        })
    });
    assert_eq!(hb["records_produced"], 0, "{hb}");
    // The fleet view an operator alerts on.
    wait_for("the hub's metrics to count the device", || {
        hub.metrics()
            .contains("conveyor_hub_devices_storage_fault 1")
            .then_some(())
    });
    assert_eq!(hub.get("/api/v1/stats")["devices_storage_fault"], 1);
    assert!(
        agent.try_wait().is_none(),
        "the agent keeps running:\n{}",
        agent.log()
    );

    disk.remount_read_write();
    assert!(agent.wait().success(), "{}", agent.log());
    assert_no_panic(&agent);
    hub.wait_for_records(device, n);
    assert_eq!(
        hub.seqs(device),
        (0..n).collect::<Vec<_>>(),
        "block loses nothing"
    );
    let hb = hub.heartbeat(device).unwrap();
    assert!(hb["storage_fault"].is_null(), "{hb}");
    assert_eq!(hb["log_dropped_unwritable"], 0, "{hb}");
}
