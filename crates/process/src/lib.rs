//! What a Conveyor binary's `main` needs, shared by `edge-agent`,
//! `cloud-hub` and `conveyor-demo`.
//!
//! It exists so that the binaries agree on the process conventions (the
//! `CONVEYOR_LOG` filter, exit code 64 for a bad config or command line,
//! SIGINT/SIGTERM to stop and SIGHUP to reload, how often a repeated
//! warning is logged) without one binary's crate depending on another's:
//! before it, the hub linked the whole edge agent for these few helpers.
//! It is in the edge binary, so it only depends on what the binaries
//! already use (clap, tracing-subscriber, tokio's signals, libc).

pub mod disk;
pub mod file_lock;
mod log_every;
pub mod signal;

use std::process::ExitCode;

pub use log_every::LogEvery;
pub use signal::shutdown_signal;

/// Exit code for an invalid config or command line (BSD `EX_USAGE`).
pub const EXIT_CONFIG: u8 = 64;

/// Exit code of a `check` that found the config valid but a service it
/// names out of reach (`EX_UNAVAILABLE` from BSD's sysexits.h).
pub const EXIT_UNAVAILABLE: u8 = 69;

/// Logs to stderr, filtered by `CONVEYOR_LOG` or else by `default`.
pub fn init_tracing(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CONVEYOR_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// A clap parse result as the process should see it: a usage error prints
/// and becomes exit code 64; `--help`/`--version` print and exit 0.
pub fn parse_or_exit_code<T>(parsed: Result<T, clap::Error>) -> Result<T, ExitCode> {
    parsed.map_err(|e| {
        let _ = e.print();
        if e.use_stderr() {
            ExitCode::from(EXIT_CONFIG)
        } else {
            ExitCode::SUCCESS
        }
    })
}

/// The message a caught panic carried (`panic!("...")` gives a `&str` or a
/// `String`), for reporting a panic that was caught and handled.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_errors_exit_64_and_help_exits_0() {
        let cmd = || clap::Command::new("t").arg(clap::Arg::new("x").long("x"));
        let err = parse_or_exit_code(cmd().try_get_matches_from(["t", "--nope"])).unwrap_err();
        assert_eq!(err, ExitCode::from(EXIT_CONFIG));
        let help = parse_or_exit_code(cmd().try_get_matches_from(["t", "--help"])).unwrap_err();
        assert_eq!(help, ExitCode::SUCCESS);
        assert!(parse_or_exit_code(cmd().try_get_matches_from(["t", "--x", "1"])).is_ok());
    }
}
