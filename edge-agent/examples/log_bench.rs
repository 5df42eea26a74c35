//! Durable-log append throughput, with the durability the agent uses (one
//! fsync per group of records) against the naive baseline (one fsync per
//! record).
//!
//!     cargo run --release -p edge-agent --example log_bench
//!
//! Prints the median of 5 runs per group size, in records/s.

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
    let start = Instant::now();
    let mut i = 0u64;
    while (i as usize) < total {
        let mut chunk: Vec<Record> = (0..group).map(|k| record(i + k as u64)).collect();
        assert_eq!(log.append(&mut chunk), group as u64, "{:?}", log.health());
        i += group as u64;
    }
    total as f64 / start.elapsed().as_secs_f64()
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
}
