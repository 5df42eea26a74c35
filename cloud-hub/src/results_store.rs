//! Final predictions, stored beside the records they belong to, and the
//! escalated records still waiting for the hub's model.
//!
//! Two sled trees of the store's database, keyed like `records`
//! (`<device_id> 0x00 <seq_be>`): `results` holds each prediction record's
//! protobuf `FinalPrediction`; `pending` marks escalated records without
//! one yet. Both are written *before* the batch's records, so a stored
//! record always has its edge result or its pending mark (sled recovers a
//! prefix of its writes after a crash); a hub that restarts finds the
//! pending marks and asks its models again. A pending mark whose record
//! never made it is simply dropped.

use conveyor_shared::{FinalPrediction, Record};
use prost::Message;

use crate::store::{key, prefix, split_key, StoreError};

#[derive(Clone)]
pub struct ResultsStore {
    results: sled::Tree,
    pending: sled::Tree,
}

impl ResultsStore {
    pub(crate) fn open(db: &sled::Db) -> Result<Self, StoreError> {
        Ok(ResultsStore {
            results: db.open_tree("results")?,
            pending: db.open_tree("pending")?,
        })
    }

    /// For the new records of one batch: stores the edge's final
    /// predictions and marks the escalated records pending. Returns the
    /// edge results (to publish once durable).
    pub(crate) fn prepare(
        &self,
        device: &str,
        new: &[&Record],
        at_us: i64,
    ) -> Result<Vec<FinalPrediction>, StoreError> {
        let mut results = sled::Batch::default();
        let mut pending = sled::Batch::default();
        let mut out = Vec::new();
        for r in new {
            if r.escalation.is_some() && r.prediction.is_some() {
                pending.insert(key(device, r.seq), &[][..]);
            } else if let Some(f) = FinalPrediction::by_edge(r, at_us) {
                results.insert(key(device, r.seq), f.encode_to_vec());
                out.push(f);
            }
        }
        self.pending.apply_batch(pending)?;
        self.results.apply_batch(results)?;
        Ok(out)
    }

    /// Stores the final prediction of an escalated record and clears its
    /// pending mark.
    pub fn put(&self, device: &str, result: &FinalPrediction) -> Result<(), StoreError> {
        let k = key(device, result.seq);
        self.results.insert(&k, result.encode_to_vec())?;
        self.pending.remove(&k)?;
        Ok(())
    }

    /// Drops a pending mark (its record is not in the store).
    pub fn forget_pending(&self, device: &str, seq: u64) -> Result<(), StoreError> {
        self.pending.remove(key(device, seq))?;
        Ok(())
    }

    /// Every escalated record still waiting for the hub: `(device, seq)`.
    pub fn pending(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let mut out = Vec::new();
        for k in self.pending.iter().keys() {
            if let Some(parts) = split_key(&k?) {
                out.push(parts);
            }
        }
        Ok(out)
    }

    pub fn is_pending(&self, device: &str, seq: u64) -> Result<bool, StoreError> {
        Ok(self.pending.contains_key(key(device, seq))?)
    }

    pub fn get(&self, device: &str, seq: u64) -> Result<Option<FinalPrediction>, StoreError> {
        self.results
            .get(key(device, seq))?
            .map(|v| decode(&key(device, seq), &v))
            .transpose()
    }

    /// Up to `limit` results of `device` with seq >= `from`, in order.
    pub fn from(
        &self,
        device: &str,
        from: u64,
        limit: usize,
    ) -> Result<Vec<FinalPrediction>, StoreError> {
        self.results
            .range(key(device, from)..=key(device, u64::MAX))
            .take(limit)
            .map(|item| {
                let (k, v) = item?;
                decode(&k, &v)
            })
            .collect()
    }

    /// The last `limit` results of `device`, in order.
    pub fn latest(&self, device: &str, limit: usize) -> Result<Vec<FinalPrediction>, StoreError> {
        let mut out = self
            .results
            .scan_prefix(prefix(device))
            .rev()
            .take(limit)
            .map(|item| {
                let (k, v) = item?;
                decode(&k, &v)
            })
            .collect::<Result<Vec<_>, _>>()?;
        out.reverse();
        Ok(out)
    }
}

fn decode(k: &[u8], v: &[u8]) -> Result<FinalPrediction, StoreError> {
    FinalPrediction::decode(v).map_err(|e| StoreError::Corrupt {
        key: String::from_utf8_lossy(k).into_owned(),
        reason: e.to_string(),
    })
}
