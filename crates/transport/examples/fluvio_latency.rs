//! Fluvio's own produce -> consume latency, without Conveyor: the baseline
//! for the Fluvio rows in BENCHMARKS.md. One producer sends a timestamp
//! as one record at `rate` records/s for `secs` to a one-partition topic
//! `probe` (made if it is not there), one consumer reads it from the end;
//! prints the latency quantiles.
//!
//!   cargo run --release -p conveyor-transport --features fluvio \
//!     --example fluvio_latency -- <SC host:port> <rate> <secs> [linger ms]
//!
//! Needs a running cluster (`../shared/tools/fluvio/README.md`).
use fluvio::{Fluvio, FluvioClusterConfig, Offset};
use futures_util::StreamExt;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 {
        eprintln!("usage: fluvio_latency <SC host:port> <records/s> <seconds> [linger ms]");
        std::process::exit(64);
    }
    let ep = &args[1];
    let rate: f64 = args[2].parse().unwrap();
    let secs: u64 = args[3].parse().unwrap();
    let linger_ms: u64 = args.get(4).map(|s| s.parse().unwrap()).unwrap_or(0);
    let f = Fluvio::connect_with_config(&FluvioClusterConfig::new(ep.clone()))
        .await
        .unwrap();
    let admin = f.admin().await;
    let _ = admin
        .create(
            "probe".to_string(),
            false,
            fluvio::metadata::topic::TopicSpec::new_computed(1, 1, None),
        )
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cfg = fluvio::TopicProducerConfigBuilder::default()
        .linger(Duration::from_millis(linger_ms))
        .build()
        .unwrap();
    let p = f.topic_producer_with_config("probe", cfg).await.unwrap();
    let mut stream = f
        .consumer_with_config(
            fluvio::consumer::ConsumerConfigExtBuilder::default()
                .topic("probe".to_string())
                .partition(0)
                .offset_start(Offset::end())
                .build()
                .unwrap(),
        )
        .await
        .unwrap();
    let n = (rate * secs as f64) as u64;
    let prod = tokio::spawn(async move {
        let start = Instant::now();
        for i in 0..n {
            let due = start + Duration::from_secs_f64(i as f64 / rate);
            tokio::time::sleep_until(due.into()).await;
            let _out = p
                .send(fluvio::RecordKey::NULL, now_us().to_string())
                .await
                .unwrap();
        }
        p.flush().await.unwrap();
    });
    let mut lat = Vec::new();
    while lat.len() < n as usize {
        let r = match tokio::time::timeout(Duration::from_secs(10), stream.next()).await {
            Ok(Some(Ok(r))) => r,
            _ => break,
        };
        let sent: u64 = std::str::from_utf8(r.value()).unwrap().parse().unwrap();
        lat.push(now_us().saturating_sub(sent));
    }
    let _ = prod.await;
    lat.sort();
    let q = |x: f64| lat[((lat.len() as f64 - 1.0) * x) as usize] as f64 / 1000.0;
    println!(
        "n={} p50={:.1}ms p90={:.1}ms p99={:.1}ms max={:.1}ms",
        lat.len(),
        q(0.5),
        q(0.9),
        q(0.99),
        q(1.0)
    );
}
