//! The durable local log: every record the agent accepts is here until the
//! hub acknowledges that it stored it.
//!
//! Records are keyed by seq (big-endian), so the log is also the sequence
//! allocator: the next seq is one past the highest ever appended, persisted
//! in the `meta` tree with every append, so seqs keep growing across
//! restarts even when the log has been drained empty. Appends are grouped:
//! [`DurableLog::append`] writes a whole chunk in one sled batch and
//! [`DurableLog::commit`] makes everything so far durable with one fsync,
//! so durability costs one fsync per chunk, not per record.
//!
//! The log is bounded by bytes (and optionally by age). Over the bound,
//! `drop_oldest` deletes the oldest records and counts them; `block` makes
//! the agent stop taking readings until acknowledgements free space. Every
//! drop is counted, persisted and reported in heartbeats.
//!
//! sled is kept behind this small interface so it can be replaced (redb,
//! fjall) without touching the uplink.

use std::path::Path;

use conveyor_shared::Record;
use prost::Message;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::config::ConfigError;

/// What to do when the log reaches `max_bytes`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FullPolicy {
    /// Delete the oldest records (counted) to make room: telemetry.
    #[default]
    DropOldest,
    /// Stop taking readings until the hub acknowledges: back-pressure.
    Block,
}

/// The `[log]` table of `agent.toml`.
#[derive(Debug, Clone, Deserialize)]
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
    /// sled's page cache: what the log may keep in memory, bytes.
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
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_bytes < 4096 {
            return Err(ConfigError::invalid(
                "log.max_bytes",
                format!("must be at least 4096, got {}", self.max_bytes),
            ));
        }
        if self.max_age_secs == Some(0) {
            return Err(ConfigError::invalid(
                "log.max_age_secs",
                "must be at least 1 (or left out)",
            ));
        }
        if self.cache_bytes < 64 * 1024 {
            return Err(ConfigError::invalid(
                "log.cache_bytes",
                format!("must be at least 65536, got {}", self.cache_bytes),
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Error)]
pub enum LogError {
    #[error("local log at {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: sled::Error,
    },
    #[error("local log: {0}")]
    Sled(#[from] sled::Error),
    #[error("local log record {seq} is corrupt: {reason}")]
    Corrupt { seq: u64, reason: String },
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

pub struct DurableLog {
    db: sled::Db,
    records: sled::Tree,
    meta: sled::Tree,
    config: LogConfig,
    next_seq: u64,
    stats: LogStats,
}

const NEXT_SEQ: &[u8] = b"next_seq";
const DROPPED_FULL: &[u8] = b"dropped_full";
const DROPPED_AGE: &[u8] = b"dropped_age";

fn read_u64(tree: &sled::Tree, key: &[u8]) -> Result<u64, LogError> {
    Ok(tree
        .get(key)?
        .and_then(|v| v.as_ref().try_into().ok().map(u64::from_be_bytes))
        .unwrap_or(0))
}

fn seq_of(key: &[u8]) -> u64 {
    key.try_into().map(u64::from_be_bytes).unwrap_or(0)
}

impl DurableLog {
    /// Opens (or creates) the log in `dir`, resuming where it was.
    pub fn open(dir: &Path, config: LogConfig) -> Result<Self, LogError> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(config.cache_bytes)
            // Durability comes from `commit`; no background fsync timer.
            .flush_every_ms(None)
            .open()
            .map_err(|source| LogError::Open {
                path: dir.display().to_string(),
                source,
            })?;
        let records = db.open_tree("records")?;
        let meta = db.open_tree("meta")?;
        let mut stats = LogStats {
            dropped_full: read_u64(&meta, DROPPED_FULL)?,
            dropped_age: read_u64(&meta, DROPPED_AGE)?,
            ..Default::default()
        };
        for item in records.iter() {
            let (k, v) = item?;
            stats.records += 1;
            stats.bytes += (k.len() + v.len()) as u64;
        }
        let last = records.last()?.map(|(k, _)| seq_of(&k) + 1).unwrap_or(0);
        let next_seq = read_u64(&meta, NEXT_SEQ)?.max(last);
        Ok(DurableLog {
            db,
            records,
            meta,
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

    /// Appends records, assigning their seqs (any `seq` they carry is
    /// overwritten). Not durable until [`commit`](Self::commit).
    pub fn append(&mut self, records: impl IntoIterator<Item = Record>) -> Result<u64, LogError> {
        let mut batch = sled::Batch::default();
        let mut n = 0;
        for mut r in records {
            r.seq = self.next_seq;
            self.next_seq += 1;
            let value = r.encode_to_vec();
            self.stats.bytes += (8 + value.len()) as u64;
            self.stats.records += 1;
            batch.insert(&r.seq.to_be_bytes(), value);
            n += 1;
        }
        self.records.apply_batch(batch)?;
        // Separately from the records: after a crash between the two,
        // `open` takes the larger of this and the last key + 1.
        self.meta.insert(NEXT_SEQ, &self.next_seq.to_be_bytes())?;
        if self.config.full_policy == FullPolicy::DropOldest {
            while self.stats.bytes > self.config.max_bytes {
                if !self.pop_oldest(false)? {
                    break;
                }
            }
        }
        Ok(n)
    }

    /// Drops records older than `max_age_secs` (by source timestamp).
    pub fn expire(&mut self, now_us: i64) -> Result<u64, LogError> {
        let Some(max_age) = self.config.max_age_secs else {
            return Ok(0);
        };
        let cutoff = now_us - (max_age as i64) * 1_000_000;
        let mut n = 0;
        while let Some((k, v)) = self.records.first()? {
            let r = decode(&k, &v)?;
            if r.source_ts_us >= cutoff {
                break;
            }
            self.pop_oldest(true)?;
            n += 1;
        }
        Ok(n)
    }

    fn pop_oldest(&mut self, for_age: bool) -> Result<bool, LogError> {
        let Some((k, v)) = self.records.pop_min()? else {
            return Ok(false);
        };
        self.stats.bytes = self.stats.bytes.saturating_sub((k.len() + v.len()) as u64);
        self.stats.records = self.stats.records.saturating_sub(1);
        let (key, count) = if for_age {
            self.stats.dropped_age += 1;
            (DROPPED_AGE, self.stats.dropped_age)
        } else {
            self.stats.dropped_full += 1;
            (DROPPED_FULL, self.stats.dropped_full)
        };
        self.meta.insert(key, &count.to_be_bytes())?;
        Ok(true)
    }

    /// Makes every append and removal so far durable (one fsync).
    pub async fn commit(&self) -> Result<(), LogError> {
        self.db.flush_async().await?;
        Ok(())
    }

    /// Up to `max` records with seq >= `from`, in seq order.
    pub fn read(&self, from: u64, max: usize) -> Result<Vec<Record>, LogError> {
        self.records
            .range(from.to_be_bytes()..)
            .take(max)
            .map(|item| {
                let (k, v) = item?;
                decode(&k, &v)
            })
            .collect()
    }

    /// The oldest seq still held.
    pub fn first_seq(&self) -> Result<Option<u64>, LogError> {
        Ok(self.records.first()?.map(|(k, _)| seq_of(&k)))
    }

    /// Removes records `first..=last` (the hub has them); returns how many
    /// were still held.
    pub fn remove(&mut self, first: u64, last: u64) -> Result<u64, LogError> {
        let mut batch = sled::Batch::default();
        let mut n = 0;
        for item in self.records.range(first.to_be_bytes()..=last.to_be_bytes()) {
            let (k, v) = item?;
            self.stats.bytes = self.stats.bytes.saturating_sub((k.len() + v.len()) as u64);
            self.stats.records = self.stats.records.saturating_sub(1);
            batch.remove(k);
            n += 1;
        }
        self.records.apply_batch(batch)?;
        Ok(n)
    }
}

fn decode(k: &[u8], v: &[u8]) -> Result<Record, LogError> {
    Record::decode(v).map_err(|e| LogError::Corrupt {
        seq: seq_of(k),
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
        let mut cfg = LogConfig::default();
        cfg.max_age_secs = Some(10);
        let mut log = DurableLog::open(dir.path(), cfg).unwrap();
        log.append([rec(0), rec(5_000_000), rec(20_000_000)])
            .unwrap();
        assert_eq!(log.expire(21_000_000).unwrap(), 2);
        assert_eq!(log.stats().dropped_age, 2);
        assert_eq!(log.read(0, 10).unwrap()[0].source_ts_us, 20_000_000);
    }
}
