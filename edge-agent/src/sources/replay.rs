//! `type = "replay"`: plays a recorded data file back as live readings.
//!
//! Readings are stamped with the time they are replayed, so downstream they
//! are indistinguishable from a live sensor. Pacing is computed from the
//! start instant (reading *n* is due at `n / rate`), so it does not drift
//! however long the replay loops.
//!
//! The file is checked whole when the source is built and then streamed
//! from disk, a line at a time, on every pass ([`Rows`]): a recording costs
//! the agent one series of memory, not the file (a file changed for the
//! worse after the check ends the source with the error).

use std::path::PathBuf;
use std::time::Duration;

use conveyor_shared::time::now_us;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::time::Instant;

use super::{Source, SourceContext, SourceError, SourceFuture, SourceOutput};
use crate::config::ConfigError;
use conveyor_model::recording::{Recording, Rows};

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ReplayConfig {
    pub name: String,
    /// Stream name of the records; defaults to `name`.
    pub stream: Option<String>,
    /// The recording: `.ts` (UEA/UCR archive) or `.csv`. Relative paths are
    /// relative to the config file.
    pub path: PathBuf,
    /// Readings per second; 0 replays as fast as the pipeline takes them.
    /// Without it the file's recorded pace is used.
    pub rate: Option<f64>,
    /// Sampling rate of a `.ts` file, which carries no timestamps; needed
    /// for replay at recorded pace.
    pub sample_rate_hz: Option<f64>,
    /// Start again from the top at the end of the file.
    #[serde(default, rename = "loop")]
    pub looping: bool,
    /// Stop after this many readings.
    pub limit: Option<u64>,
}

impl ReplayConfig {
    /// A replay of the file at `path` as source `name`, every setting
    /// at its default (recorded pace, once through).
    pub fn new(name: &str, path: impl Into<PathBuf>) -> Self {
        ReplayConfig {
            name: name.into(),
            stream: None,
            path: path.into(),
            rate: None,
            sample_rate_hz: None,
            looping: false,
            limit: None,
        }
    }

    pub(super) fn validate(&self, field: &str, found: &mut Vec<ConfigError>) {
        if let Some(rate) = self.rate {
            if !(rate.is_finite() && rate >= 0.0) {
                found.push(ConfigError::invalid(
                    format!("{field}.rate"),
                    format!("must be a number >= 0 (0 = as fast as possible), got {rate}"),
                ));
            }
        }
        if let Some(hz) = self.sample_rate_hz {
            if !(hz.is_finite() && hz > 0.0) {
                found.push(ConfigError::invalid(
                    format!("{field}.sample_rate_hz"),
                    format!("must be a number > 0, got {hz}"),
                ));
            }
        }
    }

    pub(super) fn build(
        &self,
        field: &str,
        _ctx: &SourceContext,
    ) -> Result<Box<dyn Source>, ConfigError> {
        let recording = Recording::scan(&self.path, self.sample_rate_hz)
            .map_err(|e| ConfigError::invalid(format!("{field}.path"), e.to_string()))?;
        let pace =
            match self.rate {
                Some(0.0) => Pace::Unthrottled,
                Some(rate) => Pace::Rate(rate),
                None => match recording.span_us {
                    Some(span_us) => Pace::Recorded { span_us },
                    None => return Err(ConfigError::invalid(
                        format!("{field}.rate"),
                        "the file has no timestamps, so it cannot be replayed at recorded pace: \
                         set `rate` (readings/s), or `sample_rate_hz` for a .ts file",
                    )),
                },
            };
        Ok(Box::new(ReplaySource {
            name: self.name.clone(),
            path: self.path.clone(),
            sample_rate_hz: self.sample_rate_hz,
            channels: recording.fields.len(),
            pace,
            looping: self.looping,
            limit: self.limit,
        }))
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Pace {
    Unthrottled,
    Rate(f64),
    Recorded { span_us: i64 },
}

struct ReplaySource {
    name: String,
    path: PathBuf,
    sample_rate_hz: Option<f64>,
    channels: usize,
    pace: Pace,
    looping: bool,
    limit: Option<u64>,
}

impl ReplaySource {
    /// When reading number `n` (at `offset_us` in pass `pass`) is due,
    /// counted from the start of the replay.
    fn due(&self, n: u64, pass: u64, offset_us: Option<i64>) -> Option<Duration> {
        match self.pace {
            Pace::Unthrottled => None,
            Pace::Rate(rate) => Some(Duration::from_secs_f64(n as f64 / rate)),
            Pace::Recorded { span_us } => Some(Duration::from_micros(
                (pass as i64 * span_us + offset_us.unwrap_or(0)) as u64,
            )),
        }
    }

    fn failed(&self, message: String) -> SourceError {
        SourceError {
            source_name: self.name.clone(),
            message,
        }
    }
}

impl Source for ReplaySource {
    fn name(&self) -> &str {
        &self.name
    }

    fn channels(&self) -> Option<usize> {
        Some(self.channels)
    }

    fn run(
        self: Box<Self>,
        out: SourceOutput,
        mut shutdown: watch::Receiver<bool>,
    ) -> SourceFuture {
        Box::pin(async move {
            let start = Instant::now();
            let mut n: u64 = 0;
            'passes: for pass in 0.. {
                if self.limit.is_some_and(|l| n >= l) {
                    break;
                }
                let rows = Rows::open(&self.path, self.sample_rate_hz)
                    .map_err(|e| self.failed(e.to_string()))?;
                let at_pass_start = n;
                for row in rows {
                    if self.limit.is_some_and(|l| n >= l) || *shutdown.borrow() {
                        break 'passes;
                    }
                    let row = row.map_err(|e| self.failed(e.to_string()))?;
                    if let Some(due) = self.due(n, pass, row.offset_us) {
                        tokio::select! {
                            _ = tokio::time::sleep_until(start + due) => {}
                            _ = shutdown.changed() => break 'passes,
                        }
                    }
                    if out
                        .emit(now_us(), row.values, row.label, Vec::new())
                        .await
                        .is_err()
                    {
                        break 'passes;
                    }
                    n += 1;
                }
                if n == at_pass_start {
                    // Emptied since the check: looping would spin.
                    return Err(self.failed(format!("{}: holds no readings", self.path.display())));
                }
                if !self.looping {
                    break;
                }
            }
            tracing::info!(source = %self.name, readings = n, "replay finished");
            Ok(())
        })
    }
}
