//! The durable local log: every record the agent accepts is here until the
//! hub acknowledges that it stored it.
//!
//! Records are keyed by seq, so the log is also the sequence allocator: the
//! next seq is one past the highest ever appended, persisted with every
//! append, and seqs are reserved ahead in a file apart from the log
//! ([`seq_file`]), so they keep growing across restarts, a drained log and
//! the loss of the log itself. [`DurableLog::append`] writes a whole chunk
//! in one transaction and makes it durable with one fsync: durability costs
//! one fsync per chunk, not per record.
//!
//! The log is bounded by bytes (and optionally by age). Over the bound,
//! `drop_oldest` deletes the oldest records and counts them; `block` makes
//! the agent stop taking readings until acknowledgements free space. Every
//! drop is counted, persisted and reported in heartbeats.
//!
//! Storage faults do not stop the agent ([`fault`]): a full disk is one
//! more bound, found by hitting it and lifted when space returns; a log
//! that cannot be written holds readings back or drops them (counted); a
//! corrupt file is moved aside, salvaged into a new log ([`salvage`]) and
//! what could not be read is counted as lost. So apart from opening (a log
//! another agent holds), no method here fails: each reports what it could
//! do, and [`DurableLog::health`] says what is wrong.
//!
//! The storage engine is redb, kept behind this small interface. (It was
//! sled 0.34 first: with a 4 MB cache configured, sled's resident memory
//! reached 2.4 GB while holding a backlog of one million records, 357 MB on
//! disk; see ARCHITECTURE.md.)

mod config;
pub mod fault;
pub mod reserve;
pub mod salvage;
pub mod seq_file;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use conveyor_process::LogEvery;
use conveyor_shared::Record;
use prost::Message;
use redb::{Database, DatabaseError, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use thiserror::Error;

pub use config::{FullPolicy, LogConfig};
use fault::{DiskBound, Fault, Retry};
use reserve::Reserve;
use seq_file::{Loaded, SeqFile};

/// The file inside the log directory.
pub const FILE_NAME: &str = "log.redb";

#[derive(Debug, Error)]
pub enum LogError {
    #[error(
        "local log at {path} is in use by another process (another agent with the same \
         data_dir?); stop it or give this agent its own data_dir"
    )]
    InUse { path: String },
    #[error("local log at {path} was written by an incompatible version: {why}")]
    Incompatible { path: String, why: String },
}

/// Counters of the log, reported in heartbeats.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogStats {
    /// Records held (not yet acknowledged by the hub).
    pub records: u64,
    /// Their encoded size.
    pub bytes: u64,
    /// Records dropped because the log was full (drop_oldest): over
    /// `max_bytes`, or its disk full.
    pub dropped_full: u64,
    /// Records dropped because they were older than max_age_secs.
    pub dropped_age: u64,
    /// Readings dropped because the log could not be written at all
    /// (drop_oldest; a read-only or failing disk).
    pub dropped_unwritable: u64,
    /// Records lost with a corrupt log file (what it held and could not be
    /// read back).
    pub lost_corrupt: u64,
}

/// What is wrong with the log's storage now, for heartbeats.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogHealth {
    /// The disk is full: the log is held below what fitted.
    pub disk_full: bool,
    /// The fault in force, if any (`disk full`, `cannot write: ...`).
    pub fault: Option<String>,
    /// Free bytes on the log's filesystem (checked about once a second).
    pub free_bytes: Option<u64>,
    /// Storage faults met since the agent started.
    pub faults: u64,
}

const RECORDS: TableDefinition<u64, &[u8]> = TableDefinition::new("records");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const NEXT_SEQ: &str = "next_seq";
const DROPPED_FULL: &str = "dropped_full";
const DROPPED_AGE: &str = "dropped_age";
const DROPPED_UNWRITABLE: &str = "dropped_unwritable";
const LOST_CORRUPT: &str = "lost_corrupt";
/// Per-record overhead counted against `max_bytes` (the key).
const KEY_BYTES: u64 = 8;
/// Attempts to store one chunk (each after a fault and a reopen).
const ATTEMPTS: usize = 3;
/// How often free space is asked for.
const FREE_EVERY: Duration = Duration::from_secs(1);

fn record_bytes(value_len: usize) -> u64 {
    KEY_BYTES + value_len as u64
}

/// What opening the database file found.
enum Opened {
    Ok(Database),
    Fault(Fault),
    InUse,
    Incompatible(String),
}

fn open_file(path: &Path, cache_bytes: u64) -> Opened {
    // Checked on open: a file damaged outside redb (a failing SD card) is
    // reported as corrupt instead of being trusted, where a plain open may
    // panic on the first damaged page.
    let opened = salvage::guarded(|| {
        Database::builder()
            .set_cache_size(cache_bytes as usize)
            .set_check_integrity_on_open(true)
            .create(path)
    });
    match opened {
        Err(panic) => Opened::Fault(Fault::Corrupt(format!(
            "the storage engine stopped on it: {panic}"
        ))),
        Ok(Ok(db)) => Opened::Ok(db),
        Ok(Err(DatabaseError::DatabaseAlreadyOpen)) => Opened::InUse,
        Ok(Err(DatabaseError::UpgradeRequired(v))) => {
            Opened::Incompatible(format!("file format {v} needs an upgrade"))
        }
        Ok(Err(DatabaseError::Storage(e))) => Opened::Fault(Fault::of(&e.into())),
        Ok(Err(e)) => Opened::Fault(Fault::Unwritable(e.to_string())),
    }
}

/// What the log's tables say, read once after opening.
struct Durable {
    records: u64,
    bytes: u64,
    next_seq: u64,
    dropped_full: u64,
    dropped_age: u64,
    dropped_unwritable: u64,
    lost_corrupt: u64,
}

fn read_durable(db: &Database) -> Result<Durable, redb::Error> {
    // Create the tables, so readers never meet a missing one.
    let txn = db.begin_write()?;
    txn.open_table(RECORDS)?;
    txn.open_table(META)?;
    txn.commit()?;
    let read = db.begin_read()?;
    let records = read.open_table(RECORDS)?;
    let meta = read.open_table(META)?;
    let get =
        |k: &str| -> Result<u64, redb::Error> { Ok(meta.get(k)?.map(|v| v.value()).unwrap_or(0)) };
    let mut d = Durable {
        records: 0,
        bytes: 0,
        next_seq: 0,
        dropped_full: get(DROPPED_FULL)?,
        dropped_age: get(DROPPED_AGE)?,
        dropped_unwritable: get(DROPPED_UNWRITABLE)?,
        lost_corrupt: get(LOST_CORRUPT)?,
    };
    for item in records.iter()? {
        let (_, v) = item?;
        d.records += 1;
        d.bytes += record_bytes(v.value().len());
    }
    let last = records.last()?.map(|(k, _)| k.value() + 1).unwrap_or(0);
    d.next_seq = get(NEXT_SEQ)?.max(last);
    Ok(d)
}

pub struct DurableLog {
    dir: PathBuf,
    config: LogConfig,
    /// `None` while the file cannot be opened (a read-only mount).
    db: Option<Database>,
    next_seq: u64,
    stats: LogStats,
    seqs: SeqFile,
    /// Whether the seq file had a snapshot of what the log held (it has
    /// none before the first heartbeat of an agent with this version).
    held_known: bool,
    /// Disk held back for the log's own removals on a full disk.
    reserve: Reserve,
    disk: DiskBound,
    fault: Option<Fault>,
    faults: u64,
    reopen: Retry,
    free_bytes: Option<u64>,
    free_checked: Option<Instant>,
}

impl DurableLog {
    /// Opens (or creates) the log in `dir`, resuming where it was. A file
    /// that cannot be opened is reported in [`health`](Self::health), not
    /// as an error: the agent runs on and the log retries. Fails only when
    /// another process holds the log, or for a file of another format.
    pub fn open(dir: &Path, config: LogConfig) -> Result<Self, LogError> {
        let (seqs, loaded) = SeqFile::load(dir);
        let held_known = matches!(loaded, Loaded::Found(_));
        if let Loaded::Unreadable(why) = &loaded {
            tracing::warn!("{why}: the log's own next seq is used");
        }
        let mut log = DurableLog {
            dir: dir.to_path_buf(),
            config,
            db: None,
            next_seq: 0,
            stats: LogStats::default(),
            seqs,
            held_known,
            reserve: Reserve::new(dir),
            disk: DiskBound::default(),
            fault: None,
            faults: 0,
            reopen: Retry::default(),
            free_bytes: None,
            free_checked: None,
        };
        log.open_db(true)?;
        if log.db.is_some() {
            log.hold_reserve();
        }
        Ok(log)
    }

    fn file(&self) -> PathBuf {
        self.dir.join(FILE_NAME)
    }

    /// Opens the file and loads its state; `starting`: at agent start
    /// (nothing of it is in memory yet).
    fn open_db(&mut self, starting: bool) -> Result<(), LogError> {
        if let Err(e) = std::fs::create_dir_all(&self.dir) {
            self.note_fault(Fault::of_io(&e));
            return Ok(());
        }
        let path = self.file();
        let existed = path.exists();
        let db = match open_file(&path, self.config.cache_bytes) {
            Opened::Ok(db) => db,
            Opened::InUse => {
                return Err(LogError::InUse {
                    path: path.display().to_string(),
                })
            }
            Opened::Incompatible(why) => {
                return Err(LogError::Incompatible {
                    path: path.display().to_string(),
                    why,
                })
            }
            Opened::Fault(Fault::Corrupt(why)) => {
                self.replace_corrupt(&why, starting);
                return Ok(());
            }
            Opened::Fault(f) => {
                self.note_fault(f);
                return Ok(());
            }
        };
        let durable = match salvage::guarded(|| read_durable(&db)) {
            Ok(Ok(d)) => d,
            Ok(Err(e)) => {
                drop(db);
                match Fault::of(&e) {
                    Fault::Corrupt(why) => self.replace_corrupt(&why, starting),
                    f => self.note_fault(f),
                }
                return Ok(());
            }
            Err(panic) => {
                drop(db);
                self.replace_corrupt(&panic, starting);
                return Ok(());
            }
        };
        // Counters only grow; in memory they may be ahead of the file
        // (readings dropped while it could not be written).
        let s = &mut self.stats;
        s.records = durable.records;
        s.bytes = durable.bytes;
        s.dropped_full = s.dropped_full.max(durable.dropped_full);
        s.dropped_age = s.dropped_age.max(durable.dropped_age);
        s.dropped_unwritable = s.dropped_unwritable.max(durable.dropped_unwritable);
        s.lost_corrupt = s.lost_corrupt.max(durable.lost_corrupt);
        self.next_seq = if existed {
            durable.next_seq
        } else {
            // A new file where there was none (first start, or the log
            // was deleted): never below a seq used before.
            durable.next_seq.max(self.seqs.state().reserved)
        };
        if existed && starting && self.next_seq > self.seqs.state().reserved {
            // A log from before the seq file; reserved with the next append.
            tracing::debug!(next_seq = self.next_seq, "seq file behind the log");
        }
        self.db = Some(db);
        Ok(())
    }

    /// Moves a corrupt file aside, starts a new one and salvages into it
    /// what can be read. `starting`: the count of what the old file held
    /// comes from the seq file's snapshot, not from memory.
    fn replace_corrupt(&mut self, why: &str, starting: bool) {
        self.faults += 1;
        self.db = None;
        let path = self.file();
        let held = if starting {
            self.seqs.state().held
        } else {
            self.stats.records
        };
        let aside = match salvage::move_aside(&path) {
            Ok(aside) => aside,
            Err(e) => {
                tracing::error!(
                    path = %path.display(),
                    "local log is corrupt ({why}) and cannot be moved aside: {e}"
                );
                self.note_fault(Fault::of_io(&e));
                return;
            }
        };
        tracing::error!(
            path = %path.display(),
            moved_to = %aside.display(),
            "local log is corrupt ({why}); moved it aside (kept, not deleted) and starting a new log"
        );
        // Seqs continue past everything the old log may have used.
        let floor = self.next_seq.max(self.seqs.state().reserved);
        self.stats.records = 0;
        self.stats.bytes = 0;
        match open_file(&path, self.config.cache_bytes) {
            Opened::Ok(db) => match read_durable(&db) {
                Ok(_) => self.db = Some(db),
                Err(e) => {
                    self.note_fault(Fault::of(&e));
                    return;
                }
            },
            Opened::Fault(f) => {
                self.note_fault(f);
                return;
            }
            Opened::InUse | Opened::Incompatible(_) => {
                self.note_fault(Fault::Unwritable("cannot create a new log".into()));
                return;
            }
        }
        self.next_seq = floor;
        let mut salvaged = 0u64;
        let mut highest = None::<u64>;
        let stopped = salvage::salvage(&aside, floor, &mut |chunk| {
            if chunk.is_empty() {
                return;
            }
            highest = chunk.last().map(|r| r.seq).max(highest);
            salvaged += chunk.len() as u64;
            if let Err(e) = self.put_salvaged(&chunk) {
                tracing::error!("cannot store salvaged records in the new log: {e}");
            }
        });
        if let Some(h) = highest {
            self.next_seq = self.next_seq.max(h + 1);
        }
        let lost = held.saturating_sub(salvaged);
        self.stats.lost_corrupt += lost;
        if starting && !self.held_known {
            tracing::warn!(
                "how many records the corrupt log held is unknown (no snapshot of it in {}): \
                 the loss is not counted",
                self.seqs.path().display()
            );
        }
        tracing::warn!(
            salvaged,
            lost,
            next_seq = self.next_seq,
            stopped = stopped.as_deref().unwrap_or("no: read to the end"),
            "salvaged what the corrupt log still held; what it held beyond that is counted as lost"
        );
        match self.write_meta() {
            Ok(()) => self.fault = None,
            Err(e) => self.on_error(e),
        }
    }

    /// Stores salvaged records under their own seqs (durable).
    fn put_salvaged(&mut self, records: &[Record]) -> Result<(), redb::Error> {
        let db = self.db.as_ref().ok_or(redb::Error::DatabaseClosed)?;
        let txn = db.begin_write()?;
        let mut bytes = 0;
        {
            let mut table = txn.open_table(RECORDS)?;
            for r in records {
                let value = r.encode_to_vec();
                bytes += record_bytes(value.len());
                table.insert(r.seq, value.as_slice())?;
            }
        }
        txn.commit()?;
        self.stats.records += records.len() as u64;
        self.stats.bytes += bytes;
        Ok(())
    }

    /// Persists the seq and the counters (durable).
    fn write_meta(&mut self) -> Result<(), redb::Error> {
        self.seqs.reserve(self.next_seq)?;
        let db = self.db.as_ref().ok_or(redb::Error::DatabaseClosed)?;
        let txn = db.begin_write()?;
        {
            let mut meta = txn.open_table(META)?;
            meta.insert(NEXT_SEQ, self.next_seq)?;
            meta.insert(DROPPED_FULL, self.stats.dropped_full)?;
            meta.insert(DROPPED_AGE, self.stats.dropped_age)?;
            meta.insert(DROPPED_UNWRITABLE, self.stats.dropped_unwritable)?;
            meta.insert(LOST_CORRUPT, self.stats.lost_corrupt)?;
        }
        Ok(txn.commit()?)
    }

    /// Records a fault that leaves the file unusable for now.
    fn note_fault(&mut self, fault: Fault) {
        self.faults += 1;
        if self.fault.as_ref() != Some(&fault) {
            tracing::error!(
                path = %self.file().display(),
                "local log: {}; the agent keeps running and retries",
                fault.describe()
            );
        }
        self.fault = Some(fault);
    }

    /// Handles an error from the engine: every fault ends with the file
    /// reopened (redb latches an I/O failure), which rolls back to the
    /// last durable commit.
    fn on_error(&mut self, e: redb::Error) {
        let fault = Fault::of(&e);
        self.faults += 1;
        let n = self.faults;
        if self.fault.as_ref() != Some(&fault) || LogEvery::FIRST_10_THEN_EVERY_1000.should_log(n) {
            tracing::error!(
                path = %self.file().display(),
                faults = n,
                "local log: {} ({e}); the agent keeps running",
                fault.describe()
            );
        }
        self.db = None;
        match fault {
            Fault::Corrupt(why) => {
                self.replace_corrupt(&why, false);
                return;
            }
            Fault::DiskFull => {
                self.fault = Some(Fault::DiskFull);
                if self.reserve.release() {
                    tracing::warn!(
                        "the log's disk is full: released the {} KiB held back for it, so that \
                         acknowledgements can make room",
                        reserve::BYTES >> 10
                    );
                }
                // Not an error: the same file reopens or fails again.
                let _ = self.open_db(false);
                // What fits is what was durable when the disk filled.
                self.disk.filled(self.stats.bytes, Instant::now());
                self.free_checked = None;
                return;
            }
            Fault::Unwritable(_) => {}
        }
        self.fault = Some(fault);
        let _ = self.open_db(false);
    }

    /// Takes the disk reserve back, if there is room for it.
    fn hold_reserve(&mut self) {
        if let Err(e) = self.reserve.hold() {
            tracing::debug!("cannot hold the log's disk reserve yet: {e}");
        }
    }

    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    pub fn stats(&self) -> LogStats {
        self.stats
    }

    pub fn health(&self) -> LogHealth {
        LogHealth {
            disk_full: self.disk.is_full(),
            fault: self.fault.as_ref().map(Fault::describe),
            free_bytes: self.free_bytes,
            faults: self.faults,
        }
    }

    /// The byte bound in force (`max_bytes`, or lower on a full disk).
    pub fn bound(&self) -> u64 {
        self.disk.bound(self.config.max_bytes)
    }

    /// True when the `block` policy should hold the sources back: the log
    /// is at its bound, or cannot be written.
    pub fn blocks(&self) -> bool {
        self.config.full_policy == FullPolicy::Block
            && (self.db.is_none() || !self.may_store(Instant::now()))
    }

    /// Whether the log is below its bound (or, empty on a full disk, due
    /// for another try).
    fn may_store(&self, now: Instant) -> bool {
        if self.disk.is_full() {
            self.disk.may_store(
                self.stats.records,
                self.stats.bytes,
                self.config.max_bytes,
                now,
            )
        } else {
            self.stats.bytes < self.config.max_bytes
        }
    }

    /// Periodic care, on the uplink's tick: retries a log that could not
    /// be opened, and lifts the full-disk bound once space returned.
    pub fn maintain(&mut self, now: Instant) {
        if self.db.is_none() && self.reopen.due(now) {
            let _ = self.open_db(false);
            if self.db.is_some() {
                tracing::info!(path = %self.file().display(), "local log is writable again");
                self.fault = None;
            }
        }
        if self
            .free_checked
            .is_none_or(|t| now.duration_since(t) >= FREE_EVERY)
        {
            self.free_checked = Some(now);
            self.free_bytes = conveyor_process::disk::free_bytes(&self.dir);
            if self.disk.free_space(self.free_bytes) {
                tracing::info!(
                    free_bytes = self.free_bytes.unwrap_or(0),
                    "the log's disk has room again; back to max_bytes"
                );
                if self.fault == Some(Fault::DiskFull) {
                    self.fault = None;
                }
                self.hold_reserve();
            } else if !self.disk.is_full()
                && self.db.is_some()
                && self
                    .free_bytes
                    .is_some_and(|f| f >= fault::SPACE_RETURNED_BYTES)
                && !self.reserve.is_held()
            {
                // Started on a disk too full to hold it.
                self.hold_reserve();
            }
        }
    }

    /// Notes how many records the log holds, apart from it (see
    /// [`seq_file`]): what is counted as lost if the file turns out
    /// unreadable at the next start. Best effort.
    pub fn snapshot(&mut self) {
        if let Err(e) = self.seqs.snapshot(self.stats.records) {
            tracing::debug!(path = %self.seqs.path().display(), "cannot note the log's size: {e}");
        }
    }

    /// Appends `pending` durably (one fsync), assigning seqs (any `seq`
    /// the records carry is overwritten), and applies `drop_oldest` if
    /// that goes over the bound. Returns how many were stored; they are
    /// taken out of `pending`. What is left is held back (`block`, the log
    /// full or unwritable): offer it again when [`blocks`](Self::blocks)
    /// turns false. Under `drop_oldest` nothing is left: what cannot be
    /// stored is dropped and counted.
    pub fn append(&mut self, pending: &mut Vec<Record>) -> u64 {
        if pending.is_empty() {
            return 0;
        }
        if self.db.is_none() && self.reopen.due(Instant::now()) {
            let _ = self.open_db(false);
        }
        // An empty log on a full disk tries on a clock, not on every chunk
        // (under drop_oldest what arrives meanwhile is dropped, counted);
        // one holding records makes room by dropping the oldest first.
        let due = !self.disk.is_full() || self.stats.records > 0 || self.may_store(Instant::now());
        for _ in 0..if due { ATTEMPTS } else { 0 } {
            if self.db.is_none() {
                break;
            }
            if self.disk.is_full() && self.config.full_policy == FullPolicy::DropOldest {
                let incoming: u64 = pending.iter().map(|r| record_bytes(r.encoded_len())).sum();
                if let Err(e) = self.make_room(incoming) {
                    self.on_error(e);
                    continue;
                }
            }
            let (before, n) = (self.next_seq, pending.len() as u64);
            match self.try_append(pending) {
                Ok(n) => {
                    if self.fault.is_some() && !self.disk.is_full() {
                        self.fault = None;
                    }
                    return n;
                }
                Err(e) => {
                    self.on_error(e);
                    // The chunk is one transaction: after the reopen it is
                    // either all there (its write made it to the file before
                    // the failure) or not at all. Offered again, it would be
                    // stored twice under new seqs.
                    if self.db.is_some() && self.next_seq >= before + n {
                        self.flush();
                        pending.clear();
                        return n;
                    }
                }
            }
        }
        if self.config.full_policy == FullPolicy::Block {
            return 0;
        }
        let n = pending.len() as u64;
        pending.clear();
        if self.disk.is_full() {
            self.stats.dropped_full += n;
        } else {
            self.stats.dropped_unwritable += n;
        }
        0
    }

    /// On a full disk: deletes the oldest records (durably, so their
    /// pages can be reused) until `incoming` bytes fit under the bound.
    fn make_room(&mut self, incoming: u64) -> Result<(), redb::Error> {
        let bound = self.bound();
        if self.stats.bytes + incoming <= bound || self.stats.records == 0 {
            return Ok(());
        }
        let db = self.db.as_ref().ok_or(redb::Error::DatabaseClosed)?;
        let txn = db.begin_write()?;
        let (mut records, mut bytes, mut dropped) = (self.stats.records, self.stats.bytes, 0);
        {
            let mut table = txn.open_table(RECORDS)?;
            while bytes + incoming > bound {
                let Some((_, v)) = table.pop_first()? else {
                    break;
                };
                bytes = bytes.saturating_sub(record_bytes(v.value().len()));
                records = records.saturating_sub(1);
                dropped += 1;
            }
            txn.open_table(META)?
                .insert(DROPPED_FULL, self.stats.dropped_full + dropped)?;
        }
        txn.commit()?;
        self.stats.records = records;
        self.stats.bytes = bytes;
        self.stats.dropped_full += dropped;
        Ok(())
    }

    /// One attempt: everything or nothing, and `self` changes only if it
    /// all became durable.
    fn try_append(&mut self, pending: &mut Vec<Record>) -> Result<u64, redb::Error> {
        let n = pending.len() as u64;
        // Reserved (synced) before any of these seqs can reach the log.
        self.seqs.reserve(self.next_seq + n)?;
        let txn = self.write()?;
        let mut next_seq = self.next_seq;
        let (mut records, mut bytes, mut dropped) = (self.stats.records, self.stats.bytes, 0);
        {
            let mut table = txn.open_table(RECORDS)?;
            for r in pending.iter_mut() {
                r.seq = next_seq;
                next_seq += 1;
                let value = r.encode_to_vec();
                bytes += record_bytes(value.len());
                records += 1;
                table.insert(r.seq, value.as_slice())?;
            }
            if self.config.full_policy == FullPolicy::DropOldest {
                // The disk's bound, if any, was made room for before
                // (`make_room`): what was just appended is never dropped
                // for it.
                let bound = self.config.max_bytes;
                while bytes > bound {
                    let Some((_, v)) = table.pop_first()? else {
                        break;
                    };
                    bytes = bytes.saturating_sub(record_bytes(v.value().len()));
                    records = records.saturating_sub(1);
                    dropped += 1;
                }
            }
            let mut meta = txn.open_table(META)?;
            meta.insert(NEXT_SEQ, next_seq)?;
            meta.insert(DROPPED_FULL, self.stats.dropped_full + dropped)?;
            meta.insert(DROPPED_UNWRITABLE, self.stats.dropped_unwritable)?;
        }
        txn.commit()?;
        // Durable before anything is sent: a record the hub has seen is
        // always one the agent would resend.
        if !self.disk.is_full() {
            let db = self.db.as_ref().ok_or(redb::Error::DatabaseClosed)?;
            db.begin_write()?.commit()?;
        }
        self.next_seq = next_seq;
        self.stats.records = records;
        self.stats.bytes = bytes;
        self.stats.dropped_full += dropped;
        self.disk.stored(bytes);
        pending.clear();
        Ok(n)
    }

    /// A write transaction that becomes durable with the next durable
    /// commit (an append's, or [`flush`](Self::flush)); on a full disk, a
    /// durable one. (Pages a transaction frees are reusable only once it is
    /// durable: a run of non-durable removals on a full disk needs new
    /// pages for every one, and the commit that would make them durable
    /// then fails for want of them, so acknowledgements would never make
    /// room.)
    fn write(&self) -> Result<redb::WriteTransaction, redb::Error> {
        let db = self.db.as_ref().ok_or(redb::Error::DatabaseClosed)?;
        let mut txn = db.begin_write()?;
        if !self.disk.is_full() {
            txn.set_durability(Durability::None)?;
        }
        Ok(txn)
    }

    /// Drops records older than `max_age_secs` (by source timestamp).
    pub fn expire(&mut self, now_us: i64) -> u64 {
        let Some(max_age) = self.config.max_age_secs else {
            return 0;
        };
        let cutoff = now_us - (max_age as i64) * 1_000_000;
        // Called on every send tick: look before opening a write transaction.
        let oldest = self.read(0, 1);
        if oldest.first().is_none_or(|r| r.source_ts_us >= cutoff) {
            return 0;
        }
        match self.try_expire(cutoff) {
            Ok(n) => n,
            Err(e) => {
                self.on_error(e);
                0
            }
        }
    }

    fn try_expire(&mut self, cutoff: i64) -> Result<u64, redb::Error> {
        let txn = self.write()?;
        let (mut records, mut bytes, mut n) = (self.stats.records, self.stats.bytes, 0);
        {
            let mut table = txn.open_table(RECORDS)?;
            loop {
                let old = match table.first()? {
                    // An undecodable record is not kept for its age.
                    Some((_, v)) => {
                        Record::decode(v.value()).map_or(true, |r| r.source_ts_us < cutoff)
                    }
                    None => false,
                };
                if !old {
                    break;
                }
                if let Some((_, v)) = table.pop_first()? {
                    bytes = bytes.saturating_sub(record_bytes(v.value().len()));
                    records = records.saturating_sub(1);
                    n += 1;
                }
            }
            txn.open_table(META)?
                .insert(DROPPED_AGE, self.stats.dropped_age + n)?;
        }
        txn.commit()?;
        self.stats.records = records;
        self.stats.bytes = bytes;
        self.stats.dropped_age += n;
        Ok(n)
    }

    /// Makes every removal so far durable (one fsync).
    pub fn flush(&mut self) {
        let flushed = self
            .db
            .as_ref()
            .ok_or(redb::Error::DatabaseClosed)
            .and_then(|db| Ok(db.begin_write()?.commit()?));
        if let Err(e) = flushed {
            if self.db.is_some() {
                self.on_error(e);
            }
        }
    }

    /// Up to `max` records with seq >= `from`, in seq order. A record that
    /// does not decode is deleted and counted as lost.
    pub fn read(&mut self, from: u64, max: usize) -> Vec<Record> {
        let read = salvage::guarded(|| self.try_read(from, max));
        match read {
            Ok(Ok((records, damaged))) => {
                if !damaged.is_empty() {
                    self.forget_damaged(&damaged);
                }
                records
            }
            Ok(Err(e)) => {
                self.on_error(e);
                Vec::new()
            }
            Err(panic) => {
                self.replace_corrupt(&panic, false);
                Vec::new()
            }
        }
    }

    fn try_read(&self, from: u64, max: usize) -> Result<(Vec<Record>, Vec<u64>), redb::Error> {
        let Some(db) = &self.db else {
            return Ok((Vec::new(), Vec::new()));
        };
        let read = db.begin_read()?;
        let table = read.open_table(RECORDS)?;
        let (mut out, mut damaged) = (Vec::new(), Vec::new());
        for item in table.range(from..)?.take(max) {
            let (k, v) = item?;
            match Record::decode(v.value()) {
                Ok(mut r) => {
                    r.seq = k.value();
                    out.push(r);
                }
                Err(_) => damaged.push(k.value()),
            }
        }
        Ok((out, damaged))
    }

    fn forget_damaged(&mut self, seqs: &[u64]) {
        tracing::error!(
            records = seqs.len(),
            first = seqs[0],
            "local log records do not decode (damaged storage); deleted and counted as lost"
        );
        let forgotten = self.write().and_then(|txn| {
            let mut bytes = 0;
            {
                let mut table = txn.open_table(RECORDS)?;
                for &seq in seqs {
                    if let Some(v) = table.remove(seq)? {
                        bytes += record_bytes(v.value().len());
                    }
                }
                txn.open_table(META)?
                    .insert(LOST_CORRUPT, self.stats.lost_corrupt + seqs.len() as u64)?;
            }
            txn.commit()?;
            Ok(bytes)
        });
        match forgotten {
            Ok(bytes) => {
                let n = seqs.len() as u64;
                self.stats.records = self.stats.records.saturating_sub(n);
                self.stats.bytes = self.stats.bytes.saturating_sub(bytes);
                self.stats.lost_corrupt += n;
            }
            Err(e) => self.on_error(e),
        }
    }

    /// Where sending starts over: the oldest seq held, or the next seq when
    /// the log is empty.
    pub fn resend_from(&mut self) -> u64 {
        self.first_seq().unwrap_or(self.next_seq)
    }

    /// The oldest seq still held.
    pub fn first_seq(&mut self) -> Option<u64> {
        let Some(db) = &self.db else {
            return None;
        };
        let first = (|| -> Result<Option<u64>, redb::Error> {
            let read = db.begin_read()?;
            let table = read.open_table(RECORDS)?;
            let first = table.first()?.map(|(k, _)| k.value());
            Ok(first)
        })();
        match first {
            Ok(first) => first,
            Err(e) => {
                self.on_error(e);
                None
            }
        }
    }

    /// Removes records `first..=last` (the hub has them); returns how many
    /// were still held. Durable with the next append or flush.
    pub fn remove(&mut self, first: u64, last: u64) -> u64 {
        let removed = self.write().and_then(|txn| {
            let (mut n, mut bytes) = (0u64, 0u64);
            {
                let mut table = txn.open_table(RECORDS)?;
                table.retain_in(first..=last, |_, v| {
                    n += 1;
                    bytes += record_bytes(v.len());
                    false
                })?;
            }
            txn.commit()?;
            Ok((n, bytes))
        });
        match removed {
            Ok((n, bytes)) => {
                self.stats.records = self.stats.records.saturating_sub(n);
                self.stats.bytes = self.stats.bytes.saturating_sub(bytes);
                n
            }
            // Not removed: the records are sent again and the hub, which
            // has them, acknowledges again.
            Err(e) => {
                if self.db.is_some() {
                    self.on_error(e);
                }
                0
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(ts: i64) -> Record {
        Record {
            stream: "s".into(),
            seq: 0,
            source_ts_us: ts,
            values: vec![1.0, 2.0],
            label: String::new(),
            ..Default::default()
        }
    }

    fn recs(ts: std::ops::Range<i64>) -> Vec<Record> {
        ts.map(rec).collect()
    }

    fn config(max_bytes: u64, policy: FullPolicy) -> LogConfig {
        LogConfig {
            max_bytes,
            full_policy: policy,
            ..Default::default()
        }
    }

    #[test]
    fn appends_survive_reopen_and_seqs_keep_growing() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut log = DurableLog::open(dir.path(), LogConfig::default()).unwrap();
            assert_eq!(log.append(&mut recs(0..10)), 10);
            assert_eq!(log.remove(0, 9), 10);
            log.flush();
        }
        let mut log = DurableLog::open(dir.path(), LogConfig::default()).unwrap();
        assert_eq!(log.stats().records, 0);
        assert_eq!(log.next_seq(), 10, "an empty log still remembers the seq");
        log.append(&mut vec![rec(0)]);
        assert_eq!(log.read(0, 10)[0].seq, 10);
    }

    #[test]
    fn drop_oldest_keeps_the_newest_and_counts() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = DurableLog::open(dir.path(), config(4096, FullPolicy::DropOldest)).unwrap();
        log.append(&mut recs(0..1000));
        let s = log.stats();
        assert!(s.bytes <= 4096, "{s:?}");
        assert_eq!(s.records + s.dropped_full, 1000);
        let held = log.read(0, 2000);
        assert_eq!(
            held.first().unwrap().seq,
            s.dropped_full,
            "the oldest went first"
        );
        assert_eq!(held.last().unwrap().seq, 999);
        drop(log);
        let log = DurableLog::open(dir.path(), config(4096, FullPolicy::DropOldest)).unwrap();
        assert_eq!(log.stats(), s, "counts survive a restart");
    }

    #[test]
    fn block_policy_holds_everything_and_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = DurableLog::open(dir.path(), config(4096, FullPolicy::Block)).unwrap();
        assert!(!log.blocks());
        log.append(&mut recs(0..1000));
        assert!(log.blocks());
        assert_eq!(log.stats().dropped_full, 0);
        log.remove(0, 998);
        assert!(!log.blocks());
    }

    #[test]
    fn expire_drops_by_age() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = LogConfig {
            max_age_secs: Some(10),
            ..LogConfig::default()
        };
        let mut log = DurableLog::open(dir.path(), cfg).unwrap();
        log.append(&mut vec![rec(0), rec(5_000_000), rec(20_000_000)]);
        assert_eq!(log.expire(21_000_000), 2);
        assert_eq!(log.stats().dropped_age, 2);
        assert_eq!(log.read(0, 10)[0].source_ts_us, 20_000_000);
    }

    /// Overwrites 512-byte blocks through the file, as a failing SD card does.
    fn damage(path: &Path, every: u64) {
        use std::io::{Seek, SeekFrom, Write};
        let len = std::fs::metadata(path).unwrap().len();
        let mut f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
        let mut at = 4096;
        while at + 512 <= len {
            f.seek(SeekFrom::Start(at)).unwrap();
            f.write_all(&[0xA5; 512]).unwrap();
            at += every;
        }
    }

    fn aside_files(dir: &Path) -> Vec<PathBuf> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.to_string_lossy().contains("log.corrupt-"))
            .collect()
    }

    #[test]
    fn a_corrupt_log_is_moved_aside_salvaged_and_seqs_never_go_back() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut log = DurableLog::open(dir.path(), LogConfig::default()).unwrap();
            for _ in 0..10 {
                log.append(&mut recs(0..2048));
            }
            assert_eq!(log.next_seq(), 20_480);
            log.snapshot();
        }
        damage(&dir.path().join(FILE_NAME), 64 * 1024);
        let mut log = DurableLog::open(dir.path(), LogConfig::default()).unwrap();
        let aside = aside_files(dir.path());
        assert_eq!(aside.len(), 1, "moved aside, not deleted: {aside:?}");
        let s = log.stats();
        assert_eq!(
            s.records + s.lost_corrupt,
            20_480,
            "what was not salvaged is counted: {s:?}"
        );
        assert!(s.lost_corrupt > 0, "{s:?}");
        assert!(log.next_seq() >= 20_480, "{}", log.next_seq());
        for r in log.read(0, 100_000) {
            assert!(r.seq < 20_480 && r.values == vec![1.0, 2.0], "{r:?}");
        }
        let next = log.next_seq();
        assert_eq!(log.append(&mut recs(0..5)), 5);
        assert_eq!(log.read(next, 10).len(), 5, "the new log takes records");
        assert_eq!(log.health().fault, None);
        drop(log);
        let log = DurableLog::open(dir.path(), LogConfig::default()).unwrap();
        assert_eq!(
            log.stats().lost_corrupt,
            s.lost_corrupt,
            "the loss stays counted"
        );
        assert_eq!(log.next_seq(), next + 5);
    }

    #[test]
    fn a_deleted_log_starts_past_every_seq_used() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut log = DurableLog::open(dir.path(), LogConfig::default()).unwrap();
            log.append(&mut recs(0..100));
        }
        std::fs::remove_file(dir.path().join(FILE_NAME)).unwrap();
        let log = DurableLog::open(dir.path(), LogConfig::default()).unwrap();
        assert!(log.next_seq() >= 100, "{}", log.next_seq());
        assert_eq!(log.stats().records, 0);
    }

    #[test]
    fn an_unwritable_log_keeps_the_agent_running_and_counts_what_it_drops() {
        let dir = tempfile::tempdir().unwrap();
        // A file where the log's directory should be: nothing can be created.
        let blocker = dir.path().join("log");
        std::fs::write(&blocker, b"not a directory").unwrap();
        let mut log = DurableLog::open(&blocker, config(1 << 20, FullPolicy::DropOldest)).unwrap();
        assert!(log.health().fault.is_some(), "{:?}", log.health());
        let mut pending = recs(0..10);
        assert_eq!(log.append(&mut pending), 0);
        assert!(pending.is_empty());
        assert_eq!(log.stats().dropped_unwritable, 10);
        assert!(log.read(0, 10).is_empty());
        assert_eq!(log.remove(0, 9), 0);

        let mut log = DurableLog::open(&blocker, config(1 << 20, FullPolicy::Block)).unwrap();
        assert!(log.blocks(), "block holds the sources back");
        let mut pending = recs(0..10);
        assert_eq!(log.append(&mut pending), 0);
        assert_eq!(pending.len(), 10, "held, not dropped");
        assert_eq!(log.stats().dropped_unwritable, 0);

        // The disk comes back: the log opens on the next try.
        std::fs::remove_file(&blocker).unwrap();
        log.maintain(Instant::now() + fault::REOPEN_EVERY * 2);
        assert!(!log.blocks(), "{:?}", log.health());
        assert_eq!(log.append(&mut pending), 10);
        assert_eq!(log.health().fault, None);
    }

    #[test]
    fn another_process_holding_the_log_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let _first = DurableLog::open(dir.path(), LogConfig::default()).unwrap();
        let e = DurableLog::open(dir.path(), LogConfig::default())
            .err()
            .expect("in use");
        assert!(e.to_string().contains("in use by another process"), "{e}");
    }
}
