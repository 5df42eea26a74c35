//! The durable local log: every record the agent accepts is here until the
//! hub acknowledges that it stored it.
//!
//! Records are keyed by seq, so the log is also the sequence allocator: the
//! next seq is one past the highest ever appended, persisted in the `meta`
//! table with every append, so seqs keep growing across restarts even when
//! the log has been drained empty. Appends are grouped:
//! [`DurableLog::append`] writes a whole chunk in one transaction that is
//! not yet durable, and [`DurableLog::commit`] makes everything so far
//! durable with one fsync, so durability costs one fsync per chunk, not per
//! record.
//!
//! The log is bounded by bytes (and optionally by age). Over the bound,
//! `drop_oldest` deletes the oldest records and counts them; `block` makes
//! the agent stop taking readings until acknowledgements free space. Every
//! drop is counted, persisted and reported in heartbeats.
//!
//! The storage engine is redb, kept behind this small interface. (It was
//! sled 0.34 first: with a 4 MB cache configured, sled's resident memory
//! reached 2.4 GB while holding a backlog of one million records, 357 MB on
//! disk; see ARCHITECTURE.md.)

use std::path::Path;

use conveyor_shared::Record;
use prost::Message;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::config::{ConfigError, ConfigErrors};

/// What to do when the log reaches `max_bytes`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FullPolicy {
    /// Delete the oldest records (counted) to make room: telemetry.
    #[default]
    DropOldest,
    /// Stop taking readings until the hub acknowledges: back-pressure.
    Block,
}

/// The `[log]` table of `agent.toml`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// Bound on the records held, in bytes (encoded size).
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,
    /// Records older than this (by source timestamp) are dropped and
    /// counted. Unset: no age bound.
    pub max_age_secs: Option<u64>,
    #[serde(default)]
    pub full_policy: FullPolicy,
    /// The storage engine's page cache: what the log may keep in memory, bytes.
    #[serde(default = "default_cache_bytes")]
    pub cache_bytes: u64,
}

fn default_max_bytes() -> u64 {
    256 * 1024 * 1024
}
fn default_cache_bytes() -> u64 {
    4 * 1024 * 1024
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            max_bytes: default_max_bytes(),
            max_age_secs: None,
            full_policy: FullPolicy::default(),
            cache_bytes: default_cache_bytes(),
        }
    }
}

impl LogConfig {
    /// Checks every field; reports all the problems.
    pub fn validate(&self) -> Result<(), ConfigErrors> {
        let mut found = Vec::new();
        if self.max_bytes < 4096 {
            found.push(ConfigError::invalid(
                "log.max_bytes",
                format!("must be at least 4096, got {}", self.max_bytes),
            ));
        }
        if self.max_age_secs == Some(0) {
            found.push(ConfigError::invalid(
                "log.max_age_secs",
                "must be at least 1 (or left out)",
            ));
        }
        if self.cache_bytes < 64 * 1024 {
            found.push(ConfigError::invalid(
                "log.cache_bytes",
                format!("must be at least 65536, got {}", self.cache_bytes),
            ));
        }
        ConfigErrors::check(found)
    }
}

#[derive(Debug, Error)]
pub enum LogError {
    #[error("local log at {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: redb::Error,
    },
    #[error("local log: {0}")]
    Storage(#[from] redb::Error),
    #[error("local log record {seq} is corrupt: {reason}")]
    Corrupt { seq: u64, reason: String },
}

fn storage(e: impl Into<redb::Error>) -> LogError {
    LogError::Storage(e.into())
}

/// Counters of the log, reported in heartbeats.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogStats {
    /// Records held (not yet acknowledged by the hub).
    pub records: u64,
    /// Their encoded size.
    pub bytes: u64,
    /// Records dropped because the log was full (drop_oldest).
    pub dropped_full: u64,
    /// Records dropped because they were older than max_age_secs.
    pub dropped_age: u64,
}

const RECORDS: TableDefinition<u64, &[u8]> = TableDefinition::new("records");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const NEXT_SEQ: &str = "next_seq";
const DROPPED_FULL: &str = "dropped_full";
const DROPPED_AGE: &str = "dropped_age";
/// Per-record overhead counted against `max_bytes` (the key).
const KEY_BYTES: u64 = 8;

pub struct DurableLog {
    db: Database,
    config: LogConfig,
    next_seq: u64,
    stats: LogStats,
}

impl DurableLog {
    /// Opens (or creates) the log in `dir`, resuming where it was.
    pub fn open(dir: &Path, config: LogConfig) -> Result<Self, LogError> {
        let open_err = |source: redb::Error| LogError::Open {
            path: dir.display().to_string(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(|e| open_err(redb::StorageError::Io(e).into()))?;
        let db = Database::builder()
            .set_cache_size(config.cache_bytes as usize)
            .create(dir.join("log.redb"))
            .map_err(|e| open_err(e.into()))?;
        // Create the tables, so readers never meet a missing one.
        let txn = db.begin_write().map_err(storage)?;
        txn.open_table(RECORDS).map_err(storage)?;
        txn.open_table(META).map_err(storage)?;
        txn.commit().map_err(storage)?;

        let read = db.begin_read().map_err(storage)?;
        let records = read.open_table(RECORDS).map_err(storage)?;
        let meta = read.open_table(META).map_err(storage)?;
        let get = |k: &str| -> Result<u64, LogError> {
            Ok(meta
                .get(k)
                .map_err(storage)?
                .map(|v| v.value())
                .unwrap_or(0))
        };
        let mut stats = LogStats {
            dropped_full: get(DROPPED_FULL)?,
            dropped_age: get(DROPPED_AGE)?,
            ..Default::default()
        };
        for item in records.iter().map_err(storage)? {
            let (_, v) = item.map_err(storage)?;
            stats.records += 1;
            stats.bytes += KEY_BYTES + v.value().len() as u64;
        }
        let last = records
            .last()
            .map_err(storage)?
            .map(|(k, _)| k.value() + 1)
            .unwrap_or(0);
        let next_seq = get(NEXT_SEQ)?.max(last);
        drop((records, meta));
        drop(read);
        Ok(DurableLog {
            db,
            config,
            next_seq,
            stats,
        })
    }

    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    pub fn stats(&self) -> LogStats {
        self.stats
    }

    /// True when the `block` policy should hold the sources back.
    pub fn blocks(&self) -> bool {
        self.config.full_policy == FullPolicy::Block && self.stats.bytes >= self.config.max_bytes
    }

    /// A write transaction that becomes durable with the next `commit`.
    fn write(&self) -> Result<redb::WriteTransaction, LogError> {
        let mut txn = self.db.begin_write().map_err(storage)?;
        txn.set_durability(Durability::None).map_err(storage)?;
        Ok(txn)
    }

    /// Appends records, assigning their seqs (any `seq` they carry is
    /// overwritten), and applies `drop_oldest` if that goes over the bound.
    /// Not durable until [`commit`](Self::commit).
    pub fn append(&mut self, records: impl IntoIterator<Item = Record>) -> Result<u64, LogError> {
        let txn = self.write()?;
        let mut n = 0;
        {
            let mut table = txn.open_table(RECORDS).map_err(storage)?;
            for mut r in records {
                r.seq = self.next_seq;
                self.next_seq += 1;
                let value = r.encode_to_vec();
                self.stats.bytes += KEY_BYTES + value.len() as u64;
                self.stats.records += 1;
                table.insert(r.seq, value.as_slice()).map_err(storage)?;
                n += 1;
            }
            if self.config.full_policy == FullPolicy::DropOldest {
                while self.stats.bytes > self.config.max_bytes {
                    let Some((_, v)) = table.pop_first().map_err(storage)? else {
                        break;
                    };
                    self.stats.bytes = self
                        .stats
                        .bytes
                        .saturating_sub(KEY_BYTES + v.value().len() as u64);
                    self.stats.records = self.stats.records.saturating_sub(1);
                    self.stats.dropped_full += 1;
                }
            }
            let mut meta = txn.open_table(META).map_err(storage)?;
            meta.insert(NEXT_SEQ, self.next_seq).map_err(storage)?;
            meta.insert(DROPPED_FULL, self.stats.dropped_full)
                .map_err(storage)?;
        }
        txn.commit().map_err(storage)?;
        Ok(n)
    }

    /// Drops records older than `max_age_secs` (by source timestamp).
    pub fn expire(&mut self, now_us: i64) -> Result<u64, LogError> {
        let Some(max_age) = self.config.max_age_secs else {
            return Ok(0);
        };
        let cutoff = now_us - (max_age as i64) * 1_000_000;
        // Called on every send tick: look before opening a write transaction.
        let oldest = self.read(0, 1)?;
        if oldest.first().is_none_or(|r| r.source_ts_us >= cutoff) {
            return Ok(0);
        }
        let txn = self.write()?;
        let mut n = 0;
        {
            let mut table = txn.open_table(RECORDS).map_err(storage)?;
            loop {
                let old = match table.first().map_err(storage)? {
                    Some((k, v)) => decode(k.value(), v.value())?.source_ts_us < cutoff,
                    None => false,
                };
                if !old {
                    break;
                }
                if let Some((_, v)) = table.pop_first().map_err(storage)? {
                    self.stats.bytes = self
                        .stats
                        .bytes
                        .saturating_sub(KEY_BYTES + v.value().len() as u64);
                    self.stats.records = self.stats.records.saturating_sub(1);
                    self.stats.dropped_age += 1;
                    n += 1;
                }
            }
            let mut meta = txn.open_table(META).map_err(storage)?;
            meta.insert(DROPPED_AGE, self.stats.dropped_age)
                .map_err(storage)?;
        }
        txn.commit().map_err(storage)?;
        Ok(n)
    }

    /// Makes every append and removal so far durable (one fsync).
    pub async fn commit(&self) -> Result<(), LogError> {
        let txn = self.db.begin_write().map_err(storage)?;
        txn.commit().map_err(storage)?;
        Ok(())
    }

    /// Up to `max` records with seq >= `from`, in seq order.
    pub fn read(&self, from: u64, max: usize) -> Result<Vec<Record>, LogError> {
        let read = self.db.begin_read().map_err(storage)?;
        let table = read.open_table(RECORDS).map_err(storage)?;
        let mut out = Vec::new();
        for item in table.range(from..).map_err(storage)?.take(max) {
            let (k, v) = item.map_err(storage)?;
            out.push(decode(k.value(), v.value())?);
        }
        Ok(out)
    }

    /// Where sending starts over: the oldest seq held, or the next seq when
    /// the log is empty.
    pub fn resend_from(&self) -> Result<u64, LogError> {
        Ok(self.first_seq()?.unwrap_or(self.next_seq))
    }

    /// The oldest seq still held.
    pub fn first_seq(&self) -> Result<Option<u64>, LogError> {
        let read = self.db.begin_read().map_err(storage)?;
        let table = read.open_table(RECORDS).map_err(storage)?;
        let first = table.first().map_err(storage)?.map(|(k, _)| k.value());
        Ok(first)
    }

    /// Removes records `first..=last` (the hub has them); returns how many
    /// were still held.
    pub fn remove(&mut self, first: u64, last: u64) -> Result<u64, LogError> {
        let txn = self.write()?;
        let (mut n, mut bytes) = (0u64, 0u64);
        {
            let mut table = txn.open_table(RECORDS).map_err(storage)?;
            table
                .retain_in(first..=last, |_, v| {
                    n += 1;
                    bytes += KEY_BYTES + v.len() as u64;
                    false
                })
                .map_err(storage)?;
        }
        txn.commit().map_err(storage)?;
        self.stats.records = self.stats.records.saturating_sub(n);
        self.stats.bytes = self.stats.bytes.saturating_sub(bytes);
        Ok(n)
    }
}

fn decode(seq: u64, v: &[u8]) -> Result<Record, LogError> {
    Record::decode(v).map_err(|e| LogError::Corrupt {
        seq,
        reason: e.to_string(),
    })
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

    fn config(max_bytes: u64, policy: FullPolicy) -> LogConfig {
        LogConfig {
            max_bytes,
            full_policy: policy,
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn appends_survive_reopen_and_seqs_keep_growing() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut log = DurableLog::open(dir.path(), LogConfig::default()).unwrap();
            log.append((0..10).map(rec)).unwrap();
            log.commit().await.unwrap();
            assert_eq!(log.remove(0, 9).unwrap(), 10);
            log.commit().await.unwrap();
        }
        let mut log = DurableLog::open(dir.path(), LogConfig::default()).unwrap();
        assert_eq!(log.stats().records, 0);
        assert_eq!(log.next_seq(), 10, "an empty log still remembers the seq");
        log.append([rec(0)]).unwrap();
        assert_eq!(log.read(0, 10).unwrap()[0].seq, 10);
    }

    #[tokio::test]
    async fn drop_oldest_keeps_the_newest_and_counts() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = DurableLog::open(dir.path(), config(4096, FullPolicy::DropOldest)).unwrap();
        log.append((0..1000).map(rec)).unwrap();
        let s = log.stats();
        assert!(s.bytes <= 4096, "{s:?}");
        assert_eq!(s.records + s.dropped_full, 1000);
        let held = log.read(0, 2000).unwrap();
        assert_eq!(
            held.first().unwrap().seq,
            s.dropped_full,
            "the oldest went first"
        );
        assert_eq!(held.last().unwrap().seq, 999);
        log.commit().await.unwrap();
        drop(log);
        let log = DurableLog::open(dir.path(), config(4096, FullPolicy::DropOldest)).unwrap();
        assert_eq!(log.stats(), s, "counts survive a restart");
    }

    #[test]
    fn block_policy_holds_everything_and_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = DurableLog::open(dir.path(), config(4096, FullPolicy::Block)).unwrap();
        assert!(!log.blocks());
        log.append((0..1000).map(rec)).unwrap();
        assert!(log.blocks());
        assert_eq!(log.stats().dropped_full, 0);
        log.remove(0, 998).unwrap();
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
        log.append([rec(0), rec(5_000_000), rec(20_000_000)])
            .unwrap();
        assert_eq!(log.expire(21_000_000).unwrap(), 2);
        assert_eq!(log.stats().dropped_age, 2);
        assert_eq!(log.read(0, 10).unwrap()[0].source_ts_us, 20_000_000);
    }
}
