//! Every decoder of what a device sends, fed bytes it did not expect:
//! garbage, and a valid message with bytes flipped or cut. Each must
//! answer with an error or a value, never a panic (the hub decodes these
//! from anyone who may connect).

use conveyor_shared::control::{DeviceStatus, Heartbeat};
use conveyor_shared::ota::AgentState;
use conveyor_shared::{DeviceId, Record, RecordBatch, ResultBatch};
use proptest::prelude::*;

fn heartbeat_json() -> Vec<u8> {
    Heartbeat {
        device_id: "d1".into(),
        ts_us: 5,
        next_seq: 9,
        ..Default::default()
    }
    .encode()
}

fn state_json() -> Vec<u8> {
    br#"{"device_id":"d1","generation":3,"stages":{"classify":{"running":{"model":{"name":"m","version":"1"}}}},"last_change":{"generation":3,"phase":"applied","since_us":1},"tags":{"k":"v"},"ts_us":1}"#.to_vec()
}

fn status_json() -> Vec<u8> {
    br#"{"device_id":"d1","state":"online","agent_version":"0.1.0","ts_us":1,"clean":false}"#
        .to_vec()
}

fn batch() -> Vec<u8> {
    let records = (0..5)
        .map(|seq| Record {
            stream: "s".into(),
            seq,
            source_ts_us: 1,
            values: vec![1.0, 2.0],
            ..Default::default()
        })
        .collect();
    RecordBatch::new(&DeviceId::new("d1").unwrap(), 1, records).encode_to_bytes()
}

/// Every decoder on `bytes`; what they say does not matter, only that
/// they say it.
fn decode_all(bytes: &[u8]) {
    let d = DeviceId::new("d1").unwrap();
    let _ = RecordBatch::decode_checked(bytes, &d);
    let _ = ResultBatch::decode_checked(bytes);
    let _ = Heartbeat::decode(bytes);
    let _ = DeviceStatus::decode(bytes);
    let _ = AgentState::decode(bytes);
    let _ = conveyor_shared::ota::Envelope::decode(bytes);
}

/// `valid` with the bytes at `flips` changed and cut at `cut`.
fn mangle(mut valid: Vec<u8>, flips: &[(usize, u8)], cut: usize) -> Vec<u8> {
    for (i, b) in flips {
        if !valid.is_empty() {
            let n = valid.len();
            valid[i % n] ^= b;
        }
    }
    let keep = cut % (valid.len() + 1);
    valid.truncate(keep);
    valid
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        decode_all(&bytes);
    }

    #[test]
    fn a_valid_message_mangled_never_panics(
        which in 0usize..4,
        flips in proptest::collection::vec((any::<usize>(), 1u8..=255), 0..8),
        cut in any::<usize>(),
    ) {
        let valid = [heartbeat_json, state_json, status_json, batch][which]();
        decode_all(&mangle(valid, &flips, cut));
    }
}

#[test]
fn the_valid_messages_decode() {
    let d = DeviceId::new("d1").unwrap();
    assert_eq!(
        RecordBatch::decode_checked(&batch(), &d)
            .unwrap()
            .records
            .len(),
        5
    );
    assert_eq!(Heartbeat::decode(&heartbeat_json()).unwrap().next_seq, 9);
    assert_eq!(
        AgentState::decode(&state_json()).unwrap().generation,
        Some(3)
    );
    assert_eq!(
        DeviceStatus::decode(&status_json()).unwrap().device_id,
        "d1"
    );
}
