//! JSON control messages: device status and heartbeats.
//!
//! These are small and infrequent, so they are JSON: `mosquitto_sub -v -t
//! 'conveyor/v1/#'` shows them as they are. Unknown fields are ignored so a
//! newer agent can add to them without breaking an older hub.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Whether the agent is connected. Published retained on `.../status`;
/// the `Offline` form is also registered as the agent's MQTT last will, so
/// the broker announces an agent that vanishes without saying goodbye.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceState {
    Online,
    Offline,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceStatus {
    pub device_id: String,
    pub state: DeviceState,
    /// Agent version, e.g. "0.1.0".
    #[serde(default)]
    pub agent_version: String,
    /// When this status was written (agent clock, µs since epoch). For the
    /// last will this is the time of connecting, not of going offline.
    #[serde(default)]
    pub ts_us: i64,
    /// True when the agent went offline on purpose (clean shutdown).
    #[serde(default)]
    pub clean: bool,
}

/// Per-source counters inside a heartbeat.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SourceStats {
    /// Readings accepted and turned into records.
    pub records: u64,
    /// Readings refused (malformed, missing fields, ...).
    pub rejected: u64,
}

/// Per-stage counters inside a heartbeat.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StageStats {
    pub name: String,
    /// `inference`, ...
    pub kind: String,
    /// The model running now (inference stages).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub model_id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub model_version: String,
    /// Readings that entered the stage.
    pub records_in: u64,
    /// Records the stage emitted (predictions, for inference).
    pub records_out: u64,
    /// Windows completed (inference).
    #[serde(default)]
    pub windows: u64,
    /// Models swapped in while running.
    #[serde(default)]
    pub swaps: u64,
    /// Predictions escalated to the hub (inference stages with a cascade).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub escalated: u64,
    /// Readings or windows dropped, by reason.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub dropped: BTreeMap<String, u64>,
    /// The WASM transforms running now, in chain order (transform stages).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub transforms: Vec<TransformStats>,
    /// A candidate model running beside the stage's model (inference
    /// stages in a shadow run): how the two compare since it started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<ShadowStats>,
}

/// A shadow run: a candidate model given the same windows as the stage's
/// model (the champion), its answers counted, never acted on.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ShadowStats {
    /// The candidate.
    pub model_id: String,
    pub model_version: String,
    /// Windows both models were given since the candidate started.
    pub windows: u64,
    /// Windows on which the candidate's label was the champion's.
    pub agreed: u64,
    /// Windows the candidate failed to run (the champion's answer stood).
    pub errors: u64,
    /// Mean confidence of each model's answers, 0..=1.
    pub champion_confidence: f64,
    pub candidate_confidence: f64,
    /// Each model's run time per window, µs, over the recent windows.
    pub champion_p50_us: u64,
    pub champion_p99_us: u64,
    pub candidate_p50_us: u64,
    pub candidate_p99_us: u64,
}

impl ShadowStats {
    /// Share of the windows the candidate agreed on (0 with none).
    pub fn agreement(&self) -> f64 {
        if self.windows == 0 {
            0.0
        } else {
            self.agreed as f64 / self.windows as f64
        }
    }
}

/// One WASM transform of a transform stage's chain.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TransformStats {
    /// `name@version`, as the records it made carry it.
    pub transform: String,
    /// SHA-256 of the module's bytes (hex).
    pub sha256: String,
    /// `active` or `disabled`.
    pub state: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub disabled_reason: String,
    pub records_in: u64,
    pub records_out: u64,
    /// Records the transform rejected itself (`conveyor.fail`).
    #[serde(default)]
    pub rejected: u64,
    /// Records put in the dead-letter store (rejected, failed, or dropped
    /// while disabled).
    #[serde(default)]
    pub dead_lettered: u64,
    /// Records passed on untouched while disabled (policy `pass`).
    #[serde(default)]
    pub passed_disabled: u64,
    /// Failed records by kind (`out_of_fuel`, `memory_limit`, `trap`, ...).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub failures: BTreeMap<String, u64>,
    /// WASM fuel spent (about one unit per instruction).
    #[serde(default)]
    pub fuel_used: u64,
}

/// The hub's end-to-end acknowledgement of one record batch, on
/// `.../down/ack`: records `first_seq..=last_seq` are durably stored at the
/// hub (or, with `rejected`, will never be: the hub refused the batch and
/// says why). Only then may the agent delete them from its log. Acks may be
/// lost; the agent re-sends what stays unacknowledged and the hub, which
/// deduplicates by seq, acknowledges again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    pub first_seq: u64,
    pub last_seq: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejected: Option<String>,
}

impl Ack {
    pub fn decode(payload: &[u8]) -> Result<Self, ControlError> {
        decode("ack", payload)
    }
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("ack serialises")
    }
}

/// The agent's own metrics, published every `heartbeat_secs` on
/// `.../heartbeat` and once more on clean shutdown.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub device_id: String,
    pub ts_us: i64,
    pub uptime_s: f64,
    /// Records accepted into the durable log (each got a sequence number).
    pub records_produced: u64,
    /// Records published to the broker (re-sends included).
    pub records_published: u64,
    /// Batches published to the broker (re-sends included).
    pub batches_published: u64,
    /// Records the hub acknowledged as stored.
    #[serde(default)]
    pub records_acked: u64,
    /// Records the hub refused (acknowledged with a rejection).
    #[serde(default)]
    pub records_rejected_by_hub: u64,
    /// Records in the agent's log, not yet acknowledged.
    #[serde(default)]
    pub log_records: u64,
    #[serde(default)]
    pub log_bytes: u64,
    /// Records dropped from a full log (drop_oldest), since the log began.
    #[serde(default)]
    pub log_dropped_full: u64,
    /// Records dropped for age, since the log began.
    #[serde(default)]
    pub log_dropped_age: u64,
    /// Readings dropped because the log could not be written at all (a
    /// read-only or failing disk; `drop_oldest`), since the log began.
    #[serde(default)]
    pub log_dropped_unwritable: u64,
    /// Records lost with a corrupt log file: what it held that could not
    /// be read back (the file is moved aside, not deleted).
    #[serde(default)]
    pub log_lost_corrupt: u64,
    /// The byte bound the log holds its records to now (`max_bytes`, or
    /// lower on a full disk): with `log_bytes`, how near it is to
    /// dropping.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_bound_bytes: Option<u64>,
    /// The log's disk is full: the log is held below what fitted and
    /// `full_policy` applies, until space returns.
    #[serde(default)]
    pub log_disk_full: bool,
    /// What is wrong with the agent's storage now, e.g. `disk full` or
    /// `cannot write: Read-only file system`; absent when nothing is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_fault: Option<String>,
    /// Free bytes on the filesystem of the agent's `data_dir`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_free_bytes: Option<u64>,
    /// Storage faults met since the agent started (each one handled).
    #[serde(default)]
    pub storage_faults: u64,
    /// Dead letters that could not be written (they are then only in the
    /// agent's log output).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub dead_letter_write_errors: u64,
    /// Compiled transforms that could not be cached (they are compiled
    /// again at the next start).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub transform_cache_write_errors: u64,
    /// The seq the next record will get; seqs below it have been used.
    pub next_seq: u64,
    /// Times the uplink (re)connected.
    pub connects: u64,
    /// Resident memory of the agent process, bytes (0 where unknown).
    #[serde(default)]
    pub rss_bytes: u64,
    #[serde(default)]
    pub sources: BTreeMap<String, SourceStats>,
    /// Pipeline stages, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stages: Vec<StageStats>,
    /// The last dead letters (at most [`RECENT_DEAD_LETTERS`], oldest
    /// first), with their reasons but not their records: what an operator
    /// looks at first. The records stay on the device
    /// (`edge-agent dead-letters`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dead_letters: Vec<DeadLetterNote>,
}

/// How many recent dead letters a heartbeat carries.
pub const RECENT_DEAD_LETTERS: usize = 8;

/// One dead letter as a heartbeat reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetterNote {
    /// When it was stored, µs since the Unix epoch.
    pub at_us: i64,
    pub stage: String,
    /// `name@version` of the transform.
    pub transform: String,
    /// `trap`, `out_of_fuel`, `rejected`, `disabled`, ...
    pub kind: String,
    /// Cut to [`crate::ota::state::MAX_REASON_BYTES`].
    pub reason: String,
    /// The record's stream.
    pub stream: String,
}

#[derive(Debug, Error)]
#[error("malformed {what} message: {source}")]
pub struct ControlError {
    what: &'static str,
    #[source]
    source: serde_json::Error,
}

fn decode<T: for<'de> Deserialize<'de>>(
    what: &'static str,
    payload: &[u8],
) -> Result<T, ControlError> {
    serde_json::from_slice(payload).map_err(|source| ControlError { what, source })
}

impl DeviceStatus {
    pub fn decode(payload: &[u8]) -> Result<Self, ControlError> {
        decode("status", payload)
    }
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("status serialises")
    }
}

impl Heartbeat {
    pub fn decode(payload: &[u8]) -> Result<Self, ControlError> {
        decode("heartbeat", payload)
    }
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("heartbeat serialises")
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_round_trips_and_reads_as_json() {
        let s = DeviceStatus {
            device_id: "d1".into(),
            state: DeviceState::Offline,
            agent_version: "0.1.0".into(),
            ts_us: 5,
            clean: false,
        };
        let bytes = s.encode();
        assert!(std::str::from_utf8(&bytes)
            .unwrap()
            .contains("\"state\":\"offline\""));
        assert_eq!(DeviceStatus::decode(&bytes).unwrap(), s);
    }

    #[test]
    fn heartbeat_tolerates_unknown_fields_and_rejects_garbage() {
        let hb = Heartbeat {
            device_id: "d1".into(),
            next_seq: 9,
            ..Default::default()
        };
        let mut v: serde_json::Value = serde_json::from_slice(&hb.encode()).unwrap();
        v["added_in_v1_1"] = serde_json::json!(true);
        assert_eq!(Heartbeat::decode(v.to_string().as_bytes()).unwrap(), hb);
        let err = Heartbeat::decode(b"{\"device_id\": 3}").unwrap_err();
        assert!(err.to_string().contains("malformed heartbeat"), "{err}");
        assert!(DeviceStatus::decode(b"\x00\x01").is_err());
    }
}
