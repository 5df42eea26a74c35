//! Free space on the filesystem holding a path: what the agent and the hub
//! report when their storage fills up, and what tells them space returned.

use std::path::Path;

/// Bytes free for unprivileged writers on the filesystem holding `path`
/// (`statvfs`'s `f_bavail * f_frsize`), or `None` where it cannot be
/// asked (the path does not exist, or the platform has no `statvfs`).
pub fn free_bytes(path: &Path) -> Option<u64> {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
        // SAFETY: `statvfs` only writes into the zeroed struct we own, and
        // `c` is a valid NUL-terminated path for the duration of the call.
        let s = unsafe {
            let mut s: libc::statvfs = std::mem::zeroed();
            if libc::statvfs(c.as_ptr(), &mut s) != 0 {
                return None;
            }
            s
        };
        #[allow(clippy::unnecessary_cast)] // the field types differ by platform
        Some((s.f_bavail as u64).saturating_mul(s.f_frsize as u64))
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        None
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_temp_dir_has_some_free_space_and_a_missing_path_has_none() {
        let dir = std::env::temp_dir();
        assert!(super::free_bytes(&dir).is_some_and(|b| b > 0));
        assert_eq!(super::free_bytes(&dir.join("no/such/dir/here")), None);
    }
}
