//! `log/reserve`: a few hundred KiB of disk held back for the log itself.
//!
//! On a disk filled to the last block, the log cannot even delete: redb
//! writes a removal as new pages (copy on write) and reuses freed pages
//! only after a later commit, so with no free block left an
//! acknowledgement cannot be applied, the record is sent again, and
//! nothing ever makes room. So the log keeps this file of zeros while it
//! has room. When the disk fills it deletes the file, which gives its
//! removals room to run, and once they free pages the file can reuse them
//! without growing. The file comes back when the disk has room again.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

pub const FILE_NAME: &str = "reserve";
/// Room for a few dozen removal transactions.
pub const BYTES: usize = 256 << 10;

pub struct Reserve {
    path: PathBuf,
}

impl Reserve {
    pub fn new(dir: &Path) -> Self {
        Reserve {
            path: dir.join(FILE_NAME),
        }
    }

    pub fn is_held(&self) -> bool {
        fs::metadata(&self.path).is_ok_and(|m| m.len() >= BYTES as u64)
    }

    /// Writes the file (real zeros, not a sparse file, so the blocks are
    /// taken) if it is not there. On a full disk this fails, removes what
    /// it wrote, and is tried again later.
    pub fn hold(&self) -> io::Result<()> {
        if self.is_held() {
            return Ok(());
        }
        let written = (|| {
            let mut f = File::create(&self.path)?;
            f.write_all(&vec![0u8; BYTES])?;
            f.sync_all()
        })();
        if written.is_err() {
            let _ = fs::remove_file(&self.path);
        }
        written
    }

    /// Deletes the file, giving its blocks to the log. Returns whether
    /// there was one.
    pub fn release(&self) -> bool {
        fs::remove_file(&self.path).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_real_blocks_and_releases_them() {
        let dir = tempfile::tempdir().unwrap();
        let r = Reserve::new(dir.path());
        assert!(!r.is_held());
        r.hold().unwrap();
        assert!(r.is_held());
        r.hold().unwrap();
        assert!(r.release());
        assert!(!r.is_held());
        assert!(!r.release(), "nothing left to release");
    }

    #[test]
    fn a_failed_hold_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let r = Reserve::new(&dir.path().join("missing"));
        assert!(r.hold().is_err());
        assert!(!r.is_held());
    }
}
