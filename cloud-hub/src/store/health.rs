//! The store's health as plain data: whether it can write, since when it
//! cannot, and when to try reopening it. No I/O and no clock: time is a
//! parameter, so the state machine is tested without a disk.
//!
//! Why a state machine: an embedded engine may latch an I/O failure (redb
//! answers every operation after a failed write with `PreviousIo` until the
//! database is reopened), so a full disk that gets space back would stay
//! wedged. The store therefore treats a storage failure as a *fault*:
//! unhealthy, reopen the database, and healthy again only once a durable
//! commit of new writes succeeds, which proves the disk takes them. Reopens
//! back off (1 s doubling to 30 s, the first one at once) because a reopen
//! after a failed commit may repair the file, which reads all of it; the
//! backoff is reset only by a healthy stretch of [`STABLE_US`], so a disk
//! that takes a few writes and then fills again does not make the store
//! reopen (and log) in a tight loop.

use super::StoreHealth;

/// The delay before the second reopen attempt of a fault.
pub const MIN_BACKOFF_US: i64 = 1_000_000;
/// The longest delay between reopen attempts.
pub const MAX_BACKOFF_US: i64 = 30_000_000;
/// How long the store must stay healthy for the next fault to be retried
/// at once again.
pub const STABLE_US: i64 = 60_000_000;

/// Where the database handle stands during a fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handle {
    /// Open, but it failed: the engine may have latched the failure, so it
    /// must be reopened.
    Failed,
    /// Closed: the last reopen failed.
    Closed,
    /// Reopened; waiting for a durable commit of new writes.
    Reopened,
}

#[derive(Debug, Clone, PartialEq)]
struct Fault {
    error: String,
    since_us: i64,
    handle: Handle,
    next_reopen_us: i64,
}

/// What a failure means for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failure {
    /// The store was healthy until now.
    pub new_fault: bool,
    /// Distinct faults so far (for rate-limiting the fault log line).
    pub faults: u64,
    /// Failed writes and commits so far.
    pub write_failures: u64,
}

#[derive(Debug, Default, Clone, PartialEq)]
pub struct HealthState {
    fault: Option<Fault>,
    faults: u64,
    write_failures: u64,
    recoveries: u64,
    /// The delay the next reopen attempt waits after the one before.
    backoff_us: i64,
    recovered_at_us: Option<i64>,
}

impl HealthState {
    pub fn healthy(&self) -> bool {
        self.fault.is_none()
    }

    /// The handle's state while unhealthy.
    pub fn handle(&self) -> Option<Handle> {
        self.fault.as_ref().map(|f| f.handle)
    }

    /// An operation failed in the storage (`write`: a write or commit).
    pub fn failed(&mut self, error: &str, write: bool, now_us: i64) -> Failure {
        if write {
            self.write_failures += 1;
        }
        let new_fault = self.fault.is_none();
        match &mut self.fault {
            Some(f) => {
                f.error = error.to_string();
                f.handle = Handle::Failed;
            }
            None => {
                self.faults += 1;
                // A fault after a long healthy stretch is retried at once;
                // one right after a recovery waits out the backoff.
                let stable = self
                    .recovered_at_us
                    .is_none_or(|at| now_us - at >= STABLE_US);
                if stable {
                    self.backoff_us = 0;
                }
                self.fault = Some(Fault {
                    error: error.to_string(),
                    since_us: now_us,
                    handle: Handle::Failed,
                    next_reopen_us: now_us + self.backoff_us,
                });
            }
        }
        Failure {
            new_fault,
            faults: self.faults,
            write_failures: self.write_failures,
        }
    }

    /// Whether the handle should be reopened now.
    pub fn reopen_due(&self, now_us: i64) -> bool {
        self.fault
            .as_ref()
            .is_some_and(|f| f.handle != Handle::Reopened && now_us >= f.next_reopen_us)
    }

    fn back_off(&mut self) -> i64 {
        self.backoff_us = (self.backoff_us * 2).clamp(MIN_BACKOFF_US, MAX_BACKOFF_US);
        self.backoff_us
    }

    /// The handle was reopened.
    pub fn reopened(&mut self, now_us: i64) {
        self.recoveries += 1;
        let delay = self.back_off();
        if let Some(f) = &mut self.fault {
            f.handle = Handle::Reopened;
            f.next_reopen_us = now_us + delay;
        }
    }

    /// Reopening failed with `error`: the handle stays closed until the
    /// next attempt.
    pub fn reopen_failed(&mut self, error: &str, now_us: i64) {
        let delay = self.back_off();
        if let Some(f) = &mut self.fault {
            f.error = error.to_string();
            f.handle = Handle::Closed;
            f.next_reopen_us = now_us + delay;
        }
    }

    /// A durable commit of new writes succeeded. Returns when the fault it
    /// ends began, if it ends one (only a reopened handle recovers: a
    /// failed one may still hold a latched error).
    pub fn durable(&mut self, now_us: i64) -> Option<i64> {
        let f = self.fault.take_if(|f| f.handle == Handle::Reopened)?;
        self.recovered_at_us = Some(now_us);
        Some(f.since_us)
    }

    /// The health as the API reports it.
    pub fn report(&self, free_bytes: Option<u64>) -> StoreHealth {
        StoreHealth {
            healthy: self.fault.is_none(),
            error: self.fault.as_ref().map(|f| f.error.clone()),
            since_us: self.fault.as_ref().map(|f| f.since_us),
            write_failures: self.write_failures,
            recoveries: self.recoveries,
            free_bytes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000;

    #[test]
    fn a_fault_is_reopened_at_once_then_with_doubling_backoff() {
        let mut h = HealthState::default();
        assert!(h.healthy() && !h.reopen_due(0));
        let f = h.failed("disk full", true, 10 * S);
        assert!(f.new_fault);
        assert_eq!((f.faults, f.write_failures), (1, 1));
        assert!(!h.healthy());
        assert!(h.reopen_due(10 * S), "the first reopen is not delayed");
        h.reopened(10 * S);
        assert_eq!(h.handle(), Some(Handle::Reopened));
        assert!(!h.reopen_due(100 * S), "a reopened handle needs no reopen");
        // Still full: the next write fails, and the next reopen waits 1 s.
        let f = h.failed("disk full", true, 10 * S + 1);
        assert!(!f.new_fault);
        assert_eq!(f.write_failures, 2);
        assert!(!h.reopen_due(11 * S - 1));
        assert!(h.reopen_due(11 * S));
        h.reopen_failed("read-only file system", 11 * S);
        assert_eq!(h.handle(), Some(Handle::Closed));
        assert!(
            !h.reopen_due(13 * S - 1) && h.reopen_due(13 * S),
            "then 2 s"
        );
        let mut at = 13 * S;
        for _ in 0..10 {
            h.reopen_failed("still", at);
            at += MAX_BACKOFF_US;
        }
        assert!(h.reopen_due(at) && !h.reopen_due(at - 1), "capped at 30 s");
        let r = h.report(Some(7));
        assert!(!r.healthy);
        assert_eq!(r.error.as_deref(), Some("still"));
        assert_eq!(r.since_us, Some(10 * S), "since the fault began");
        assert_eq!(
            (r.write_failures, r.recoveries, r.free_bytes),
            (2, 1, Some(7))
        );
    }

    #[test]
    fn healthy_again_only_after_a_durable_commit_on_a_reopened_handle() {
        let mut h = HealthState::default();
        h.failed("io", false, S);
        assert_eq!(
            h.report(None).write_failures,
            0,
            "a failed read is no write failure"
        );
        assert_eq!(h.durable(2 * S), None, "a failed handle may have latched");
        assert!(!h.healthy());
        h.reopened(2 * S);
        assert_eq!(h.durable(3 * S), Some(S));
        assert!(h.healthy());
        let r = h.report(None);
        assert_eq!((r.error, r.since_us, r.recoveries), (None, None, 1));
        assert_eq!(h.durable(4 * S), None, "nothing to recover from");
    }

    #[test]
    fn a_fault_soon_after_a_recovery_keeps_the_backoff() {
        let mut h = HealthState::default();
        h.failed("full", true, 0);
        h.reopened(0);
        h.durable(S);
        // Full again within a second of recovering: wait out the backoff.
        let f = h.failed("full", true, 2 * S);
        assert!(f.new_fault);
        assert_eq!(f.faults, 2);
        assert!(!h.reopen_due(2 * S) && h.reopen_due(3 * S));
        h.reopened(3 * S);
        h.durable(4 * S);
        // After a healthy minute, the next fault is retried at once.
        h.failed("full", true, 4 * S + STABLE_US);
        assert!(h.reopen_due(4 * S + STABLE_US));
    }
}
