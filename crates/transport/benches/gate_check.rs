//! What the gate's authorization check costs per message: the topic of
//! every PUBLISH a device sends is parsed and compared with the device's
//! own (`gate::policy::publish`), allowed and refused, set beside the cost
//! of decoding the 200-record batch such a message carries (what the hub
//! does with it anyway). Timed in-process, the median of 9 rounds.
//!
//!     cargo bench -p conveyor-transport --features embedded-broker --bench gate_check

use std::hint::black_box;
use std::time::Instant;

use conveyor_shared::records::{Record, RecordBatch};
use conveyor_shared::DeviceId;
use conveyor_transport::mqtt::gate::policy;
use prost::Message;

const ROUNDS: usize = 9;

/// Median nanoseconds per call of `f`, over ROUNDS rounds of `n` calls.
fn ns_per_call(n: u32, mut f: impl FnMut()) -> f64 {
    let mut rounds: Vec<f64> = (0..ROUNDS)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..n {
                f();
            }
            t.elapsed().as_nanos() as f64 / f64::from(n)
        })
        .collect();
    rounds.sort_by(f64::total_cmp);
    rounds[ROUNDS / 2]
}

fn main() {
    let device = DeviceId::new("store-0042-gateway").unwrap();
    let own = "conveyor/v1/store-0042-gateway/up/records";
    let other = "conveyor/v1/store-0043-gateway/up/records";
    let batch = RecordBatch {
        version: 1,
        device_id: device.to_string(),
        sent_at_us: 1,
        records: (0..200)
            .map(|seq| Record {
                stream: "motion".into(),
                seq,
                source_ts_us: 1_700_000_000_000_000 + seq as i64,
                values: vec![0.25; 6],
                ..Default::default()
            })
            .collect(),
    }
    .encode_to_vec();

    let allowed = ns_per_call(1_000_000, || {
        black_box(policy::publish(black_box(&device), black_box(own))).unwrap();
    });
    let refused = ns_per_call(1_000_000, || {
        black_box(policy::publish(black_box(&device), black_box(other))).unwrap_err();
    });
    let decode = ns_per_call(2_000, || {
        black_box(RecordBatch::decode(black_box(batch.as_slice())).unwrap());
    });
    println!("| per message | ns (median of {ROUNDS} rounds) |");
    println!("|---|---|");
    println!("| authorization check, own topic (allowed) | {allowed:.0} |");
    println!("| authorization check, another device's topic (refused) | {refused:.0} |");
    println!(
        "| decoding the 200-record batch it carries ({} bytes) | {decode:.0} |",
        batch.len()
    );
    println!(
        "\nThe check is {:.2}% of the batch's decode.",
        100.0 * allowed / decode
    );
}
