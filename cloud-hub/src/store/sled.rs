//! The previous store engine (sled 0.34), behind the same trait, kept only
//! to measure it against redb (`store_bench`).
//!
//! Trees `records`, `results`, `pending` and `devices`, keyed as in
//! [`codec`](super::codec); per-device counts are one scan of `records`.
//! A batch's results and pending marks are written before its records
//! (sled recovers a prefix of its writes after a crash).

use std::path::Path;

use conveyor_shared::{DeviceId, FinalPrediction, Record};
use prost::Message;

use super::codec::{decode_record, decode_result, decode_stored, encode_record, key, split_key};
use super::{Appended, DeviceCounts, HubStore, StoreError, StoredRecord};

fn engine(e: sled::Error) -> StoreError {
    StoreError::Engine(Box::new(e))
}

pub struct SledStore {
    db: sled::Db,
    /// Serialises `append` (duplicate check + batch write).
    writer: std::sync::Mutex<()>,
    records: sled::Tree,
    results: sled::Tree,
    pending: sled::Tree,
    devices: sled::Tree,
}

fn prefix(device: &str) -> Vec<u8> {
    let mut p = device.as_bytes().to_vec();
    p.push(0);
    p
}

impl SledStore {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(64 * 1024 * 1024)
            .flush_every_ms(Some(200))
            .open()
            .map_err(|source| StoreError::Open {
                path: path.display().to_string(),
                source: Box::new(source),
            })?;
        Ok(SledStore {
            records: db.open_tree("records").map_err(engine)?,
            results: db.open_tree("results").map_err(engine)?,
            pending: db.open_tree("pending").map_err(engine)?,
            devices: db.open_tree("devices").map_err(engine)?,
            writer: Default::default(),
            db,
        })
    }

    fn with_result(&self, device: &str, mut r: StoredRecord) -> Result<StoredRecord, StoreError> {
        if r.prediction.is_some() {
            r.result = self.result(device, r.seq)?;
        }
        Ok(r)
    }
}

impl HubStore for SledStore {
    fn append(
        &self,
        device: &DeviceId,
        records: &[Record],
        received_at_us: i64,
        on_new: &mut dyn FnMut(&Record),
    ) -> Result<Appended, StoreError> {
        let _writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let device = device.as_str();
        let mut out = Appended::default();
        let mut batch = sled::Batch::default();
        let mut results = sled::Batch::default();
        let mut pending = sled::Batch::default();
        for r in records {
            let k = key(device, r.seq);
            if self.records.contains_key(&k).map_err(engine)? {
                out.duplicates += 1;
                continue;
            }
            if r.escalation.is_some() && r.prediction.is_some() {
                pending.insert(k.clone(), &[][..]);
                out.escalated.push(r.clone());
            } else if let Some(f) = FinalPrediction::by_edge(r, received_at_us) {
                results.insert(k.clone(), f.encode_to_vec());
                out.edge_results.push(f);
            }
            batch.insert(k, encode_record(r, received_at_us));
            out.new += 1;
            on_new(r);
        }
        self.pending.apply_batch(pending).map_err(engine)?;
        self.results.apply_batch(results).map_err(engine)?;
        self.records.apply_batch(batch).map_err(engine)?;
        Ok(out)
    }

    fn commit(&self) -> Result<(), StoreError> {
        self.db.flush().map_err(engine)?;
        Ok(())
    }

    fn record(&self, device: &str, seq: u64) -> Result<Option<Record>, StoreError> {
        let k = key(device, seq);
        let Some(v) = self.records.get(&k).map_err(engine)? else {
            return Ok(None);
        };
        Ok(Some(decode_record(&k, &v)?.1))
    }

    fn records_from(
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
            let (k, v) = item.map_err(engine)?;
            out.push(self.with_result(device, decode_stored(&k, &v)?)?);
        }
        Ok(out)
    }

    fn latest_records(&self, device: &str, limit: usize) -> Result<Vec<StoredRecord>, StoreError> {
        let mut out = Vec::new();
        for item in self.records.scan_prefix(prefix(device)).rev().take(limit) {
            let (k, v) = item.map_err(engine)?;
            out.push(self.with_result(device, decode_stored(&k, &v)?)?);
        }
        out.reverse();
        Ok(out)
    }

    fn device_counts(&self) -> Result<DeviceCounts, StoreError> {
        let mut out = DeviceCounts::new();
        for item in self.records.iter().keys() {
            let Some((device, seq)) = split_key(&item.map_err(engine)?) else {
                continue;
            };
            let entry = out.entry(device).or_default();
            entry.0 += 1;
            entry.1 = entry.1.max(seq);
        }
        Ok(out)
    }

    fn put_result(&self, device: &str, result: &FinalPrediction) -> Result<(), StoreError> {
        let k = key(device, result.seq);
        self.results
            .insert(&k, result.encode_to_vec())
            .map_err(engine)?;
        self.pending.remove(&k).map_err(engine)?;
        Ok(())
    }

    fn forget_pending(&self, device: &str, seq: u64) -> Result<(), StoreError> {
        self.pending.remove(key(device, seq)).map_err(engine)?;
        Ok(())
    }

    fn pending(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let mut out = Vec::new();
        for k in self.pending.iter().keys() {
            if let Some(parts) = split_key(&k.map_err(engine)?) {
                out.push(parts);
            }
        }
        Ok(out)
    }

    fn result(&self, device: &str, seq: u64) -> Result<Option<FinalPrediction>, StoreError> {
        let k = key(device, seq);
        self.results
            .get(&k)
            .map_err(engine)?
            .map(|v| decode_result(&k, &v))
            .transpose()
    }

    fn results_from(
        &self,
        device: &str,
        from: u64,
        limit: usize,
    ) -> Result<Vec<FinalPrediction>, StoreError> {
        self.results
            .range(key(device, from)..=key(device, u64::MAX))
            .take(limit)
            .map(|item| {
                let (k, v) = item.map_err(engine)?;
                decode_result(&k, &v)
            })
            .collect()
    }

    fn latest_results(
        &self,
        device: &str,
        limit: usize,
    ) -> Result<Vec<FinalPrediction>, StoreError> {
        let mut out = self
            .results
            .scan_prefix(prefix(device))
            .rev()
            .take(limit)
            .map(|item| {
                let (k, v) = item.map_err(engine)?;
                decode_result(&k, &v)
            })
            .collect::<Result<Vec<_>, _>>()?;
        out.reverse();
        Ok(out)
    }

    fn put_device(&self, device: &str, json: &[u8]) -> Result<(), StoreError> {
        self.devices
            .insert(device.as_bytes(), json)
            .map_err(engine)?;
        Ok(())
    }

    fn devices(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.devices
            .iter()
            .map(|item| {
                let (k, v) = item.map_err(engine)?;
                Ok((String::from_utf8_lossy(&k).into_owned(), v.to_vec()))
            })
            .collect()
    }
}
