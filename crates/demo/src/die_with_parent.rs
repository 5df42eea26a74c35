//! Children that die with the demo: the agents and the local Fluvio
//! cluster are the demo's, and a demo killed without cleaning up (SIGKILL,
//! a crash) must not leave them running.

/// Asks the kernel to send `cmd`'s child SIGTERM when its parent ends
/// (Linux's `PR_SET_PDEATHSIG`; elsewhere nothing). The signal comes when
/// the *thread* that spawned the child ends, so spawn from a thread that
/// lives as long as the child should (the main thread, not a pool's).
pub fn die_with_parent(cmd: &mut std::process::Command) {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: prctl(2) only, in the child between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = cmd;
}
