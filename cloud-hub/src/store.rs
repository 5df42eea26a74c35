//! The hub's durable store (sled): every record received, exactly once.
//!
//! Records are keyed `<device_id> 0x00 <seq as big-endian u64>`, so a
//! prefix scan returns one device's records in sequence order and the key
//! itself is the deduplication check: a batch's records that are not yet
//! held are written in one atomic sled batch (appends are serialised), and
//! a second copy (an MQTT redelivery after a reconnect) is counted and
//! dropped without touching the first.
//! The value is the record's receive time (8 bytes, big-endian µs) followed
//! by the protobuf-encoded `Record`. Final predictions live beside the
//! records under the same keys ([`crate::results_store`]).

use std::path::Path;

use conveyor_shared::{DeviceId, FinalPrediction, Record};
use prost::Message;
use serde::Serialize;

use crate::results_store::ResultsStore;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store at {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: sled::Error,
    },
    #[error("store: {0}")]
    Sled(#[from] sled::Error),
    #[error("stored record {key:?} is corrupt: {reason}")]
    Corrupt { key: String, reason: String },
}

#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    /// Serialises `append` (duplicate check + batch write).
    writer: std::sync::Arc<std::sync::Mutex<()>>,
    records: sled::Tree,
    devices: sled::Tree,
    pub results: ResultsStore,
}

/// What appending one batch did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Appended {
    pub new: u64,
    pub duplicates: u64,
    /// Final predictions of the new prediction records the edge decided.
    pub edge_results: Vec<FinalPrediction>,
    /// New records escalated to a hub model (now pending).
    pub escalated: Vec<Record>,
}

/// A record as the API returns it.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct StoredRecord {
    pub seq: u64,
    pub stream: String,
    pub source_ts_us: i64,
    pub received_at_us: i64,
    pub values: Vec<f64>,
    #[serde(skip_serializing_if = "String::is_empty", default)]
    pub label: String,
    /// Set on records emitted by an edge inference stage.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub prediction: Option<conveyor_shared::Prediction>,
    /// A document kept by the source or written by a transform (as text;
    /// `{"hex": ...}` if it is not UTF-8).
    #[serde(
        skip_serializing_if = "Vec::is_empty",
        default,
        with = "conveyor_shared::records::payload_json"
    )]
    pub payload: Vec<u8>,
    /// `name@version` of each WASM transform that made the record.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub transforms: Vec<String>,
    /// Sent with a prediction the edge escalated to a hub model.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub escalation: Option<conveyor_shared::Escalation>,
    /// The final prediction of a prediction record (filled in on read).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub result: Option<FinalPrediction>,
}

pub(crate) fn key(device: &str, seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(device.len() + 9);
    k.extend_from_slice(device.as_bytes());
    k.push(0);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

pub(crate) fn prefix(device: &str) -> Vec<u8> {
    let mut p = device.as_bytes().to_vec();
    p.push(0);
    p
}

/// `(device, seq)` of a key; None for a malformed one.
pub(crate) fn split_key(k: &[u8]) -> Option<(String, u64)> {
    let split = k.len().checked_sub(9)?;
    let device = String::from_utf8_lossy(&k[..split]).into_owned();
    let seq = u64::from_be_bytes(k[split + 1..].try_into().ok()?);
    Some((device, seq))
}

impl Store {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(64 * 1024 * 1024)
            .flush_every_ms(Some(200))
            .open()
            .map_err(|source| StoreError::Open {
                path: path.display().to_string(),
                source,
            })?;
        let records = db.open_tree("records")?;
        let devices = db.open_tree("devices")?;
        let results = ResultsStore::open(&db)?;
        Ok(Store {
            db,
            writer: Default::default(),
            records,
            devices,
            results,
        })
    }

    /// Stores a batch's records, skipping any (device, seq) already held;
    /// `on_new` sees each record that was new.
    pub fn append(
        &self,
        device: &DeviceId,
        records: &[Record],
        received_at_us: i64,
        mut on_new: impl FnMut(&Record),
    ) -> Result<Appended, StoreError> {
        // Check-then-write is only sound with one writer at a time.
        let _writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Appended::default();
        let mut batch = sled::Batch::default();
        let mut new = Vec::new();
        for r in records {
            let k = key(device.as_str(), r.seq);
            if self.records.contains_key(&k)? {
                out.duplicates += 1;
                continue;
            }
            let mut value = Vec::with_capacity(8 + r.encoded_len());
            value.extend_from_slice(&received_at_us.to_be_bytes());
            r.encode(&mut value).expect("Vec has room");
            batch.insert(k, value);
            out.new += 1;
            on_new(r);
            new.push(r);
        }
        // Results and pending marks first: a stored record always has one.
        out.edge_results = self
            .results
            .prepare(device.as_str(), &new, received_at_us)?;
        out.escalated = new
            .into_iter()
            .filter(|r| r.escalation.is_some() && r.prediction.is_some())
            .cloned()
            .collect();
        // One atomic write per MQTT batch: either all its new records are
        // stored or none (and the error is reported), never half.
        self.records.apply_batch(batch)?;
        Ok(out)
    }

    /// One record, as it was received.
    pub fn record(&self, device: &str, seq: u64) -> Result<Option<Record>, StoreError> {
        let k = key(device, seq);
        let Some(v) = self.records.get(&k)? else {
            return Ok(None);
        };
        if v.len() < 8 {
            return Err(StoreError::Corrupt {
                key: String::from_utf8_lossy(&k).into_owned(),
                reason: "value shorter than its timestamp".into(),
            });
        }
        Record::decode(&v[8..])
            .map(Some)
            .map_err(|e| StoreError::Corrupt {
                key: String::from_utf8_lossy(&k).into_owned(),
                reason: e.to_string(),
            })
    }

    /// Up to `limit` records of `device` with seq >= `from`, in sequence order.
    pub fn records_from(
        &self,
        device: &str,
        from: u64,
        limit: usize,
    ) -> Result<Vec<StoredRecord>, StoreError> {
        let mut out = Vec::new();
        for item in self
            .records
            .range(key(device, from)..=key(device, u64::MAX))
            .take(limit)
        {
            let (k, v) = item?;
            out.push(self.with_result(device, decode(&k, &v)?)?);
        }
        Ok(out)
    }

    fn with_result(&self, device: &str, mut r: StoredRecord) -> Result<StoredRecord, StoreError> {
        if r.prediction.is_some() {
            r.result = self.results.get(device, r.seq)?;
        }
        Ok(r)
    }

    /// The last `limit` records of `device`, in sequence order.
    pub fn latest(&self, device: &str, limit: usize) -> Result<Vec<StoredRecord>, StoreError> {
        let mut out = Vec::new();
        for item in self.records.scan_prefix(prefix(device)).rev().take(limit) {
            let (k, v) = item?;
            out.push(self.with_result(device, decode(&k, &v)?)?);
        }
        out.reverse();
        Ok(out)
    }

    /// Per device: how many records are held and the highest seq. One pass
    /// over the store, at startup: the store, not the periodically saved
    /// registry, is the truth after a crash.
    pub fn device_counts(
        &self,
    ) -> Result<std::collections::BTreeMap<String, (u64, u64)>, StoreError> {
        let mut out = std::collections::BTreeMap::<String, (u64, u64)>::new();
        for item in self.records.iter().keys() {
            let Some((device, seq)) = split_key(&item?) else {
                continue;
            };
            let entry = out.entry(device).or_default();
            entry.0 += 1;
            entry.1 = entry.1.max(seq);
        }
        Ok(out)
    }

    /// Saves a device's registry entry (opaque JSON).
    pub fn put_device(&self, device: &str, json: &[u8]) -> Result<(), StoreError> {
        self.devices.insert(device.as_bytes(), json)?;
        Ok(())
    }

    /// Every saved registry entry.
    pub fn devices(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.devices
            .iter()
            .map(|item| {
                let (k, v) = item?;
                Ok((String::from_utf8_lossy(&k).into_owned(), v.to_vec()))
            })
            .collect()
    }

    /// Makes every write so far durable (fsync), without blocking a thread.
    pub async fn flush_async(&self) -> Result<(), StoreError> {
        self.db.flush_async().await?;
        Ok(())
    }

    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }
}

fn decode(k: &[u8], v: &[u8]) -> Result<StoredRecord, StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt {
        key: String::from_utf8_lossy(k).into_owned(),
        reason,
    };
    if v.len() < 8 {
        return Err(corrupt("value shorter than its timestamp".into()));
    }
    let received_at_us = i64::from_be_bytes(v[..8].try_into().expect("8 bytes"));
    let r = Record::decode(&v[8..]).map_err(|e| corrupt(e.to_string()))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(seq: u64) -> Record {
        Record {
            stream: "s".into(),
            seq,
            source_ts_us: seq as i64,
            values: vec![seq as f64],
            label: String::new(),
            ..Default::default()
        }
    }

    #[test]
    fn dedups_and_reads_back_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let a = DeviceId::new("a").unwrap();
        let ab = DeviceId::new("ab").unwrap();
        let n = store.append(&a, &[rec(2), rec(1)], 7, |_| ()).unwrap();
        assert_eq!((n.new, n.duplicates), (2, 0));
        let n = store.append(&a, &[rec(2), rec(3)], 8, |_| ()).unwrap();
        assert_eq!((n.new, n.duplicates), (1, 1));
        // A device whose id extends another's must not leak into its scans.
        store.append(&ab, &[rec(0)], 9, |_| ()).unwrap();
        let all = store.records_from("a", 0, 100).unwrap();
        assert_eq!(all.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![1, 2, 3]);
        assert_eq!(all[1].received_at_us, 7, "the first copy is kept");
        assert_eq!(store.records_from("a", 2, 1).unwrap()[0].seq, 2);
        assert_eq!(
            store
                .latest("a", 2)
                .unwrap()
                .iter()
                .map(|r| r.seq)
                .collect::<Vec<_>>(),
            vec![2, 3]
        );
        assert_eq!(store.records_from("ab", 0, 10).unwrap().len(), 1);
    }

    #[test]
    fn survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let a = DeviceId::new("a").unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            store.append(&a, &[rec(5)], 1, |_| ()).unwrap();
            store.flush().unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(
            store.append(&a, &[rec(5)], 2, |_| ()).unwrap().duplicates,
            1
        );
    }
}

#[cfg(test)]
mod result_tests {
    use super::*;
    use conveyor_shared::{Decider, Escalation, Prediction};

    fn prediction_record(seq: u64, escalated: bool) -> Record {
        Record {
            stream: "m.predictions".into(),
            seq,
            label: "Walking".into(),
            prediction: Some(Prediction {
                label: "Running".into(),
                confidence: 0.4,
                ..Default::default()
            }),
            escalation: escalated.then(|| Escalation {
                hub_model: "hub".into(),
                threshold: 0.9,
                channels: 1,
                window: vec![1.0, 2.0],
            }),
            ..Default::default()
        }
    }

    #[test]
    fn edge_results_are_stored_with_their_records_and_escalations_wait() {
        let dir = tempfile::tempdir().unwrap();
        let a = DeviceId::new("a").unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            let batch = [prediction_record(1, false), prediction_record(2, true), {
                let mut r = prediction_record(3, false);
                r.prediction = None;
                r
            }];
            let n = store.append(&a, &batch, 5, |_| ()).unwrap();
            assert_eq!(n.edge_results.len(), 1);
            assert_eq!(n.edge_results[0].decider(), Decider::Edge);
            assert_eq!(n.escalated.len(), 1);
            assert_eq!(n.escalated[0].seq, 2);
            // A redelivery is neither a new result nor a new escalation.
            let again = store.append(&a, &batch, 6, |_| ()).unwrap();
            assert!(again.edge_results.is_empty() && again.escalated.is_empty());
            store.flush().unwrap();
        }
        // After a restart the escalation is still pending.
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.results.pending().unwrap(), vec![("a".to_string(), 2)]);
        let rec = store.record("a", 2).unwrap().unwrap();
        let hub = Prediction {
            label: "Walking".into(),
            confidence: 0.99,
            ..Default::default()
        };
        store
            .results
            .put("a", &FinalPrediction::by_hub(&rec, hub, 9))
            .unwrap();
        assert!(store.results.pending().unwrap().is_empty());
        let all = store.records_from("a", 0, 10).unwrap();
        assert_eq!(all[0].result.as_ref().unwrap().decider(), Decider::Edge);
        let two = all[1].result.as_ref().unwrap();
        assert_eq!((two.decider(), two.correct()), (Decider::Hub, Some(true)));
        assert!(all[2].result.is_none(), "no prediction, no result");
        assert_eq!(store.results.latest("a", 1).unwrap()[0].seq, 2);
        assert_eq!(store.results.from("a", 0, 10).unwrap().len(), 2);
    }
}
