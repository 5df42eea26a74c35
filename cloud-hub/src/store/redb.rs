//! The embedded default store: one redb database, `<store.path>/hub.redb`.
//!
//! Tables (keys and values as in [`codec`](super::codec)): `records`,
//! `results` (final predictions), `pending` (escalated records without a
//! result), `counts` (per device: records held, highest seq; kept in the
//! same transactions as `records`, so a restart reads them instead of
//! scanning every record) and `devices` (the saved registry).
//!
//! Every write is one redb write transaction, committed without an fsync
//! (`Durability::None`: visible at once, durable with the next durable
//! commit, and a crash keeps a prefix of the transactions); [`commit`]
//! is that durable commit, one fsync for everything written since. A batch
//! is one transaction, checked for duplicates and written under redb's
//! single-writer lock, with its results and pending marks: atomic, and a
//! stored record never lacks its result or pending mark.
//!
//! redb takes an exclusive lock on the file and releases it when the
//! database is dropped (the file is closed), so a store reopened right
//! after its handle is dropped opens; a second open while one is live fails
//! at once with a clear error instead of waiting.
//!
//! [`commit`]: RedbStore::commit

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use conveyor_shared::{DeviceId, FinalPrediction, Record};
use prost::Message;
use redb::{
    AccessGuard, Database, Durability, ReadTransaction, ReadableDatabase, ReadableTable,
    TableDefinition, WriteTransaction,
};

use super::codec::{decode_record, decode_result, decode_stored, encode_record, key, split_key};
use super::{Appended, DeviceCounts, HubStore, StoreError, StoredRecord};

/// The database file inside the store directory.
pub const FILE_NAME: &str = "hub.redb";

/// The page cache: what the store may keep in memory (the sled store was
/// configured with the same).
const CACHE_BYTES: usize = 64 * 1024 * 1024;

type Bytes = &'static [u8];
const RECORDS: TableDefinition<Bytes, Bytes> = TableDefinition::new("records");
const RESULTS: TableDefinition<Bytes, Bytes> = TableDefinition::new("results");
const PENDING: TableDefinition<Bytes, ()> = TableDefinition::new("pending");
const COUNTS: TableDefinition<&str, (u64, u64)> = TableDefinition::new("counts");
const DEVICES: TableDefinition<&str, Bytes> = TableDefinition::new("devices");

fn engine(e: impl Into<redb::Error>) -> StoreError {
    StoreError::Engine(Box::new(e.into()))
}

pub struct RedbStore {
    db: Database,
    /// Non-durable transactions committed so far, and how many of them a
    /// durable commit is known to cover: `commit` skips the fsync when
    /// nothing was written since.
    written: AtomicU64,
    synced: AtomicU64,
}

impl RedbStore {
    /// Opens (or creates) the store in the directory `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let path = dir.display().to_string();
        let open_err = |source: redb::Error| StoreError::Open {
            path: path.clone(),
            source: Box::new(source),
        };
        std::fs::create_dir_all(dir).map_err(|e| open_err(redb::StorageError::Io(e).into()))?;
        super::legacy::refuse_old_store(dir)?;
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(dir.join(FILE_NAME))
            .map_err(|e| open_err(e.into()))?;
        // Create the tables, so readers never meet a missing one.
        let txn = db.begin_write().map_err(engine)?;
        txn.open_table(RECORDS).map_err(engine)?;
        txn.open_table(RESULTS).map_err(engine)?;
        txn.open_table(PENDING).map_err(engine)?;
        txn.open_table(COUNTS).map_err(engine)?;
        txn.open_table(DEVICES).map_err(engine)?;
        txn.commit().map_err(engine)?;
        Ok(RedbStore {
            db,
            written: AtomicU64::new(0),
            synced: AtomicU64::new(0),
        })
    }

    /// A write transaction that becomes durable with the next `commit`.
    fn write(&self) -> Result<WriteTransaction, StoreError> {
        let mut txn = self.db.begin_write().map_err(engine)?;
        txn.set_durability(Durability::None).map_err(engine)?;
        Ok(txn)
    }

    fn finish(&self, txn: WriteTransaction) -> Result<(), StoreError> {
        txn.commit().map_err(engine)?;
        self.written.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    fn read(&self) -> Result<ReadTransaction, StoreError> {
        self.db.begin_read().map_err(engine)
    }

    /// Up to `limit` of `device`'s records from seq `from`, or its last
    /// `limit` (`newest`), in sequence order, with their results.
    fn records_in(
        &self,
        device: &str,
        from: u64,
        limit: usize,
        newest: bool,
    ) -> Result<Vec<StoredRecord>, StoreError> {
        let read = self.read()?;
        let records = read.open_table(RECORDS).map_err(engine)?;
        let results = read.open_table(RESULTS).map_err(engine)?;
        let (lo, hi) = (key(device, from), key(device, u64::MAX));
        let range = records
            .range(lo.as_slice()..=hi.as_slice())
            .map_err(engine)?;
        let mut out = Vec::new();
        let mut push = |item: Item<'_>| -> Result<(), StoreError> {
            let (k, v) = item.map_err(engine)?;
            let mut r = decode_stored(k.value(), v.value())?;
            if r.prediction.is_some() {
                r.result = results
                    .get(k.value())
                    .map_err(engine)?
                    .map(|v| decode_result(k.value(), v.value()))
                    .transpose()?;
            }
            out.push(r);
            Ok(())
        };
        if newest {
            for item in range.rev().take(limit) {
                push(item)?;
            }
            out.reverse();
        } else {
            for item in range.take(limit) {
                push(item)?;
            }
        }
        Ok(out)
    }

    fn results_in(
        &self,
        device: &str,
        from: u64,
        limit: usize,
        newest: bool,
    ) -> Result<Vec<FinalPrediction>, StoreError> {
        let read = self.read()?;
        let results = read.open_table(RESULTS).map_err(engine)?;
        let (lo, hi) = (key(device, from), key(device, u64::MAX));
        let range = results
            .range(lo.as_slice()..=hi.as_slice())
            .map_err(engine)?;
        if newest {
            let mut out = range
                .rev()
                .take(limit)
                .map(decode_result_item)
                .collect::<Result<Vec<_>, _>>()?;
            out.reverse();
            Ok(out)
        } else {
            range.take(limit).map(decode_result_item).collect()
        }
    }
}

type Item<'a> = Result<(AccessGuard<'a, Bytes>, AccessGuard<'a, Bytes>), redb::StorageError>;

fn decode_result_item(item: Item<'_>) -> Result<FinalPrediction, StoreError> {
    let (k, v) = item.map_err(engine)?;
    decode_result(k.value(), v.value())
}

impl HubStore for RedbStore {
    fn append(
        &self,
        device: &DeviceId,
        records: &[Record],
        received_at_us: i64,
        on_new: &mut dyn FnMut(&Record),
    ) -> Result<Appended, StoreError> {
        let device = device.as_str();
        let mut out = Appended::default();
        // The duplicate check reads inside the write transaction, and redb
        // has one writer at a time: check-then-write is sound.
        let txn = self.write()?;
        {
            let mut table = txn.open_table(RECORDS).map_err(engine)?;
            let mut results = txn.open_table(RESULTS).map_err(engine)?;
            let mut pending = txn.open_table(PENDING).map_err(engine)?;
            let mut highest = None::<u64>;
            for r in records {
                let k = key(device, r.seq);
                if table.get(k.as_slice()).map_err(engine)?.is_some() {
                    out.duplicates += 1;
                    continue;
                }
                // The result or pending mark goes in the same transaction
                // as its record: a stored record always has one.
                if r.escalation.is_some() && r.prediction.is_some() {
                    pending.insert(k.as_slice(), ()).map_err(engine)?;
                    out.escalated.push(r.clone());
                } else if let Some(f) = FinalPrediction::by_edge(r, received_at_us) {
                    results
                        .insert(k.as_slice(), f.encode_to_vec().as_slice())
                        .map_err(engine)?;
                    out.edge_results.push(f);
                }
                table
                    .insert(k.as_slice(), encode_record(r, received_at_us).as_slice())
                    .map_err(engine)?;
                out.new += 1;
                highest = Some(highest.map_or(r.seq, |h| h.max(r.seq)));
                on_new(r);
            }
            if let Some(highest) = highest {
                let mut counts = txn.open_table(COUNTS).map_err(engine)?;
                let (n, h) = counts
                    .get(device)
                    .map_err(engine)?
                    .map(|v| v.value())
                    .unwrap_or((0, 0));
                counts
                    .insert(device, (n + out.new, h.max(highest)))
                    .map_err(engine)?;
            }
        }
        if out.new == 0 {
            // Nothing to write: leave no empty transaction behind.
            txn.abort().map_err(engine)?;
            return Ok(out);
        }
        self.finish(txn)?;
        Ok(out)
    }

    fn commit(&self) -> Result<(), StoreError> {
        let written = self.written.load(Ordering::SeqCst);
        if self.synced.load(Ordering::SeqCst) >= written {
            return Ok(());
        }
        // A durable commit makes every transaction before it durable.
        let txn = self.db.begin_write().map_err(engine)?;
        txn.commit().map_err(engine)?;
        self.synced.fetch_max(written, Ordering::SeqCst);
        Ok(())
    }

    fn record(&self, device: &str, seq: u64) -> Result<Option<Record>, StoreError> {
        let read = self.read()?;
        let table = read.open_table(RECORDS).map_err(engine)?;
        let k = key(device, seq);
        let Some(v) = table.get(k.as_slice()).map_err(engine)? else {
            return Ok(None);
        };
        Ok(Some(decode_record(&k, v.value())?.1))
    }

    fn records_from(
        &self,
        device: &str,
        from: u64,
        limit: usize,
    ) -> Result<Vec<StoredRecord>, StoreError> {
        self.records_in(device, from, limit, false)
    }

    fn latest_records(&self, device: &str, limit: usize) -> Result<Vec<StoredRecord>, StoreError> {
        self.records_in(device, 0, limit, true)
    }

    fn device_counts(&self) -> Result<DeviceCounts, StoreError> {
        let read = self.read()?;
        let counts = read.open_table(COUNTS).map_err(engine)?;
        let mut out = DeviceCounts::new();
        for item in counts.iter().map_err(engine)? {
            let (k, v) = item.map_err(engine)?;
            out.insert(k.value().to_string(), v.value());
        }
        Ok(out)
    }

    fn put_result(&self, device: &str, result: &FinalPrediction) -> Result<(), StoreError> {
        let k = key(device, result.seq);
        let txn = self.write()?;
        {
            let mut results = txn.open_table(RESULTS).map_err(engine)?;
            results
                .insert(k.as_slice(), result.encode_to_vec().as_slice())
                .map_err(engine)?;
            let mut pending = txn.open_table(PENDING).map_err(engine)?;
            pending.remove(k.as_slice()).map_err(engine)?;
        }
        self.finish(txn)
    }

    fn forget_pending(&self, device: &str, seq: u64) -> Result<(), StoreError> {
        let txn = self.write()?;
        {
            let mut pending = txn.open_table(PENDING).map_err(engine)?;
            pending
                .remove(key(device, seq).as_slice())
                .map_err(engine)?;
        }
        self.finish(txn)
    }

    fn pending(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let read = self.read()?;
        let pending = read.open_table(PENDING).map_err(engine)?;
        let mut out = Vec::new();
        for item in pending.iter().map_err(engine)? {
            let (k, _) = item.map_err(engine)?;
            if let Some(parts) = split_key(k.value()) {
                out.push(parts);
            }
        }
        Ok(out)
    }

    fn result(&self, device: &str, seq: u64) -> Result<Option<FinalPrediction>, StoreError> {
        let read = self.read()?;
        let results = read.open_table(RESULTS).map_err(engine)?;
        let k = key(device, seq);
        let v = results.get(k.as_slice()).map_err(engine)?;
        v.map(|v| decode_result(&k, v.value())).transpose()
    }

    fn results_from(
        &self,
        device: &str,
        from: u64,
        limit: usize,
    ) -> Result<Vec<FinalPrediction>, StoreError> {
        self.results_in(device, from, limit, false)
    }

    fn latest_results(
        &self,
        device: &str,
        limit: usize,
    ) -> Result<Vec<FinalPrediction>, StoreError> {
        self.results_in(device, 0, limit, true)
    }

    fn put_device(&self, device: &str, json: &[u8]) -> Result<(), StoreError> {
        let txn = self.write()?;
        {
            let mut devices = txn.open_table(DEVICES).map_err(engine)?;
            devices.insert(device, json).map_err(engine)?;
        }
        self.finish(txn)
    }

    fn devices(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let read = self.read()?;
        let devices = read.open_table(DEVICES).map_err(engine)?;
        let mut out = Vec::new();
        for item in devices.iter().map_err(engine)? {
            let (k, v) = item.map_err(engine)?;
            out.push((k.value().to_string(), v.value().to_vec()));
        }
        Ok(out)
    }
}
