//! What went wrong with the log's storage, and what follows from it.
//!
//! Every storage error the engine reports falls in one of three classes,
//! and each has one answer (the log in `mod.rs` carries it out):
//! - **Disk full** (`ENOSPC`, `EDQUOT`): a bound like `max_bytes`, only
//!   found by hitting it. The log is held below what fitted, `full_policy`
//!   applies, and the bound is lifted when the filesystem has room again.
//! - **Unwritable** (a read-only remount, `EIO`, anything else): nothing
//!   can be stored; readings are held back (`block`) or dropped and
//!   counted (`drop_oldest`) until a periodic reopen succeeds.
//! - **Corrupt** (the engine finds a page that fails its checksum, or the
//!   file is no database): the file is moved aside for forensics, what can
//!   be read is salvaged into a new log, the rest is counted as lost.
//!
//! redb latches an I/O failure (every later call fails with `PreviousIo`
//! until the database is reopened), so every fault is followed by a
//! reopen, which rolls back to the last durable commit. That is safe: the
//! uplink sends only what a durable commit covers.

use std::io;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    DiskFull,
    Unwritable(String),
    Corrupt(String),
}

impl Fault {
    pub fn of(e: &redb::Error) -> Fault {
        match e {
            redb::Error::Io(io) => Fault::of_io(io),
            redb::Error::Corrupted(why) => Fault::Corrupt(why.clone()),
            other => Fault::Unwritable(other.to_string()),
        }
    }

    pub fn of_io(e: &io::Error) -> Fault {
        match e.raw_os_error() {
            Some(libc::ENOSPC | libc::EDQUOT) => Fault::DiskFull,
            // What redb says of a file that is not (or no longer) a database.
            _ if e.kind() == io::ErrorKind::InvalidData => Fault::Corrupt(e.to_string()),
            _ => Fault::Unwritable(e.to_string()),
        }
    }

    /// For heartbeats and log lines.
    pub fn describe(&self) -> String {
        match self {
            Fault::DiskFull => "disk full".into(),
            Fault::Unwritable(why) => format!("cannot write: {why}"),
            Fault::Corrupt(why) => format!("corrupt: {why}"),
        }
    }
}

/// Free bytes that count as "space returned" for a log held below a full
/// disk: enough for a few appends, so a disk that frees a page or two
/// does not make the log try, fail and reopen over and over.
pub const SPACE_RETURNED_BYTES: u64 = 1 << 20;

/// How often a log that cannot be opened at all (a read-only mount) tries
/// again.
pub const REOPEN_EVERY: Duration = Duration::from_secs(2);

/// How long a log with nothing in it waits, on a full disk, before trying
/// to store again: there are no acknowledgements to wait for, so it tries
/// on a clock, not on every tick (each failed try reopens the file).
pub const EMPTY_RETRY: Duration = Duration::from_secs(1);

/// The bound a full disk put on the log, as plain data: no I/O; the time
/// is a parameter.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiskBound {
    /// Bytes (as the log counts them) the log is held below, while the
    /// disk is full.
    cap: Option<u64>,
    /// When the disk last refused a write.
    filled_at: Option<Instant>,
}

impl DiskBound {
    /// The disk filled at `now` while the log held `held` bytes: hold it a
    /// tenth below that (the engine needs room to rewrite pages), or lower
    /// still if it was already capped.
    pub fn filled(&mut self, held: u64, now: Instant) {
        let cap = held - held / 10;
        self.cap = Some(self.cap.map_or(cap, |c| c.min(cap)));
        self.filled_at = Some(now);
    }

    /// A write succeeded with the log holding `held` bytes: that much
    /// fits, whatever the cap guessed.
    pub fn stored(&mut self, held: u64) {
        if let Some(cap) = &mut self.cap {
            *cap = (*cap).max(held);
        }
    }

    /// Whether a log holding `records` may try to store now. Over the cap
    /// it waits for acknowledgements to make room; but an empty log has
    /// none coming (the disk is full of something else), so it tries again
    /// every [`EMPTY_RETRY`].
    pub fn may_store(&self, records: u64, bytes: u64, max_bytes: u64, now: Instant) -> bool {
        if records == 0 {
            return self
                .filled_at
                .is_none_or(|t| now.duration_since(t) >= EMPTY_RETRY);
        }
        bytes < self.bound(max_bytes)
    }

    /// `free` bytes on the filesystem now: lifts the bound once space
    /// returned. Returns whether it did.
    pub fn free_space(&mut self, free: Option<u64>) -> bool {
        if self.cap.is_some() && free.is_some_and(|f| f >= SPACE_RETURNED_BYTES) {
            *self = DiskBound::default();
            return true;
        }
        false
    }

    pub fn is_full(&self) -> bool {
        self.cap.is_some()
    }

    /// The byte bound in force: `max_bytes`, or the disk's if lower.
    pub fn bound(&self, max_bytes: u64) -> u64 {
        self.cap.map_or(max_bytes, |c| c.min(max_bytes))
    }
}

/// When to try opening a log that could not be opened.
#[derive(Debug, Clone, Copy, Default)]
pub struct Retry {
    last: Option<Instant>,
}

impl Retry {
    /// Whether to try now (and, if so, note that it was tried).
    pub fn due(&mut self, now: Instant) -> bool {
        if self
            .last
            .is_some_and(|l| now.duration_since(l) < REOPEN_EVERY)
        {
            return false;
        }
        self.last = Some(now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_classified_by_what_the_log_does_about_them() {
        let full = io::Error::from_raw_os_error(libc::ENOSPC);
        assert_eq!(Fault::of(&redb::Error::Io(full)), Fault::DiskFull);
        let quota = io::Error::from_raw_os_error(libc::EDQUOT);
        assert_eq!(Fault::of_io(&quota), Fault::DiskFull);
        let ro = io::Error::from_raw_os_error(libc::EROFS);
        assert!(matches!(Fault::of_io(&ro), Fault::Unwritable(w) if w.contains("Read-only")));
        let magic = io::Error::new(io::ErrorKind::InvalidData, "Not a redb database");
        assert!(matches!(Fault::of_io(&magic), Fault::Corrupt(_)));
        let corrupted = redb::Error::Corrupted("checksum".into());
        assert_eq!(Fault::of(&corrupted), Fault::Corrupt("checksum".into()));
        assert!(matches!(
            Fault::of(&redb::Error::PreviousIo),
            Fault::Unwritable(_)
        ));
    }

    #[test]
    fn a_full_disk_caps_the_log_below_what_fitted_until_space_returns() {
        let t = Instant::now();
        let mut b = DiskBound::default();
        assert_eq!(b.bound(1000), 1000);
        b.filled(500, t);
        assert!(b.is_full());
        assert_eq!(b.bound(1000), 450);
        assert_eq!(b.bound(100), 100, "max_bytes still applies");
        b.filled(600, t);
        assert_eq!(b.bound(1000), 450, "a second fill never raises the cap");
        b.filled(300, t);
        assert_eq!(b.bound(1000), 270);
        assert!(
            !b.free_space(Some(4096)),
            "a page or two is not space returned"
        );
        assert!(!b.free_space(None));
        assert!(b.free_space(Some(SPACE_RETURNED_BYTES)));
        assert_eq!(b.bound(1000), 1000);
        assert!(!b.free_space(Some(1 << 30)), "already lifted");
    }

    #[test]
    fn an_empty_log_on_a_full_disk_tries_again_on_a_clock() {
        let t = Instant::now();
        let mut b = DiskBound::default();
        assert!(b.may_store(0, 0, 1000, t), "nothing refused yet");
        b.filled(0, t);
        assert_eq!(b.bound(1000), 0);
        assert!(!b.may_store(0, 0, 1000, t + Duration::from_millis(10)));
        assert!(
            b.may_store(0, 0, 1000, t + EMPTY_RETRY),
            "an empty log is never held for good: nothing else would free it"
        );
        b.stored(300);
        assert_eq!(b.bound(1000), 300, "what was stored fits");
        assert!(
            !b.may_store(10, 300, 1000, t + EMPTY_RETRY),
            "at the cap: wait for acks"
        );
        assert!(b.may_store(5, 100, 1000, t), "below it: go on");
        b.stored(100);
        assert_eq!(b.bound(1000), 300, "a success never lowers the cap");
    }

    #[test]
    fn reopening_is_tried_every_few_seconds() {
        let t0 = Instant::now();
        let mut r = Retry::default();
        assert!(r.due(t0));
        assert!(!r.due(t0 + Duration::from_millis(100)));
        assert!(r.due(t0 + REOPEN_EVERY));
        assert!(!r.due(t0 + REOPEN_EVERY + Duration::from_secs(1)));
    }
}
