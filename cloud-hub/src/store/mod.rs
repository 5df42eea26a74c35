//! The hub's durable store: every record received, exactly once, with its
//! final prediction, the escalations still waiting for the hub, and the
//! saved device registry.
//!
//! [`HubStore`] is what the hub needs of a store; ingest, the cascade
//! router, the API and the registry persistence use only it (through
//! [`Store`]). [`open`] opens the embedded default, [`redb`](self::redb).
//! A scale-out store (e.g. PostgreSQL) would be another implementation.
//!
//! The invariants every implementation keeps:
//! - **Exactly once.** Records are identified by `(device, seq)`; a copy of
//!   one already held (an MQTT redelivery after a reconnect) is counted as a
//!   duplicate and dropped without touching the first.
//! - **Atomic per batch.** [`HubStore::append`] stores all of a batch's new
//!   records or none (and says so), never half.
//! - **A record always has its result or its pending mark.** The edge's
//!   final prediction, or the pending mark of an escalated record, is
//!   stored with the record, so a durable record never lacks both; a
//!   pending mark is cleared only by storing the hub's answer
//!   ([`HubStore::put_result`]) or, for a record that never made it,
//!   [`HubStore::forget_pending`].
//! - **Durable before acknowledged.** Writes may be buffered until
//!   [`HubStore::commit`], which makes every write so far durable (one
//!   fsync per group of batches); ingest acknowledges only after it.
//! - **Counts are the store's.** [`HubStore::device_counts`] is what the
//!   store holds, not what the periodically saved registry last knew.
//! - **A storage fault is survived, not fatal.** A write that fails in the
//!   storage (a full disk, an I/O error, a read-only remount) is a
//!   [`StoreError::Io`]: the store reports itself unhealthy
//!   ([`HubStore::health`]) and recovers by itself once the storage takes
//!   writes again. Recovering may roll back to the last durable commit;
//!   [`HubStore::generation`] counts those rollbacks, so a caller can tell
//!   whether a write it made was durable when a commit succeeded.

pub mod codec;
pub mod health;
mod legacy;
pub mod redb;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use conveyor_shared::{DeviceId, FinalPrediction, Record};
use serde::Serialize;

/// A shared handle on the hub's store.
pub type Store = Arc<dyn HubStore>;

/// Opens (or creates) the embedded default store in the directory `path`.
pub fn open(path: &Path) -> Result<Store, StoreError> {
    open_with(path, &StoreOptions::default())
}

/// [`open`] with options.
pub fn open_with(path: &Path, options: &StoreOptions) -> Result<Store, StoreError> {
    Ok(Arc::new(redb::RedbStore::open_with(path, options)?))
}

/// How the store is opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreOptions {
    /// Verify the whole file when opening it (and when reopening it after
    /// a fault), so a file damaged outside the hub is refused with an error
    /// instead of being trusted. Costs a read of the whole file.
    pub check_on_open: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            check_on_open: true,
        }
    }
}

/// Per device: `(records held, highest seq)`.
pub type DeviceCounts = BTreeMap<String, (u64, u64)>;

/// What the hub needs of its store. Reads see every write made so far,
/// durable or not.
pub trait HubStore: Send + Sync + 'static {
    /// Stores a batch's records, skipping any `(device, seq)` already
    /// held, with the edge's final predictions of the new prediction
    /// records and pending marks for the escalated ones, in one atomic
    /// write. `on_new` sees each record that was new. Durable after the
    /// next [`commit`](Self::commit).
    fn append(
        &self,
        device: &DeviceId,
        records: &[Record],
        received_at_us: i64,
        on_new: &mut dyn FnMut(&Record),
    ) -> Result<Appended, StoreError>;

    /// Makes every write so far durable (blocks: call it off the async
    /// threads).
    fn commit(&self) -> Result<(), StoreError>;

    /// One record, as it was received.
    fn record(&self, device: &str, seq: u64) -> Result<Option<Record>, StoreError>;

    /// Up to `limit` records of `device` with seq >= `from`, in sequence
    /// order, each with its final prediction.
    fn records_from(
        &self,
        device: &str,
        from: u64,
        limit: usize,
    ) -> Result<Vec<StoredRecord>, StoreError>;

    /// The last `limit` records of `device`, in sequence order, each with
    /// its final prediction.
    fn latest_records(&self, device: &str, limit: usize) -> Result<Vec<StoredRecord>, StoreError>;

    /// Per device: how many records are held and the highest seq.
    fn device_counts(&self) -> Result<DeviceCounts, StoreError>;

    /// Stores the final prediction of an escalated record and clears its
    /// pending mark, in one write.
    fn put_result(&self, device: &str, result: &FinalPrediction) -> Result<(), StoreError>;

    /// Drops a pending mark (its record is not in the store).
    fn forget_pending(&self, device: &str, seq: u64) -> Result<(), StoreError>;

    /// Every escalated record still waiting for the hub: `(device, seq)`.
    fn pending(&self) -> Result<Vec<(String, u64)>, StoreError>;

    /// The final prediction of one record.
    fn result(&self, device: &str, seq: u64) -> Result<Option<FinalPrediction>, StoreError>;

    /// Up to `limit` results of `device` with seq >= `from`, in order.
    fn results_from(
        &self,
        device: &str,
        from: u64,
        limit: usize,
    ) -> Result<Vec<FinalPrediction>, StoreError>;

    /// The last `limit` results of `device`, in order.
    fn latest_results(
        &self,
        device: &str,
        limit: usize,
    ) -> Result<Vec<FinalPrediction>, StoreError>;

    /// Saves a device's registry entry (opaque JSON).
    fn put_device(&self, device: &str, json: &[u8]) -> Result<(), StoreError>;

    /// Every saved registry entry.
    fn devices(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError>;

    /// Whether the store can write, and its fault and recovery counters.
    fn health(&self) -> StoreHealth;

    /// How many times the store has rolled back to its last durable
    /// commit (to recover from a fault). A write made while this was `g`
    /// is durable once a later [`commit`](Self::commit) succeeds, if this
    /// is still `g` after that commit; otherwise it may be gone.
    fn generation(&self) -> u64;
}

/// The store's health, as `/healthz`, `/api/v1/stats` and `/metrics`
/// report it.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct StoreHealth {
    /// Whether the store can write: false from a storage failure until a
    /// durable commit succeeds again.
    pub healthy: bool,
    /// The last storage error while unhealthy.
    pub error: Option<String>,
    /// When the store became unhealthy (µs since the epoch).
    pub since_us: Option<i64>,
    /// Writes and commits that failed in the storage, since start.
    pub write_failures: u64,
    /// Times the store was reopened to recover from a fault, since start.
    pub recoveries: u64,
    /// Free bytes on the store's filesystem, where it can be asked.
    pub free_bytes: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store at {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error(
        "store at {path}: {found}, which this version cannot read. \
         Point store.path at a new directory (or move {path} away) to start \
         an empty store; the old one is left untouched"
    )]
    Unsupported { path: String, found: String },
    #[error(
        "store at {path} is damaged: {found}. Move {path} aside to start an empty \
         store (the agents re-send only what they still hold), or stop the hub and \
         run `cloud-hub store check --path {path}` to repair what can be repaired"
    )]
    Damaged { path: String, found: String },
    #[error("store: {0}")]
    Engine(Box<dyn std::error::Error + Send + Sync>),
    /// The storage failed (disk full, I/O error, read-only): the store
    /// recovers by itself once it takes writes again.
    #[error("store: the storage failed: {0}")]
    Io(Box<dyn std::error::Error + Send + Sync>),
    /// The store is being reopened after a fault, or cannot be reopened.
    #[error(
        "store at {path} is unavailable: {reason}. The hub keeps running and \
         retries; the agents keep their records until it can store them"
    )]
    Unavailable { path: String, reason: String },
    #[error("stored record {key:?} is corrupt: {reason}")]
    Corrupt { key: String, reason: String },
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

#[cfg(test)]
mod fault_tests;
#[cfg(test)]
mod result_tests;
#[cfg(test)]
mod tests;
