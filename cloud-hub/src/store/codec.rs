//! How the embedded store lays out keys and values (engine-neutral).
//!
//! Records, results and pending marks are keyed
//! `<device_id> 0x00 <seq as big-endian u64>`, so a range scan returns one
//! device's entries in sequence order (and a device whose id extends
//! another's sorts after all of the shorter one's keys: `0x00` is below any
//! byte of a device id). A record's value is its receive time (8 bytes,
//! big-endian µs) followed by the protobuf-encoded `Record`; a result's is
//! the protobuf-encoded `FinalPrediction`.

use conveyor_shared::{FinalPrediction, Record};
use prost::Message;

use super::{StoreError, StoredRecord};

pub fn key(device: &str, seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(device.len() + 9);
    k.extend_from_slice(device.as_bytes());
    k.push(0);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// `(device, seq)` of a key; None for a malformed one.
pub fn split_key(k: &[u8]) -> Option<(String, u64)> {
    let split = k.len().checked_sub(9)?;
    let device = String::from_utf8_lossy(&k[..split]).into_owned();
    let seq = u64::from_be_bytes(k[split + 1..].try_into().ok()?);
    Some((device, seq))
}

pub fn encode_record(r: &Record, received_at_us: i64) -> Vec<u8> {
    let mut value = Vec::with_capacity(8 + r.encoded_len());
    value.extend_from_slice(&received_at_us.to_be_bytes());
    r.encode(&mut value).expect("Vec has room");
    value
}

fn corrupt(k: &[u8], reason: String) -> StoreError {
    StoreError::Corrupt {
        key: String::from_utf8_lossy(k).into_owned(),
        reason,
    }
}

/// A stored record value: `(received_at_us, record)`.
pub fn decode_record(k: &[u8], v: &[u8]) -> Result<(i64, Record), StoreError> {
    if v.len() < 8 {
        return Err(corrupt(k, "value shorter than its timestamp".into()));
    }
    let received_at_us = i64::from_be_bytes(v[..8].try_into().expect("8 bytes"));
    let r = Record::decode(&v[8..]).map_err(|e| corrupt(k, e.to_string()))?;
    Ok((received_at_us, r))
}

/// A stored record as the API returns it (without its result).
pub fn decode_stored(k: &[u8], v: &[u8]) -> Result<StoredRecord, StoreError> {
    let (received_at_us, r) = decode_record(k, v)?;
    Ok(StoredRecord {
        seq: r.seq,
        stream: r.stream,
        source_ts_us: r.source_ts_us,
        received_at_us,
        values: r.values,
        label: r.label,
        prediction: r.prediction,
        payload: r.payload,
        transforms: r.transforms,
        escalation: r.escalation,
        result: None,
    })
}

pub fn decode_result(k: &[u8], v: &[u8]) -> Result<FinalPrediction, StoreError> {
    FinalPrediction::decode(v).map_err(|e| corrupt(k, e.to_string()))
}
