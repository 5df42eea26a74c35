//! `log/next-seq`: the log's sequence numbers, kept apart from the log.
//!
//! The hub deduplicates by `(device, seq)`, so a seq used twice makes the
//! hub throw the second record away as a copy of the first. The log keeps
//! its next seq itself, but a log that has to be moved aside (corrupt) or
//! was deleted takes that with it. This file survives that: before any seq
//! at or past `reserved` is assigned, `reserved` is raised a block ahead
//! and synced, so a new log starts at `reserved` and never below a seq
//! already used. (A skipped block is harmless: seqs need not be
//! contiguous, only never reused.)
//!
//! It also keeps `held`, how many records the log held at the last
//! snapshot (every heartbeat and at shutdown, not synced), which is how
//! many records a log found unreadable had: what is counted as lost.
//!
//! One fixed-size line, rewritten in place: an overwrite needs no new
//! disk block, so it works on a full disk, and a line that does not parse
//! (a torn write) is reported and ignored.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

pub const FILE_NAME: &str = "next-seq";
/// Seqs reserved at a time: one synced overwrite per block of records
/// (at 1 << 16 the extra fsync cost 8% of the append rate at 1.1M records/s;
/// a skipped block costs nothing but numbers).
pub const BLOCK: u64 = 1 << 20;
const LINE_LEN: usize = 80;

/// What the file said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeqState {
    /// No seq at or above this has been assigned.
    pub reserved: u64,
    /// Records the log held at the last snapshot.
    pub held: u64,
}

fn render(s: SeqState) -> [u8; LINE_LEN] {
    let text = format!(
        "conveyor-seq v1 reserved={:020} held={:020}",
        s.reserved, s.held
    );
    let mut line = [b' '; LINE_LEN];
    line[..text.len()].copy_from_slice(text.as_bytes());
    line[LINE_LEN - 1] = b'\n';
    line
}

fn parse(bytes: &[u8]) -> Option<SeqState> {
    let text = std::str::from_utf8(bytes).ok()?.trim_end();
    let rest = text.strip_prefix("conveyor-seq v1 reserved=")?;
    let (reserved, held) = rest.split_once(" held=")?;
    Some(SeqState {
        reserved: reserved.parse().ok()?,
        held: held.parse().ok()?,
    })
}

pub struct SeqFile {
    path: PathBuf,
    file: Option<File>,
    state: SeqState,
}

/// What loading found, beside the file handle.
#[derive(Debug)]
pub enum Loaded {
    Missing,
    Found(SeqState),
    /// The file exists but does not parse (or cannot be read): why.
    Unreadable(String),
}

impl SeqFile {
    /// Reads `dir/next-seq` (creating nothing yet).
    pub fn load(dir: &Path) -> (SeqFile, Loaded) {
        let path = dir.join(FILE_NAME);
        let loaded = match std::fs::read(&path) {
            Ok(bytes) => match parse(&bytes) {
                Some(s) => Loaded::Found(s),
                None => Loaded::Unreadable(format!("{} does not parse", path.display())),
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => Loaded::Missing,
            Err(e) => Loaded::Unreadable(format!("{}: {e}", path.display())),
        };
        let state = match loaded {
            Loaded::Found(s) => s,
            _ => SeqState {
                reserved: 0,
                held: 0,
            },
        };
        let file = SeqFile {
            path,
            file: None,
            state,
        };
        (file, loaded)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn state(&self) -> SeqState {
        self.state
    }

    fn write(&mut self, state: SeqState, sync: bool) -> io::Result<()> {
        if self.file.is_none() {
            self.file = Some(
                OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .open(&self.path)?,
            );
        }
        let file = self.file.as_ref().expect("opened above");
        let written = file.write_all_at(&render(state), 0).and_then(|()| {
            if sync {
                file.sync_data()
            } else {
                Ok(())
            }
        });
        if written.is_err() {
            // Opened again next time (the mount may have changed).
            self.file = None;
        }
        written?;
        self.state = state;
        Ok(())
    }

    /// Makes sure seqs below `upto` may be assigned: raises `reserved` a
    /// block past it, synced, if it is not already there.
    pub fn reserve(&mut self, upto: u64) -> io::Result<()> {
        if upto <= self.state.reserved {
            return Ok(());
        }
        let state = SeqState {
            reserved: upto.saturating_add(BLOCK),
            ..self.state
        };
        self.write(state, true)
    }

    /// Notes how many records the log holds (best effort, not synced).
    pub fn snapshot(&mut self, held: u64) -> io::Result<()> {
        if held == self.state.held && self.file.is_some() {
            return Ok(());
        }
        let state = SeqState { held, ..self.state };
        self.write(state, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserves_ahead_in_blocks_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let (mut f, loaded) = SeqFile::load(dir.path());
        assert!(matches!(loaded, Loaded::Missing));
        f.reserve(10).unwrap();
        assert_eq!(f.state().reserved, 10 + BLOCK);
        f.reserve(100).unwrap();
        assert_eq!(f.state().reserved, 10 + BLOCK, "inside the block: no write");
        f.snapshot(7).unwrap();
        let (f2, loaded) = SeqFile::load(dir.path());
        match loaded {
            Loaded::Found(s) => assert_eq!(
                s,
                SeqState {
                    reserved: 10 + BLOCK,
                    held: 7
                }
            ),
            other => panic!("{other:?}"),
        }
        assert_eq!(f2.state().reserved, 10 + BLOCK);
        assert_eq!(
            std::fs::metadata(dir.path().join(FILE_NAME)).unwrap().len(),
            LINE_LEN as u64
        );
    }

    #[test]
    fn a_torn_or_foreign_file_is_reported_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(FILE_NAME),
            b"conveyor-seq v1 reserved=00012",
        )
        .unwrap();
        let (f, loaded) = SeqFile::load(dir.path());
        assert!(matches!(loaded, Loaded::Unreadable(why) if why.contains("does not parse")));
        assert_eq!(f.state().reserved, 0);
    }

    #[test]
    fn the_line_has_a_fixed_length_for_any_value() {
        for v in [0, 1, u64::MAX] {
            let line = render(SeqState {
                reserved: v,
                held: v,
            });
            assert_eq!(
                parse(&line),
                Some(SeqState {
                    reserved: v,
                    held: v
                })
            );
        }
    }
}
