//! The dead-letter store: records a transform failed on, kept with the
//! reason, so that nothing a broken transform touches is lost and an
//! operator can see what went wrong (`edge-agent dead-letters`).
//!
//! A JSON Lines file in the agent's data directory, `dead-letters.jsonl`:
//! readable with `tail`/`jq` while the agent runs, appendable without
//! reading it back, and safe across a crash (a torn last line is skipped
//! by the reader). Failures are rare, so each batch of entries is synced.
//! The file is rotated to `dead-letters.1.jsonl` when it passes its size
//! limit, so a transform failing on every record cannot fill the disk.
//!
//! The last few are also kept in memory, without their records, for the
//! heartbeat: the hub's dashboard shows what failed and why without
//! reading the device's disk.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use conveyor_shared::control::{DeadLetterNote, RECENT_DEAD_LETTERS};
use conveyor_shared::ota::bounded_reason;
use conveyor_shared::Record;
use serde::{Deserialize, Serialize};

pub const FILE_NAME: &str = "dead-letters.jsonl";
const ROTATED_NAME: &str = "dead-letters.1.jsonl";
/// Size at which the file is rotated.
pub const DEFAULT_MAX_BYTES: u64 = 64 << 20;

/// One record a transform failed on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// When it was stored, microseconds since the Unix epoch.
    pub at_us: i64,
    /// The pipeline stage, e.g. `pos-redaction`.
    pub stage: String,
    /// `name@version` of the transform.
    pub transform: String,
    /// `out_of_fuel`, `trap`, `rejected`, `disabled`, ... (stable, for counting).
    pub kind: String,
    pub reason: String,
    /// The record as the transform received it (`seq` is not assigned yet: 0).
    pub record: Record,
}

/// Appends dead letters; shared by every transform stage of the agent.
pub struct DeadLetterStore {
    path: PathBuf,
    max_bytes: u64,
    file: Mutex<Option<File>>,
    write_errors: AtomicU64,
    recent: Mutex<VecDeque<DeadLetterNote>>,
}

impl DeadLetterStore {
    /// Nothing is created until the first dead letter.
    pub fn new(data_dir: &Path) -> Self {
        Self::with_limit(data_dir, DEFAULT_MAX_BYTES)
    }

    pub fn with_limit(data_dir: &Path, max_bytes: u64) -> Self {
        DeadLetterStore {
            path: data_dir.join(FILE_NAME),
            max_bytes,
            file: Mutex::new(None),
            write_errors: AtomicU64::new(0),
            recent: Mutex::new(VecDeque::with_capacity(RECENT_DEAD_LETTERS)),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `letters` and syncs. An I/O error is logged and counted; it
    /// does not stop the pipeline (the letters are then only in the log line).
    pub fn append(&self, letters: &[DeadLetter]) {
        if letters.is_empty() {
            return;
        }
        self.remember(letters);
        let mut text = Vec::new();
        for l in letters {
            serde_json::to_writer(&mut text, l).expect("a dead letter serialises");
            text.push(b'\n');
        }
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = self.write(&mut file, &text) {
            *file = None;
            let n = self.write_errors.fetch_add(1, Ordering::Relaxed) + 1;
            tracing::error!(
                path = %self.path.display(),
                errors = n,
                "cannot write {} dead letter(s): {e}; first: {}",
                letters.len(),
                String::from_utf8_lossy(text.split(|b| *b == b'\n').next().unwrap_or_default())
            );
        }
    }

    fn write(&self, file: &mut Option<File>, text: &[u8]) -> std::io::Result<()> {
        if file.is_none() {
            if let Some(dir) = self.path.parent() {
                fs::create_dir_all(dir)?;
            }
            *file = Some(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.path)?,
            );
        }
        let f = file.as_mut().expect("opened above");
        if f.metadata()?.len() + text.len() as u64 > self.max_bytes {
            fs::rename(&self.path, self.path.with_file_name(ROTATED_NAME))?;
            *f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)?;
        }
        let before = f.metadata()?.len();
        let written = f.write_all(text).and_then(|()| f.sync_data());
        if written.is_err() {
            // Cut a torn line off (a full disk), so the next append starts
            // on a line of its own.
            let _ = f.set_len(before);
        }
        written
    }

    /// Keeps the last [`RECENT_DEAD_LETTERS`] of `letters` as notes.
    fn remember(&self, letters: &[DeadLetter]) {
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        let skip = letters.len().saturating_sub(RECENT_DEAD_LETTERS);
        for l in &letters[skip..] {
            if recent.len() == RECENT_DEAD_LETTERS {
                recent.pop_front();
            }
            recent.push_back(DeadLetterNote {
                at_us: l.at_us,
                stage: l.stage.clone(),
                transform: l.transform.clone(),
                kind: l.kind.clone(),
                reason: bounded_reason(&l.reason),
                stream: l.record.stream.clone(),
            });
        }
    }

    /// The last dead letters since the agent started, oldest first.
    pub fn recent(&self) -> Vec<DeadLetterNote> {
        let recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        recent.iter().cloned().collect()
    }

    pub fn write_errors(&self) -> u64 {
        self.write_errors.load(Ordering::Relaxed)
    }
}

/// What reading the store found.
#[derive(Debug, Default)]
pub struct DeadLetterRead {
    pub letters: Vec<DeadLetter>,
    /// Lines that did not parse (a torn last line after a crash).
    pub skipped: usize,
}

/// Reads every dead letter in `data_dir`, oldest first (the rotated file,
/// then the current one).
pub fn read_all(data_dir: &Path) -> std::io::Result<DeadLetterRead> {
    let mut read = DeadLetterRead::default();
    for name in [ROTATED_NAME, FILE_NAME] {
        let file = match File::open(data_dir.join(name)) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for line in BufReader::new(file).lines() {
            match serde_json::from_str(&line?) {
                Ok(l) => read.letters.push(l),
                Err(_) => read.skipped += 1,
            }
        }
    }
    Ok(read)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn letter(i: i64) -> DeadLetter {
        DeadLetter {
            at_us: i,
            stage: "s".into(),
            transform: "t@1".into(),
            kind: "trap".into(),
            reason: "boom".into(),
            record: Record {
                stream: "pos".into(),
                source_ts_us: i,
                payload: b"{\"pan\":\"4111\"}".to_vec(),
                ..Default::default()
            },
        }
    }

    #[test]
    fn appends_reads_back_and_skips_a_torn_line() {
        let dir = tempfile::tempdir().unwrap();
        let store = DeadLetterStore::new(dir.path());
        assert!(!store.path().exists(), "created lazily");
        store.append(&[letter(1), letter(2)]);
        store.append(&[letter(3)]);
        let mut f = OpenOptions::new().append(true).open(store.path()).unwrap();
        f.write_all(b"{\"at_us\":4,\"sta").unwrap();
        let read = read_all(dir.path()).unwrap();
        assert_eq!(read.letters, vec![letter(1), letter(2), letter(3)]);
        assert_eq!(read.skipped, 1);
        // The payload is kept as text in the file.
        let text = fs::read_to_string(store.path()).unwrap();
        assert!(text.contains(r#""payload":"{\"pan\":\"4111\"}""#), "{text}");
    }

    #[test]
    fn the_last_few_are_kept_for_the_heartbeat_without_their_records() {
        let dir = tempfile::tempdir().unwrap();
        let store = DeadLetterStore::new(dir.path());
        assert!(store.recent().is_empty());
        store.append(&(0..5).map(letter).collect::<Vec<_>>());
        store.append(&(5..12).map(letter).collect::<Vec<_>>());
        let recent = store.recent();
        let at: Vec<i64> = recent.iter().map(|n| n.at_us).collect();
        assert_eq!(
            at,
            (12 - RECENT_DEAD_LETTERS as i64..12).collect::<Vec<_>>()
        );
        assert_eq!(
            (
                recent[0].kind.as_str(),
                recent[0].reason.as_str(),
                recent[0].stream.as_str()
            ),
            ("trap", "boom", "pos")
        );
        // Kept even when the file cannot be written.
        let blocker = dir.path().join("file");
        fs::write(&blocker, b"x").unwrap();
        let broken = DeadLetterStore::new(&blocker.join("sub"));
        broken.append(&[letter(1)]);
        assert_eq!((broken.write_errors(), broken.recent().len()), (1, 1));
    }

    #[test]
    fn rotates_at_its_size_limit_and_keeps_the_previous_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = DeadLetterStore::with_limit(dir.path(), 600);
        for i in 0..10 {
            store.append(&[letter(i)]);
        }
        assert!(fs::metadata(store.path()).unwrap().len() <= 600);
        let read = read_all(dir.path()).unwrap();
        let last: Vec<i64> = read.letters.iter().map(|l| l.at_us).collect();
        assert!(last.ends_with(&[8, 9]), "{last:?}");
        assert!(
            last.windows(2).all(|w| w[0] < w[1]),
            "oldest first: {last:?}"
        );
        assert_eq!(store.write_errors(), 0);
    }

    #[test]
    fn an_unwritable_store_counts_errors_and_does_not_panic() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("file");
        fs::write(&blocker, b"x").unwrap();
        let store = DeadLetterStore::new(&blocker.join("sub"));
        store.append(&[letter(1)]);
        assert_eq!(store.write_errors(), 1);
    }

    #[test]
    fn a_full_disk_is_counted_and_the_next_append_writes_again() {
        if !Path::new("/dev/full").exists() {
            eprintln!("!!! SKIPPED: no /dev/full to stand for a full disk");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let store = DeadLetterStore::new(dir.path());
        // Every write to /dev/full fails with ENOSPC.
        std::os::unix::fs::symlink("/dev/full", store.path()).unwrap();
        store.append(&[letter(1)]);
        assert_eq!(store.write_errors(), 1);
        fs::remove_file(store.path()).unwrap();
        store.append(&[letter(2)]);
        assert_eq!(store.write_errors(), 1, "space returned: written");
        assert_eq!(read_all(dir.path()).unwrap().letters, vec![letter(2)]);
    }
}
