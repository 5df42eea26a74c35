//! Durable-log append throughput, with the durability the agent uses (one
//! fsync per group of records) against the naive baseline (one fsync per
//! record).
//!
//!     cargo run --release -p edge-agent --example log_bench
//!
//! Prints the median of 5 runs per group size, in records/s; then the time
//! to open a log holding a backlog, as the agent does (the integrity check
//! on, every record counted), against a plain open with the same count:
//! the check's cost at start.

use std::time::Instant;

use conveyor_shared::Record;
use edge_agent::log::{DurableLog, LogConfig};

fn record(i: u64) -> Record {
    Record {
        stream: "motion".into(),
        seq: 0,
        source_ts_us: 1_700_000_000_000_000 + i as i64,
        values: vec![0.1, -0.2, 0.3, 1.5, -2.5, 0.01],
        label: "Walking".into(),
        ..Default::default()
    }
}

fn run(group: usize, total: usize) -> f64 {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut log = DurableLog::open(dir.path(), LogConfig::default()).expect("open");
    // One buffer for the whole run, as the uplink keeps one.
    let mut chunk: Vec<Record> = Vec::with_capacity(group);
    let start = Instant::now();
    let mut i = 0u64;
    while (i as usize) < total {
        chunk.extend((0..group).map(|k| record(i + k as u64)));
        assert_eq!(log.append(&mut chunk), group as u64, "{:?}", log.health());
        i += group as u64;
    }
    total as f64 / start.elapsed().as_secs_f64()
}

/// Opens the log at `dir` without the integrity check and counts its
/// records as `DurableLog::open` does: the baseline.
fn open_plain(dir: &std::path::Path) -> u64 {
    use redb::{ReadableDatabase, ReadableTable};
    let db = redb::Database::builder()
        .set_cache_size(LogConfig::default().cache_bytes as usize)
        .create(dir.join(edge_agent::log::FILE_NAME))
        .expect("open");
    let read = db.begin_read().expect("read");
    let table = read
        .open_table(redb::TableDefinition::<u64, &[u8]>::new("records"))
        .expect("table");
    let mut n = 0;
    for item in table.iter().expect("iter") {
        let (_, v) = item.expect("record");
        n += 8 + v.value().len() as u64;
    }
    n
}

fn open_cost(records: usize) {
    let dir = tempfile::tempdir().expect("temp dir");
    {
        let mut log = DurableLog::open(dir.path(), LogConfig::default()).expect("open");
        let mut i = 0u64;
        while (i as usize) < records {
            let mut chunk: Vec<Record> = (0..2048).map(|k| record(i + k as u64)).collect();
            log.append(&mut chunk);
            i += 2048;
        }
    }
    let size = std::fs::metadata(dir.path().join(edge_agent::log::FILE_NAME))
        .expect("file")
        .len();
    let (mut plain, mut checked) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        let t = Instant::now();
        let bytes = open_plain(dir.path());
        plain.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        let log = DurableLog::open(dir.path(), LogConfig::default()).expect("open");
        checked.push(t.elapsed().as_secs_f64() * 1e3);
        assert_eq!(log.stats().bytes, bytes);
    }
    plain.sort_by(|a, b| a.total_cmp(b));
    checked.sort_by(|a, b| a.total_cmp(b));
    println!();
    println!(
        "| open a log of {records} records ({:.0} MB) | ms (median of 5) |",
        size as f64 / 1e6
    );
    println!("|---|---|");
    println!("| plain open + count (baseline) | {:.0} |", plain[2]);
    println!(
        "| integrity check + count (the agent) | {:.0} |",
        checked[2]
    );
    println!("| ratio | {:.2}x |", checked[2] / plain[2]);
}

fn main() {
    println!("| records per commit | records/s (median of 5) |");
    println!("|---|---|");
    for (group, total) in [(1usize, 2_000usize), (64, 200_000), (2048, 200_000)] {
        let mut rates = Vec::new();
        for _ in 0..5 {
            rates.push(run(group, total));
        }
        rates.sort_by(|a, b| a.total_cmp(b));
        println!("| {group} | {:.0} |", rates[2]);
    }
    open_cost(1_000_000);
}
