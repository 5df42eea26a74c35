//! The audit log: every change an operator (or a rollout acting for one)
//! made to what the fleet runs, who made it and when. Kept in
//! `<store>/audit.jsonl` (a [`Journal`]), served at `GET /api/v1/audit`
//! and shown on the dashboard's rollouts page.
//!
//! `by` is what the caller says it is today; with API tokens it becomes
//! the token's name.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::journal::Journal;

/// The audit log's bound before it rotates (keeps two such files).
const MAX_BYTES: u64 = 8 << 20;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub at_us: i64,
    pub by: String,
    /// `artifact.push`, `deploy`, `tags`, `rollout.start`, `rollout.abort`, ...
    pub action: String,
    /// What it acted on: an artifact, a device, a rollout.
    pub target: String,
    /// What exactly, in words.
    pub detail: String,
}

/// Entries kept in memory for the API (the dashboard polls it).
const RECENT: usize = 2000;

pub struct Audit {
    journal: Journal,
    /// The newest [`RECENT`] entries, read from the journal on first use
    /// (not at start), then kept up to date by [`Audit::record`].
    recent: Mutex<Option<VecDeque<AuditEntry>>>,
}

impl Audit {
    pub fn open(store_dir: &Path) -> Audit {
        Audit {
            journal: Journal::new(store_dir.join("audit.jsonl"), MAX_BYTES),
            recent: Mutex::new(None),
        }
    }

    /// Writes `entry` down; a failure is logged (with the entry), not
    /// returned: the change it records has already been made.
    pub fn record(&self, entry: AuditEntry) {
        tracing::info!(by = %entry.by, action = %entry.action, target = %entry.target, "{}", entry.detail);
        if let Err(e) = self.journal.append(&entry) {
            tracing::error!(path = %self.journal.path().display(), "cannot write the audit log: {e}; lost: {entry:?}");
        }
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(r) = recent.as_mut() {
            if r.len() == RECENT {
                r.pop_front();
            }
            r.push_back(entry);
        }
    }

    /// The newest `limit` entries (at most [`RECENT`]), oldest first.
    pub fn last(&self, limit: usize) -> std::io::Result<Vec<AuditEntry>> {
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        if recent.is_none() {
            *recent = Some(self.journal.last(RECENT)?.into());
        }
        let r = recent.as_ref().expect("read above");
        Ok(r.iter()
            .skip(r.len().saturating_sub(limit))
            .cloned()
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(i: i64) -> AuditEntry {
        AuditEntry {
            at_us: i,
            by: "ops".into(),
            action: "deploy".into(),
            target: "d".into(),
            detail: String::new(),
        }
    }

    #[test]
    fn the_newest_are_served_from_memory_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let a = Audit::open(dir.path());
        a.record(entry(1));
        assert_eq!(
            a.last(10).unwrap(),
            vec![entry(1)],
            "read from the file on first use"
        );
        a.record(entry(2));
        assert_eq!(a.last(1).unwrap(), vec![entry(2)], "kept up to date after");
        let again = Audit::open(dir.path());
        assert_eq!(again.last(10).unwrap(), vec![entry(1), entry(2)]);
    }
}
