//! Final predictions, published by the hub on `.../down/results`
//! (protobuf `ResultBatch`, schema in `shared/proto/conveyor.proto`).
//!
//! Every prediction record the hub stores gets one final prediction: the
//! edge's when it was sure enough, the hub model's when the edge escalated
//! (see [`crate::records::Escalation`]). Devices and business applications
//! read them with any MQTT client and any protobuf toolchain; the hub's
//! HTTP API serves the same structs as JSON.

use prost::Message;

use crate::records::{Prediction, Record, WireError, MAX_BATCH_BYTES, WIRE_VERSION};

/// `conveyor.v1.ResultBatch`.
#[derive(Clone, PartialEq, Message, serde::Serialize, serde::Deserialize)]
pub struct ResultBatch {
    #[prost(uint32, tag = "1")]
    pub version: u32,
    #[prost(string, tag = "2")]
    pub device_id: String,
    #[prost(message, repeated, tag = "3")]
    pub results: Vec<FinalPrediction>,
}

/// `conveyor.v1.Decider`: who made a final prediction.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    prost::Enumeration,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
#[repr(i32)]
pub enum Decider {
    Unspecified = 0,
    Edge = 1,
    Hub = 2,
}

/// `conveyor.v1.FinalPrediction`.
#[derive(Clone, PartialEq, Message, serde::Serialize, serde::Deserialize)]
pub struct FinalPrediction {
    #[prost(uint64, tag = "1")]
    pub seq: u64,
    #[prost(string, tag = "2")]
    pub stream: String,
    #[prost(int64, tag = "3")]
    pub source_ts_us: i64,
    #[prost(message, optional, tag = "4")]
    pub prediction: Option<Prediction>,
    #[prost(enumeration = "Decider", tag = "5")]
    #[serde(with = "decider_json")]
    pub decided_by: i32,
    #[prost(message, optional, tag = "6")]
    pub edge: Option<Prediction>,
    #[prost(string, tag = "7")]
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub label: String,
    #[prost(string, tag = "8")]
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub hub_error: String,
    #[prost(int64, tag = "9")]
    pub decided_at_us: i64,
}

impl FinalPrediction {
    fn of(record: &Record, decided_by: Decider, prediction: Prediction, at_us: i64) -> Self {
        FinalPrediction {
            seq: record.seq,
            stream: record.stream.clone(),
            source_ts_us: record.source_ts_us,
            prediction: Some(prediction),
            decided_by: decided_by as i32,
            edge: record.prediction.clone(),
            label: record.label.clone(),
            hub_error: String::new(),
            decided_at_us: at_us,
        }
    }

    /// The edge's answer is final: a prediction record that was not
    /// escalated. None for a record without a prediction.
    pub fn by_edge(record: &Record, at_us: i64) -> Option<Self> {
        let p = record.prediction.clone()?;
        Some(Self::of(record, Decider::Edge, p, at_us))
    }

    /// The hub model's answer for an escalated record; the window fields
    /// are the edge prediction's (the same window).
    pub fn by_hub(record: &Record, mut hub: Prediction, at_us: i64) -> Self {
        if let Some(edge) = &record.prediction {
            hub.window_start_us = edge.window_start_us;
            hub.window_len = edge.window_len;
        }
        Self::of(record, Decider::Hub, hub, at_us)
    }

    /// An escalation the hub could not answer: the edge's answer stays
    /// final, with the reason.
    pub fn hub_failed(record: &Record, error: String, at_us: i64) -> Self {
        let edge = record.prediction.clone().unwrap_or_default();
        FinalPrediction {
            hub_error: error,
            ..Self::of(record, Decider::Edge, edge, at_us)
        }
    }

    /// Who decided, as the enum (an unknown value reads as `Unspecified`).
    pub fn decider(&self) -> Decider {
        Decider::try_from(self.decided_by).unwrap_or(Decider::Unspecified)
    }

    /// Whether the final answer matches the record's ground truth, when it
    /// has one.
    pub fn correct(&self) -> Option<bool> {
        let p = self.prediction.as_ref()?;
        (!self.label.is_empty()).then(|| p.label == self.label)
    }
}

/// In JSON the decider is `"edge"` / `"hub"`, not a number.
mod decider_json {
    use super::Decider;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(v: &i32, s: S) -> Result<S::Ok, S::Error> {
        Decider::try_from(*v)
            .unwrap_or(Decider::Unspecified)
            .serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<i32, D::Error> {
        Ok(Decider::deserialize(d)? as i32)
    }
}

impl ResultBatch {
    pub fn new(device_id: &str, results: Vec<FinalPrediction>) -> Self {
        ResultBatch {
            version: WIRE_VERSION,
            device_id: device_id.to_string(),
            results,
        }
    }

    /// Decodes a results payload (for subscribers; never panics).
    pub fn decode_checked(payload: &[u8]) -> Result<Self, WireError> {
        if payload.len() > MAX_BATCH_BYTES {
            return Err(WireError::TooLarge(payload.len()));
        }
        let batch = ResultBatch::decode(payload)?;
        if batch.version == 0 || batch.version > WIRE_VERSION {
            return Err(WireError::UnsupportedVersion(batch.version));
        }
        Ok(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn final_prediction(decider: Decider) -> FinalPrediction {
        FinalPrediction {
            seq: 7,
            stream: "motion.predictions".into(),
            source_ts_us: 1,
            prediction: Some(Prediction {
                label: "Walking".into(),
                confidence: 0.9,
                ..Default::default()
            }),
            decided_by: decider as i32,
            label: "Walking".into(),
            ..Default::default()
        }
    }

    #[test]
    fn round_trips_and_reads_the_decider() {
        let batch = ResultBatch::new("dev-1", vec![final_prediction(Decider::Hub)]);
        let back = ResultBatch::decode_checked(&batch.encode_to_vec()).unwrap();
        assert_eq!(back, batch);
        assert_eq!(back.results[0].decider(), Decider::Hub);
        assert_eq!(back.results[0].correct(), Some(true));
        let json = serde_json::to_value(&back.results[0]).unwrap();
        assert_eq!(json["decided_by"], "hub");
        let again: FinalPrediction = serde_json::from_value(json).unwrap();
        assert_eq!(again, back.results[0]);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(ResultBatch::decode_checked(&[0xff, 0xff, 0xff]).is_err());
        let mut old = ResultBatch::new("d", vec![]);
        old.version = 99;
        assert!(matches!(
            ResultBatch::decode_checked(&old.encode_to_vec()),
            Err(WireError::UnsupportedVersion(99))
        ));
    }
}
