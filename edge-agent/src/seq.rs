//! Per-device sequence numbers that only grow, across restarts too.
//!
//! The hub identifies a record by `(device_id, seq)`, so reusing a seq after
//! a crash would make the hub drop new data as a duplicate. The allocator
//! therefore reserves seqs in blocks ("hi/lo"): before handing out any seq
//! of a block it persists the block's end, and after a restart it starts
//! from the persisted value. A crash costs at most one block of unused
//! numbers (a gap the hub can see, never a reuse); a clean shutdown
//! persists the exact next seq, so a restart continues without a gap.

use std::io;
use std::path::{Path, PathBuf};

/// Seqs reserved per write of the state file.
pub const BLOCK: u64 = 10_000;

#[derive(Debug)]
pub struct SeqAllocator {
    path: PathBuf,
    next: u64,
    reserved_until: u64,
}

impl SeqAllocator {
    /// Opens (or creates) the allocator state in `dir`.
    pub fn open(dir: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("next_seq");
        let next = match std::fs::read_to_string(&path) {
            Ok(text) => text.trim().parse().map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{} is corrupt ({e}); remove it only if the hub's data for this device is gone too", path.display()),
                )
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
            Err(e) => return Err(e),
        };
        Ok(SeqAllocator {
            path,
            next,
            reserved_until: next,
        })
    }

    /// The seq the next record will get.
    pub fn peek(&self) -> u64 {
        self.next
    }

    /// Hands out the next seq, persisting a new block when needed.
    pub fn next(&mut self) -> io::Result<u64> {
        if self.next >= self.reserved_until {
            self.persist(self.next + BLOCK)?;
            self.reserved_until = self.next + BLOCK;
        }
        let seq = self.next;
        self.next += 1;
        Ok(seq)
    }

    /// Persists the exact next seq (on clean shutdown).
    pub fn close(mut self) -> io::Result<()> {
        self.persist(self.next)?;
        self.reserved_until = self.next;
        Ok(())
    }

    fn persist(&mut self, value: u64) -> io::Result<()> {
        // Write-then-rename, so a crash mid-write leaves the old value.
        let tmp = self.path.with_extension("tmp");
        std::fs::write(&tmp, value.to_string())?;
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, &self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_across_clean_restarts_without_gaps() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = SeqAllocator::open(dir.path()).unwrap();
        assert_eq!((a.next().unwrap(), a.next().unwrap()), (0, 1));
        a.close().unwrap();
        let mut b = SeqAllocator::open(dir.path()).unwrap();
        assert_eq!(b.next().unwrap(), 2);
    }

    #[test]
    fn never_reuses_after_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = SeqAllocator::open(dir.path()).unwrap();
        for _ in 0..(BLOCK + 5) {
            a.next().unwrap();
        }
        drop(a); // no close(): a crash
        let mut b = SeqAllocator::open(dir.path()).unwrap();
        assert_eq!(b.next().unwrap(), 2 * BLOCK);
    }

    #[test]
    fn corrupt_state_is_an_error_not_a_reset() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("next_seq"), "garbage").unwrap();
        let e = SeqAllocator::open(dir.path()).unwrap_err();
        assert!(e.to_string().contains("corrupt"), "{e}");
    }
}
