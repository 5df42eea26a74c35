//! Record batches: the binary uplink payload (protobuf, schema in
//! `shared/proto/conveyor.proto`).
//!
//! The prost structs below are written by hand to mirror the `.proto` file,
//! so building Conveyor needs no `protoc`; the end-to-end test
//! `uplink_decodes_with_protoc` proves the two agree by decoding real uplink
//! traffic with `protoc --decode` against the published file.

use prost::Message;
use thiserror::Error;

use crate::topics::{DeviceId, DeviceIdError};

/// The wire version this build writes and the newest it reads.
pub const WIRE_VERSION: u32 = 1;

/// Largest batch payload accepted, in bytes (also the brokers' limit).
pub const MAX_BATCH_BYTES: usize = 1 << 20;

/// `conveyor.v1.RecordBatch`.
#[derive(Clone, PartialEq, Message)]
pub struct RecordBatch {
    #[prost(uint32, tag = "1")]
    pub version: u32,
    #[prost(string, tag = "2")]
    pub device_id: String,
    #[prost(int64, tag = "3")]
    pub sent_at_us: i64,
    #[prost(message, repeated, tag = "4")]
    pub records: Vec<Record>,
}

/// `conveyor.v1.Record`.
#[derive(Clone, PartialEq, Message, serde::Serialize, serde::Deserialize)]
pub struct Record {
    #[prost(string, tag = "1")]
    pub stream: String,
    #[prost(uint64, tag = "2")]
    pub seq: u64,
    #[prost(int64, tag = "3")]
    pub source_ts_us: i64,
    #[prost(double, repeated, tag = "4")]
    pub values: Vec<f64>,
    #[prost(string, tag = "5")]
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub label: String,
    #[prost(message, optional, tag = "6")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prediction: Option<Prediction>,
    /// An opaque document kept by the source or written by a transform.
    #[prost(bytes = "vec", tag = "7")]
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        with = "crate::records::payload_json"
    )]
    pub payload: Vec<u8>,
    /// `name@version` of each WASM transform that made this record.
    #[prost(string, repeated, tag = "8")]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub transforms: Vec<String>,
    /// Set on a prediction record whose confidence was below the stream's
    /// escalation threshold, or sampled for the hub's teacher: the window
    /// the hub's model needs.
    #[prost(message, optional, tag = "9")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub escalation: Option<Escalation>,
}

/// `conveyor.v1.Escalation`: an edge prediction the agent was not sure
/// enough of, sent with the raw window so the hub's model can decide.
#[derive(Clone, PartialEq, Message, serde::Serialize, serde::Deserialize)]
pub struct Escalation {
    /// Id of the hub model asked to decide (its metadata's `id`).
    #[prost(string, tag = "1")]
    pub hub_model: String,
    /// The stream's threshold the edge confidence was below.
    #[prost(float, tag = "2")]
    pub threshold: f32,
    /// Values per reading.
    #[prost(uint32, tag = "3")]
    pub channels: u32,
    /// The window's raw readings (sensor units, not normalised), reading
    /// by reading: `window_len x channels` values.
    #[prost(float, repeated, tag = "4")]
    pub window: Vec<f32>,
    /// Sent as a sample for the hub's teacher (`teacher_every`), whatever
    /// the edge's confidence: the hub counts whether the two agree.
    #[prost(bool, tag = "5")]
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sampled: bool,
}

/// In JSON (the hub's API and store) a payload is shown as the text it
/// almost always is; bytes that are not UTF-8 are written as
/// `{"hex": "..."}` rather than lost.
pub mod payload_json {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    #[serde(untagged)]
    enum Payload {
        Text(String),
        Binary { hex: String },
    }

    pub fn serialize<S: Serializer>(bytes: &Vec<u8>, s: S) -> Result<S::Ok, S::Error> {
        match std::str::from_utf8(bytes) {
            Ok(text) => Payload::Text(text.to_string()),
            Err(_) => Payload::Binary {
                hex: hex::encode(bytes),
            },
        }
        .serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        match Payload::deserialize(d)? {
            Payload::Text(t) => Ok(t.into_bytes()),
            Payload::Binary { hex } => hex::decode(hex).map_err(serde::de::Error::custom),
        }
    }
}

/// `conveyor.v1.Prediction`: what a model said about one window of a
/// stream. Carried by the record that the inference stage emits.
#[derive(Clone, PartialEq, Message, serde::Serialize, serde::Deserialize)]
pub struct Prediction {
    #[prost(string, tag = "1")]
    pub model_id: String,
    #[prost(string, tag = "2")]
    pub model_version: String,
    #[prost(string, tag = "3")]
    pub label: String,
    #[prost(uint32, tag = "4")]
    pub class_index: u32,
    #[prost(float, tag = "5")]
    pub confidence: f32,
    #[prost(float, repeated, tag = "6")]
    pub probabilities: Vec<f32>,
    #[prost(int64, tag = "7")]
    pub window_start_us: i64,
    #[prost(uint32, tag = "8")]
    pub window_len: u32,
}

/// Why a payload is not a valid record batch.
#[derive(Debug, Error)]
pub enum WireError {
    #[error("payload is {0} bytes; the limit is {MAX_BATCH_BYTES}")]
    TooLarge(usize),
    #[error("payload is not a protobuf RecordBatch: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("wire version {0} is not supported (this build reads 1..={WIRE_VERSION})")]
    UnsupportedVersion(u32),
    #[error("batch device id is invalid: {0}")]
    BadDevice(#[from] DeviceIdError),
    #[error("batch says device {in_batch:?} but was published on the topic of {on_topic:?}")]
    DeviceMismatch { in_batch: String, on_topic: String },
    #[error("batch holds no records")]
    Empty,
    #[error("record seq {next} follows seq {prev}: sequence numbers must grow within a batch")]
    SeqNotIncreasing { prev: u64, next: u64 },
    #[error("record seq {seq} has an empty stream name")]
    EmptyStream { seq: u64 },
}

impl WireError {
    /// A short, stable name for metrics labels (`reason="..."`).
    pub fn kind(&self) -> &'static str {
        match self {
            WireError::TooLarge(_) => "too_large",
            WireError::Decode(_) => "not_protobuf",
            WireError::UnsupportedVersion(_) => "unsupported_version",
            WireError::BadDevice(_) | WireError::DeviceMismatch { .. } => "device_mismatch",
            WireError::Empty => "empty_batch",
            WireError::SeqNotIncreasing { .. } => "seq_not_increasing",
            WireError::EmptyStream { .. } => "empty_stream",
        }
    }
}

impl RecordBatch {
    pub fn new(device: &DeviceId, sent_at_us: i64, records: Vec<Record>) -> Self {
        RecordBatch {
            version: WIRE_VERSION,
            device_id: device.as_str().to_string(),
            sent_at_us,
            records,
        }
    }

    pub fn encode_to_bytes(&self) -> Vec<u8> {
        self.encode_to_vec()
    }

    /// Decodes and validates a batch received on `topic_device`'s uplink.
    ///
    /// Validation covers what the hub relies on: a known version, the
    /// device matching the topic, a non-empty batch with strictly growing
    /// sequence numbers and named streams.
    pub fn decode_checked(payload: &[u8], topic_device: &DeviceId) -> Result<Self, WireError> {
        if payload.len() > MAX_BATCH_BYTES {
            return Err(WireError::TooLarge(payload.len()));
        }
        let batch = RecordBatch::decode(payload)?;
        if batch.version == 0 || batch.version > WIRE_VERSION {
            return Err(WireError::UnsupportedVersion(batch.version));
        }
        DeviceId::new(batch.device_id.clone())?;
        if batch.device_id != topic_device.as_str() {
            return Err(WireError::DeviceMismatch {
                in_batch: batch.device_id,
                on_topic: topic_device.to_string(),
            });
        }
        if batch.records.is_empty() {
            return Err(WireError::Empty);
        }
        for pair in batch.records.windows(2) {
            if pair[1].seq <= pair[0].seq {
                return Err(WireError::SeqNotIncreasing {
                    prev: pair[0].seq,
                    next: pair[1].seq,
                });
            }
        }
        if let Some(r) = batch.records.iter().find(|r| r.stream.is_empty()) {
            return Err(WireError::EmptyStream { seq: r.seq });
        }
        Ok(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn dev() -> DeviceId {
        DeviceId::new("dev-1").unwrap()
    }

    fn record(seq: u64) -> Record {
        Record {
            stream: "motion".into(),
            seq,
            source_ts_us: 1_700_000_000_000_000 + seq as i64,
            values: vec![0.5, -1.25, 3.0],
            label: String::new(),
            ..Default::default()
        }
    }

    #[test]
    fn round_trip() {
        let batch = RecordBatch::new(&dev(), 42, vec![record(1), record(2)]);
        let back = RecordBatch::decode_checked(&batch.encode_to_bytes(), &dev()).unwrap();
        assert_eq!(back, batch);
    }

    #[test]
    fn predictions_round_trip() {
        let mut r = record(7);
        r.values.clear();
        r.label = "Walking".into();
        r.prediction = Some(Prediction {
            model_id: "basicmotions-edge".into(),
            model_version: "1.0.0-int8".into(),
            label: "Walking".into(),
            class_index: 3,
            confidence: 0.93,
            probabilities: vec![0.01, 0.02, 0.04, 0.93],
            window_start_us: 1,
            window_len: 100,
        });
        let batch = RecordBatch::new(&dev(), 0, vec![r]);
        let back = RecordBatch::decode_checked(&batch.encode_to_bytes(), &dev()).unwrap();
        assert_eq!(back, batch);
        // A record without a prediction encodes exactly as before the field
        // existed, so older readers and stored logs are unaffected.
        let plain = record(8);
        assert!(!plain.encode_to_vec().is_empty());
        assert_eq!(Record::decode(&plain.encode_to_vec()[..]).unwrap(), plain);
    }

    #[test]
    fn encoding_is_compact() {
        // 6 doubles, stream name, seq, timestamp: packed doubles keep a
        // record under 90 bytes; JSON of the same is about three times that.
        let mut r = record(1_000_000);
        r.values = vec![0.1; 6];
        let batch = RecordBatch::new(&dev(), 0, vec![r; 1]);
        assert!(
            batch.encode_to_bytes().len() < 90,
            "{}",
            batch.encode_to_bytes().len()
        );
    }

    #[test]
    fn rejects_what_the_hub_cannot_trust() {
        let other = DeviceId::new("dev-2").unwrap();
        let ok = RecordBatch::new(&dev(), 0, vec![record(1)]);
        assert!(matches!(
            RecordBatch::decode_checked(&ok.encode_to_bytes(), &other),
            Err(WireError::DeviceMismatch { .. })
        ));
        let mut v2 = ok.clone();
        v2.version = 2;
        assert!(matches!(
            RecordBatch::decode_checked(&v2.encode_to_bytes(), &dev()),
            Err(WireError::UnsupportedVersion(2))
        ));
        let empty = RecordBatch::new(&dev(), 0, vec![]);
        assert!(matches!(
            RecordBatch::decode_checked(&empty.encode_to_bytes(), &dev()),
            Err(WireError::Empty)
        ));
        let backwards = RecordBatch::new(&dev(), 0, vec![record(5), record(5)]);
        assert!(matches!(
            RecordBatch::decode_checked(&backwards.encode_to_bytes(), &dev()),
            Err(WireError::SeqNotIncreasing { prev: 5, next: 5 })
        ));
        assert!(matches!(
            RecordBatch::decode_checked(b"\xff\xff\xff", &dev()),
            Err(WireError::Decode(_))
        ));
        assert!(matches!(
            RecordBatch::decode_checked(&vec![0u8; MAX_BATCH_BYTES + 1], &dev()),
            Err(WireError::TooLarge(_))
        ));
    }

    #[test]
    fn a_newer_field_is_ignored_by_v1_readers() {
        // Forward compatibility: a v1 reader skips unknown fields, so adding
        // fields to the schema never breaks deployed hubs.
        let mut bytes = RecordBatch::new(&dev(), 0, vec![record(1)]).encode_to_bytes();
        bytes.extend_from_slice(&[0x50, 0x07]); // field 10, varint 7
        assert!(RecordBatch::decode_checked(&bytes, &dev()).is_ok());
    }

    proptest! {
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = RecordBatch::decode_checked(&bytes, &dev());
        }

        #[test]
        fn any_valid_batch_round_trips(
            start in 0u64..u64::MAX / 2,
            gaps in proptest::collection::vec(1u64..1000, 1..50),
            values in proptest::collection::vec(any::<f64>().prop_filter("NaN != NaN", |v| !v.is_nan()), 0..8),
            ts in any::<i64>(),
            stream in "[a-z]{1,12}",
            label in "[A-Za-z ]{0,10}",
        ) {
            let mut seq = start;
            let records: Vec<Record> = gaps.iter().map(|g| {
                seq += g;
                Record { stream: stream.clone(), seq, source_ts_us: ts, values: values.clone(), label: label.clone(), ..Default::default() }
            }).collect();
            let batch = RecordBatch::new(&dev(), ts, records);
            let back = RecordBatch::decode_checked(&batch.encode_to_bytes(), &dev()).unwrap();
            prop_assert_eq!(back, batch);
        }
    }
}
