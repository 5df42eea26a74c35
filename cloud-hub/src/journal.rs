//! Append-only JSON Lines files for what the hub writes down to be read
//! by people: the audit log and each device's history of changes.
//!
//! One line per entry, appended without reading the file back, readable
//! with `tail`/`jq`; rotated to `<name>.1.jsonl` when it passes its size
//! bound, so a busy hub keeps a bounded amount (the newest entries, at
//! least one bound's worth). A torn last line (a crash mid-append) is
//! skipped by the reader. Entries are not synced one by one: they say
//! what happened, the state itself is stored elsewhere, durably.

use std::fs::{self, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::de::DeserializeOwned;
use serde::Serialize;

pub struct Journal {
    path: PathBuf,
    max_bytes: u64,
    /// Appends and rotation one at a time.
    lock: Mutex<()>,
}

impl Journal {
    /// Nothing is created until the first entry.
    pub fn new(path: PathBuf, max_bytes: u64) -> Journal {
        Journal {
            path,
            max_bytes,
            lock: Mutex::new(()),
        }
    }

    fn rotated(&self) -> PathBuf {
        let stem = self
            .path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("journal");
        self.path.with_file_name(format!("{stem}.1.jsonl"))
    }

    /// Appends `entry` as one line.
    pub fn append(&self, entry: &impl Serialize) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(entry).expect("a journal entry serialises");
        line.push(b'\n');
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(dir) = self.path.parent() {
            fs::create_dir_all(dir)?;
        }
        let len = fs::metadata(&self.path).map_or(0, |m| m.len());
        if len > 0 && len + line.len() as u64 > self.max_bytes {
            fs::rename(&self.path, self.rotated())?;
        }
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?
            .write_all(&line)
    }

    /// The newest `limit` entries, oldest first (lines that do not read
    /// are skipped).
    pub fn last<T: DeserializeOwned>(&self, limit: usize) -> std::io::Result<Vec<T>> {
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = std::collections::VecDeque::with_capacity(limit.min(1024));
        for path in [self.rotated(), self.path.clone()] {
            let file = match fs::File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            for line in BufReader::new(file).lines() {
                let Ok(entry) = serde_json::from_str::<T>(&line?) else {
                    continue;
                };
                if out.len() == limit {
                    out.pop_front();
                }
                if limit > 0 {
                    out.push_back(entry);
                }
            }
        }
        Ok(out.into())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_reads_the_newest_and_rotates_at_its_bound() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::new(dir.path().join("sub/audit.jsonl"), 100);
        assert!(j.last::<u32>(10).unwrap().is_empty(), "nothing yet");
        for i in 0..40u32 {
            j.append(&i).unwrap();
        }
        // Each file stays under its bound; the newest are all there.
        assert!(fs::metadata(j.path()).unwrap().len() <= 100);
        let all: Vec<u32> = j.last(1000).unwrap();
        assert!(all.ends_with(&[37, 38, 39]), "{all:?}");
        assert!(all.windows(2).all(|w| w[0] + 1 == w[1]), "{all:?}");
        assert!(all.len() >= 25, "at least one bound's worth: {all:?}");
        assert_eq!(j.last::<u32>(2).unwrap(), vec![38, 39]);
        assert!(j.last::<u32>(0).unwrap().is_empty());
    }

    #[test]
    fn a_torn_or_foreign_line_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::new(dir.path().join("h.jsonl"), 1 << 20);
        j.append(&1u32).unwrap();
        OpenOptions::new()
            .append(true)
            .open(j.path())
            .unwrap()
            .write_all(b"{\"torn\n")
            .unwrap();
        j.append(&2u32).unwrap();
        assert_eq!(j.last::<u32>(10).unwrap(), vec![1, 2]);
    }
}
