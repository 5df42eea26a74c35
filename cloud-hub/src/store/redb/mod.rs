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
//! **Faults.** redb latches an I/O failure: after one failed write or
//! commit, every later operation fails (`PreviousIo`) until the database
//! is dropped and opened again. So a failure in the storage (a full disk,
//! an I/O error, a read-only remount) marks the store unhealthy
//! ([`health`](super::health)) and the next [`commit`] reopens the
//! database, with backoff. The handle sits in an `RwLock<Option<_>>`:
//! every operation holds the read side for its duration and the reopen
//! takes the write side, so the old handle is dropped (its file lock
//! released) only when nothing uses it. An operation that finds the handle
//! being reopened, or closed because the reopen failed, fails at once with
//! [`StoreError::Unavailable`]. A reopen rolls back to the last durable
//! commit, discarding the `Durability::None` transactions since; ingest
//! acknowledges only what a durable commit covered in the same generation
//! ([`HubStore::generation`]), so nothing acknowledged is lost. The store is
//! healthy again after the first durable commit of new writes on the
//! reopened handle.
//!
//! **Damage.** The file is opened with redb's integrity check (unless
//! `store.check_on_open = false`), so a file damaged outside redb is
//! refused with [`StoreError::Damaged`] instead of being trusted (where a
//! plain open may panic); the open also runs under `catch_unwind` as a
//! backstop. [`check`] is `cloud-hub store check`.
//!
//! [`commit`]: RedbStore::commit

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, RwLock, TryLockError};
use std::time::Instant;

use conveyor_process::LogEvery;
use conveyor_shared::time::now_us;
use conveyor_shared::{DeviceId, FinalPrediction, Record};
use prost::Message;
use redb::{
    AccessGuard, Database, Durability, ReadTransaction, ReadableDatabase, ReadableTable,
    StorageError, TableDefinition, WriteTransaction,
};

use super::codec::{decode_record, decode_result, decode_stored, encode_record, key, split_key};
use super::health::HealthState;
use super::{
    Appended, DeviceCounts, HubStore, StoreError, StoreHealth, StoreOptions, StoredRecord,
};

mod open;

pub use open::{check, Checked};
use open::{engine, open_db};

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

pub struct RedbStore {
    dir: PathBuf,
    /// `dir`, for messages.
    path: String,
    options: StoreOptions,
    /// `None` while a reopen after a fault has failed.
    db: RwLock<Option<Database>>,
    /// Non-durable transactions committed so far, and how many of them a
    /// durable commit is known to cover: `commit` skips the fsync when
    /// nothing was written since.
    written: AtomicU64,
    synced: AtomicU64,
    /// Handles dropped to recover from a fault ([`HubStore::generation`]).
    generation: AtomicU64,
    /// `!health.healthy()`, readable without the lock.
    faulted: AtomicBool,
    health: Mutex<HealthState>,
}

impl RedbStore {
    /// Opens (or creates) the store in the directory `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::open_with(dir, &StoreOptions::default())
    }

    /// [`open`](Self::open) with options.
    pub fn open_with(dir: &Path, options: &StoreOptions) -> Result<Self, StoreError> {
        let path = dir.display().to_string();
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Open {
            path: path.clone(),
            source: Box::new(e),
        })?;
        super::legacy::refuse_old_store(dir)?;
        let db = open_db(dir, true, options.check_on_open)?;
        Ok(RedbStore {
            dir: dir.to_path_buf(),
            path,
            options: options.clone(),
            db: RwLock::new(Some(db)),
            written: AtomicU64::new(0),
            synced: AtomicU64::new(0),
            generation: AtomicU64::new(0),
            faulted: AtomicBool::new(false),
            health: Mutex::new(HealthState::default()),
        })
    }

    fn health_state(&self) -> MutexGuard<'_, HealthState> {
        // Plain data, consistent after every method: usable after a panic.
        self.health.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn unavailable(&self, reason: String) -> StoreError {
        StoreError::Unavailable {
            path: self.path.clone(),
            reason,
        }
    }

    /// Runs `f` on the open handle (`write`: it writes); a storage failure
    /// marks a fault. Fails at once while the handle is being reopened or
    /// is closed.
    fn with_db<T>(
        &self,
        write: bool,
        f: impl FnOnce(&Database) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let guard = match self.db.try_read() {
            Ok(g) => g,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => {
                return Err(self.unavailable("it is being reopened after a storage failure".into()))
            }
        };
        let Some(db) = guard.as_ref() else {
            let error = self.health_state().report(None).error;
            return Err(self.unavailable(match error {
                Some(e) => format!("it could not be reopened: {e}"),
                None => "it is closed".into(),
            }));
        };
        let result = f(db);
        drop(guard);
        if let Err(StoreError::Io(e)) = &result {
            self.fault(&e.to_string(), write);
        }
        result
    }

    fn fault(&self, error: &str, write: bool) {
        let f = self.health_state().failed(error, write, now_us());
        self.faulted.store(true, Ordering::SeqCst);
        let every = LogEvery::FIRST_10_THEN_EVERY_1000;
        if f.new_fault {
            if every.should_log(f.faults) {
                tracing::error!(
                    store = %self.path,
                    faults = f.faults,
                    "the store cannot write: {error}. Records are not acknowledged \
                     until it can (the agents keep them); the store reopens itself to \
                     recover once the storage takes writes again"
                );
            }
        } else if write && every.should_log(f.write_failures) {
            tracing::warn!(
                store = %self.path,
                write_failures = f.write_failures,
                "the store still cannot write: {error}"
            );
        }
    }

    /// Reopens the database if a fault left it failed or closed and the
    /// backoff allows. Blocks (a reopen may read the whole file): called by
    /// `commit`, which callers run off the async threads.
    fn recover_if_due(&self) {
        if !self.faulted.load(Ordering::SeqCst) || !self.health_state().reopen_due(now_us()) {
            return;
        }
        // Waits for the operations in flight; new ones fail as unavailable.
        let mut db = self.db.write().unwrap_or_else(|p| p.into_inner());
        if !self.health_state().reopen_due(now_us()) {
            return; // another thread reopened it meanwhile
        }
        // Dropping the handle closes the file and releases its lock. What
        // was not durable goes with it: a new generation.
        drop(db.take());
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.synced
            .store(self.written.load(Ordering::SeqCst), Ordering::SeqCst);
        let started = Instant::now();
        // The file must still be there: a store whose file went away is
        // unavailable, not silently replaced by an empty one.
        let reopened = open_db(&self.dir, false, self.options.check_on_open);
        let took_ms = started.elapsed().as_millis() as u64;
        let mut health = self.health_state();
        match reopened {
            Ok(handle) => {
                *db = Some(handle);
                health.reopened(now_us());
                let recoveries = health.report(None).recoveries;
                drop(health);
                if LogEvery::FIRST_10_THEN_EVERY_1000.should_log(recoveries) {
                    tracing::info!(
                        store = %self.path,
                        took_ms,
                        recoveries,
                        "store reopened after a storage failure; healthy again once a \
                         write is durable"
                    );
                }
            }
            Err(e) => {
                health.reopen_failed(&e.to_string(), now_us());
                drop(health);
                tracing::warn!(store = %self.path, took_ms, "cannot reopen the store yet: {e}");
            }
        }
    }

    /// A write transaction that becomes durable with the next `commit`.
    fn write(db: &Database) -> Result<WriteTransaction, StoreError> {
        let mut txn = db.begin_write().map_err(engine)?;
        txn.set_durability(Durability::None).map_err(engine)?;
        Ok(txn)
    }

    fn finish(&self, txn: WriteTransaction) -> Result<(), StoreError> {
        txn.commit().map_err(engine)?;
        self.written.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    fn read(db: &Database) -> Result<ReadTransaction, StoreError> {
        db.begin_read().map_err(engine)
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
        self.with_db(false, |db| {
            let read = Self::read(db)?;
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
        })
    }

    fn results_in(
        &self,
        device: &str,
        from: u64,
        limit: usize,
        newest: bool,
    ) -> Result<Vec<FinalPrediction>, StoreError> {
        self.with_db(false, |db| {
            let read = Self::read(db)?;
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
        })
    }
}

type Item<'a> = Result<(AccessGuard<'a, Bytes>, AccessGuard<'a, Bytes>), StorageError>;

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
        self.with_db(true, |db| {
            let mut out = Appended::default();
            // The duplicate check reads inside the write transaction, and
            // redb has one writer at a time: check-then-write is sound.
            let txn = Self::write(db)?;
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
                    // The result or pending mark goes in the same
                    // transaction as its record: a stored record always has
                    // one.
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
        })
    }

    fn commit(&self) -> Result<(), StoreError> {
        self.recover_if_due();
        let written = self.written.load(Ordering::SeqCst);
        if self.synced.load(Ordering::SeqCst) >= written {
            return Ok(());
        }
        // A durable commit makes every transaction before it durable.
        self.with_db(true, |db| {
            let txn = db.begin_write().map_err(engine)?;
            txn.commit().map_err(engine)
        })?;
        self.synced.fetch_max(written, Ordering::SeqCst);
        if self.faulted.load(Ordering::SeqCst) {
            let recovered = self.health_state().durable(now_us());
            if let Some(since_us) = recovered {
                self.faulted.store(false, Ordering::SeqCst);
                tracing::info!(
                    store = %self.path,
                    unhealthy_secs = (now_us() - since_us) / 1_000_000,
                    "the store writes again: healthy"
                );
            }
        }
        Ok(())
    }

    fn record(&self, device: &str, seq: u64) -> Result<Option<Record>, StoreError> {
        self.with_db(false, |db| {
            let read = Self::read(db)?;
            let table = read.open_table(RECORDS).map_err(engine)?;
            let k = key(device, seq);
            let Some(v) = table.get(k.as_slice()).map_err(engine)? else {
                return Ok(None);
            };
            Ok(Some(decode_record(&k, v.value())?.1))
        })
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
        self.with_db(false, |db| {
            let read = Self::read(db)?;
            let counts = read.open_table(COUNTS).map_err(engine)?;
            let mut out = DeviceCounts::new();
            for item in counts.iter().map_err(engine)? {
                let (k, v) = item.map_err(engine)?;
                out.insert(k.value().to_string(), v.value());
            }
            Ok(out)
        })
    }

    fn put_result(&self, device: &str, result: &FinalPrediction) -> Result<(), StoreError> {
        let k = key(device, result.seq);
        self.with_db(true, |db| {
            let txn = Self::write(db)?;
            {
                let mut results = txn.open_table(RESULTS).map_err(engine)?;
                results
                    .insert(k.as_slice(), result.encode_to_vec().as_slice())
                    .map_err(engine)?;
                let mut pending = txn.open_table(PENDING).map_err(engine)?;
                pending.remove(k.as_slice()).map_err(engine)?;
            }
            self.finish(txn)
        })
    }

    fn forget_pending(&self, device: &str, seq: u64) -> Result<(), StoreError> {
        self.with_db(true, |db| {
            let txn = Self::write(db)?;
            {
                let mut pending = txn.open_table(PENDING).map_err(engine)?;
                pending
                    .remove(key(device, seq).as_slice())
                    .map_err(engine)?;
            }
            self.finish(txn)
        })
    }

    fn pending(&self) -> Result<Vec<(String, u64)>, StoreError> {
        self.with_db(false, |db| {
            let read = Self::read(db)?;
            let pending = read.open_table(PENDING).map_err(engine)?;
            let mut out = Vec::new();
            for item in pending.iter().map_err(engine)? {
                let (k, _) = item.map_err(engine)?;
                if let Some(parts) = split_key(k.value()) {
                    out.push(parts);
                }
            }
            Ok(out)
        })
    }

    fn result(&self, device: &str, seq: u64) -> Result<Option<FinalPrediction>, StoreError> {
        self.with_db(false, |db| {
            let read = Self::read(db)?;
            let results = read.open_table(RESULTS).map_err(engine)?;
            let k = key(device, seq);
            let v = results.get(k.as_slice()).map_err(engine)?;
            v.map(|v| decode_result(&k, v.value())).transpose()
        })
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
        self.with_db(true, |db| {
            let txn = Self::write(db)?;
            {
                let mut devices = txn.open_table(DEVICES).map_err(engine)?;
                devices.insert(device, json).map_err(engine)?;
            }
            self.finish(txn)
        })
    }

    fn devices(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.with_db(false, |db| {
            let read = Self::read(db)?;
            let devices = read.open_table(DEVICES).map_err(engine)?;
            let mut out = Vec::new();
            for item in devices.iter().map_err(engine)? {
                let (k, v) = item.map_err(engine)?;
                out.push((k.value().to_string(), v.value().to_vec()));
            }
            Ok(out)
        })
    }

    fn health(&self) -> StoreHealth {
        let free = conveyor_process::disk::free_bytes(&self.dir);
        self.health_state().report(free)
    }

    fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }
}
