//! The audit log: every change an operator (or a rollout acting for one)
//! made to what the fleet runs, who made it and when. Kept in
//! `<store>/audit.jsonl` (a [`Journal`]), served at `GET /api/v1/audit`
//! and shown on the dashboard's rollouts page.
//!
//! `by` is what the caller says it is today; with API tokens it becomes
//! the token's name.

use std::path::Path;

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

pub struct Audit {
    journal: Journal,
}

impl Audit {
    pub fn open(store_dir: &Path) -> Audit {
        Audit {
            journal: Journal::new(store_dir.join("audit.jsonl"), MAX_BYTES),
        }
    }

    /// Writes `entry` down; a failure is logged (with the entry), not
    /// returned: the change it records has already been made.
    pub fn record(&self, entry: AuditEntry) {
        tracing::info!(by = %entry.by, action = %entry.action, target = %entry.target, "{}", entry.detail);
        if let Err(e) = self.journal.append(&entry) {
            tracing::error!(path = %self.journal.path().display(), "cannot write the audit log: {e}; lost: {entry:?}");
        }
    }

    /// The newest `limit` entries, oldest first.
    pub fn last(&self, limit: usize) -> std::io::Result<Vec<AuditEntry>> {
        self.journal.last(limit)
    }
}
