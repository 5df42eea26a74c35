//! Measures the hub's store as ingest drives it: batches of records from
//! several devices, one durable commit per group of batches (ingest's
//! group commit), a share of redelivered batches (duplicates), then a
//! reopen (a hub restart) that reads the per-device counts; then reopens
//! with and without the integrity check, interleaved (its cost at start).
//!
//!   cargo run -p cloud-hub --example store_bench -- [ENGINE] [RECORDS]
//!
//! ENGINE: `redb` (the default and only one now). Prints one JSON line: records/s, resident
//! memory (now and peak, from /proc/self/status), the store's size on disk
//! and the reopen time. Run each engine in its own process.

use std::path::Path;
use std::time::Instant;

use cloud_hub::store::{self, Store};
use conveyor_shared::{DeviceId, Prediction, Record};

const DEVICES: usize = 10;
const BATCH: usize = 100;
/// Inbound messages per durable commit, as in ingest.
const GROUP: usize = 256;

fn open(engine: &str, dir: &Path) -> Store {
    match engine {
        "redb" => store::open(dir).unwrap(),
        // sled was measured against redb with this bench at commit 364ea64
        // (branch w-store), which still had a `store::sled` engine.
        other => panic!("unknown engine {other:?}"),
    }
}

fn status_kb(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// (apparent bytes, allocated bytes) of every file under `dir`.
fn disk(dir: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let mut total = (0, 0);
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let m = e.metadata().unwrap();
        if m.is_dir() {
            let (a, b) = disk(&e.path());
            total = (total.0 + a, total.1 + b);
        } else {
            total = (total.0 + m.len(), total.1 + m.blocks() * 512);
        }
    }
    total
}

fn record(seq: u64) -> Record {
    let mut r = Record {
        stream: "sensor.accel".into(),
        seq,
        source_ts_us: 1_700_000_000_000_000 + seq as i64 * 1000,
        values: vec![seq as f64 * 0.001, 0.5, -9.81],
        ..Default::default()
    };
    // One in ten carries an edge prediction (stored with its result).
    if seq % 10 == 0 {
        r.stream = "sensor.predictions".into();
        r.label = "Walking".into();
        r.prediction = Some(Prediction {
            model_id: "har".into(),
            label: "Walking".into(),
            confidence: 0.93,
            window_len: 128,
            ..Default::default()
        });
    }
    r
}

fn main() {
    let mut args = std::env::args().skip(1);
    let engine = args.next().unwrap_or_else(|| "redb".into());
    let total: usize = args.next().map_or(1_000_000, |n| n.parse().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hub-store");
    let rss_start = status_kb("VmRSS:");
    let devices: Vec<DeviceId> = (0..DEVICES)
        .map(|i| DeviceId::new(format!("dev-{i:02}")).unwrap())
        .collect();
    let store = open(&engine, &path);
    let batches = total / BATCH;
    let started = Instant::now();
    let (mut new, mut dup) = (0u64, 0u64);
    let mut in_group = 0;
    for b in 0..batches {
        let device = &devices[b % DEVICES];
        let first = (b / DEVICES * BATCH) as u64;
        let records: Vec<Record> = (first..first + BATCH as u64).map(record).collect();
        let n = store
            .append(device, &records, 1_700_000_000_000_000, &mut |_| ())
            .unwrap();
        new += n.new;
        dup += n.duplicates;
        in_group += 1;
        // One batch in a hundred arrives twice (a redelivery).
        if b % 100 == 99 {
            dup += store
                .append(device, &records, 1_700_000_000_000_001, &mut |_| ())
                .unwrap()
                .duplicates;
            in_group += 1;
        }
        if in_group >= GROUP {
            store.commit().unwrap();
            in_group = 0;
        }
    }
    store.commit().unwrap();
    let secs = started.elapsed().as_secs_f64();
    let rss_end = status_kb("VmRSS:");
    let hwm = status_kb("VmHWM:");
    // Reads as the API makes them.
    let t = Instant::now();
    for d in &devices {
        assert_eq!(store.latest_records(d.as_str(), 100).unwrap().len(), 100);
        assert_eq!(store.records_from(d.as_str(), 0, 1000).unwrap().len(), 1000);
    }
    let read_ms = t.elapsed().as_secs_f64() * 1e3;
    drop(store);
    let (apparent, allocated) = disk(&path);
    // A restart: open and read the per-device counts.
    let t = Instant::now();
    let store = open(&engine, &path);
    let counts = store.device_counts().unwrap();
    let reopen_ms = t.elapsed().as_secs_f64() * 1e3;
    assert_eq!(counts.values().map(|c| c.0).sum::<u64>(), new);
    assert_eq!(new as usize, batches * BATCH);
    drop(store);
    // The integrity check's share of a restart: opens with and without it,
    // interleaved, median of 5 each.
    let (mut plain, mut checked) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        for (check_on_open, times) in [(false, &mut plain), (true, &mut checked)] {
            let t = Instant::now();
            let s = store::open_with(&path, &store::StoreOptions { check_on_open }).unwrap();
            s.device_counts().unwrap();
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let (plain_ms, checked_ms) = (median(&mut plain), median(&mut checked));
    println!(
        "{{\"engine\":\"{engine}\",\"records\":{new},\"duplicates\":{dup},\"secs\":{secs:.2},\
\"records_per_sec\":{:.0},\"rss_start_mb\":{:.1},\"rss_end_mb\":{:.1},\"rss_peak_mb\":{:.1},\
\"disk_mb\":{:.1},\"disk_allocated_mb\":{:.1},\"read_ms\":{read_ms:.1},\"reopen_counts_ms\":{reopen_ms:.1},\
\"reopen_plain_ms\":{plain_ms:.1},\"reopen_checked_ms\":{checked_ms:.1},\"check_ratio\":{:.2}}}",
        new as f64 / secs,
        rss_start as f64 / 1024.0,
        rss_end as f64 / 1024.0,
        hwm as f64 / 1024.0,
        apparent as f64 / 1e6,
        allocated as f64 / 1e6,
        checked_ms / plain_ms,
    );
}
