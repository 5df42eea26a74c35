//! Size-limited tmpfs mounts: a real full disk (and a real read-only
//! remount) for the storage-fault tests. Mounting needs root (CI runs as
//! root); where it is not allowed, [`Tmpfs::mount`] says so loudly on
//! stderr and returns `None`, and the test returns early: skipped, never
//! silently passed as if it had run.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A tmpfs mounted on a fresh directory; unmounted on drop.
pub struct Tmpfs {
    dir: tempfile::TempDir,
}

fn mount(args: &[&str], target: &Path) -> Result<(), String> {
    let out = Command::new("mount")
        .args(args)
        .arg(target)
        .output()
        .map_err(|e| format!("cannot run mount: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

impl Tmpfs {
    /// Mounts a tmpfs of `bytes` (rounded up to pages by the kernel), or
    /// prints why it cannot and returns `None`. `test` names the caller in
    /// the message.
    pub fn mount(test: &str, bytes: u64) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().expect("a temp dir");
        match mount(
            &[
                "-t",
                "tmpfs",
                "-o",
                &format!("size={bytes},mode=0755"),
                "tmpfs",
            ],
            dir.path(),
        ) {
            Ok(()) => Some(Tmpfs { dir }),
            Err(e) => {
                eprintln!(
                    "\n!!! SKIPPED {test}: it needs a size-limited tmpfs (root and mount \
                     permission), and mounting one failed: {e}\n"
                );
                None
            }
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `path()/rel`.
    pub fn join(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Grows (or shrinks) the filesystem: space returns to the processes
    /// using it without a remount they would notice.
    pub fn resize(&self, bytes: u64) {
        mount(&["-o", &format!("remount,size={bytes}")], self.path())
            .unwrap_or_else(|e| panic!("resizing the tmpfs: {e}"));
    }

    /// Remounts read-only, as the kernel does after an I/O error.
    pub fn remount_read_only(&self) {
        mount(&["-o", "remount,ro"], self.path())
            .unwrap_or_else(|e| panic!("remounting the tmpfs read-only: {e}"));
    }

    pub fn remount_read_write(&self) {
        mount(&["-o", "remount,rw"], self.path())
            .unwrap_or_else(|e| panic!("remounting the tmpfs read-write: {e}"));
    }

    /// Bytes free for unprivileged writers.
    pub fn free_bytes(&self) -> u64 {
        let c = std::ffi::CString::new(self.path().as_os_str().as_encoded_bytes())
            .expect("no NUL in a temp path");
        // SAFETY: statvfs writes into the zeroed struct we own; the path is
        // a valid NUL-terminated string.
        unsafe {
            let mut s: libc::statvfs = std::mem::zeroed();
            if libc::statvfs(c.as_ptr(), &mut s) != 0 {
                return 0;
            }
            s.f_bavail.saturating_mul(s.f_frsize)
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: a process still holding a file there must not make the
        // unmount (and so the temp dir's removal) fail.
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}
