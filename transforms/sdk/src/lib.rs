//! The Conveyor transform SDK (docs/transform-abi.md).
//!
//! - [`wire`] is the ABI's record codec, shared with the edge agent (the
//!   host), so the two sides cannot drift.
//! - [`Transform`], [`Output`] and [`export_transform!`] are the guest glue:
//!   implement the trait, invoke the macro, build for
//!   `wasm32-unknown-unknown`, and the module speaks the ABI.
//! - [`native::Runner`] runs a transform natively through the very code path
//!   the WASM glue uses (decode the batch, `process`, encode the outputs),
//!   for unit tests and for benchmarks that compare WASM with native.
//!
//! ```
//! use conveyor_transform_sdk::{export_transform, wire::RecordRef, Output, Transform};
//!
//! #[derive(serde::Deserialize)]
//! struct Config { factor: f64 }
//!
//! struct Double(f64);
//!
//! impl Transform for Double {
//!     type Config = Config;
//!     fn init(config: Config) -> Result<Self, String> {
//!         Ok(Double(config.factor))
//!     }
//!     fn process(&mut self, _index: usize, r: RecordRef<'_>, out: &mut Output) -> Result<(), String> {
//!         out.emit(r.ts_us, r.values().map(|v| v * self.0), r.stream, r.label, r.payload)
//!     }
//! }
//!
//! export_transform!(Double, name = "double", version = "1.0.0");
//! ```
//!
//! The crate is `no_std` + `alloc`: it adds no imports to a guest module and
//! stays light for the agent, which links it for `wire`.

#![no_std]
extern crate alloc;

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

pub mod native;
pub mod wire;

#[doc(hidden)]
pub mod __private;

/// Re-exported so that transforms parse their configuration with the same
/// `serde` the glue uses.
pub use serde;
pub use serde_json;

/// A transform: a state built once from the stage's config, then fed the
/// stream's records in order.
///
/// The instance lives in the guest's memory for as long as the host keeps
/// the module instance: state (a window, a running mean) persists across
/// calls, and is lost when the host discards the instance after a trap.
pub trait Transform: Sized {
    /// The stage's `config` (a JSON object, `{}` when none is set),
    /// deserialised with `serde_json`. A parse error fails the init with
    /// the error as reason. Use `#[serde(deny_unknown_fields)]` so that a
    /// misspelt key is refused rather than ignored; use
    /// [`serde::de::IgnoredAny`] for a transform without settings.
    type Config: serde::de::DeserializeOwned;

    /// Builds the transform; `Err(reason)` refuses the module (the host
    /// gets the reason through `conveyor.fail(-1, ...)`).
    fn init(config: Self::Config) -> Result<Self, String>;

    /// Processes input record `index` (0-based within the call) and emits
    /// zero or more output records into `out`. `Err(reason)` rejects this
    /// one record: whatever it emitted is discarded, the host sends it to
    /// the dead-letter store with `reason`, and processing goes on with the
    /// next record.
    fn process(
        &mut self,
        index: usize,
        record: wire::RecordRef<'_>,
        out: &mut Output,
    ) -> Result<(), String>;
}

/// The records one input record produces.
///
/// Records are encoded here and handed to the host only once `process`
/// returns `Ok`, so that a rejected record emits nothing. Every emit is
/// checked the way the host checks it (stream name 1-256 bytes, finite
/// values): a bad output becomes an `Err` for the transform to return with
/// `?`, rather than a trap that fails the whole call.
#[derive(Debug, Default)]
pub struct Output {
    buf: Vec<u8>,
    ends: Vec<usize>,
}

impl Output {
    /// Emits a new record.
    pub fn emit<I>(
        &mut self,
        ts_us: i64,
        values: I,
        stream: &str,
        label: &str,
        payload: &[u8],
    ) -> Result<(), String>
    where
        I: IntoIterator<Item = f64>,
        I::IntoIter: ExactSizeIterator,
    {
        if stream.is_empty() || stream.len() > wire::MAX_STREAM_BYTES {
            return Err(format!(
                "output stream name is {} bytes; it must be 1-{}",
                stream.len(),
                wire::MAX_STREAM_BYTES
            ));
        }
        let start = self.buf.len();
        let values = values.into_iter();
        let n = values.len();
        wire::encode_into(&mut self.buf, ts_us, values, stream, label, payload);
        let vals = &self.buf[start + wire::HEADER_BYTES..start + wire::HEADER_BYTES + 8 * n];
        if let Some(i) = vals.chunks_exact(8).position(|b| {
            !f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]).is_finite()
        }) {
            self.buf.truncate(start);
            return Err(format!("output value {i} is not finite"));
        }
        self.ends.push(self.buf.len());
        Ok(())
    }

    /// Emits `record` unchanged (e.g. the input record, to keep it).
    pub fn emit_ref(&mut self, record: &wire::RecordRef<'_>) -> Result<(), String> {
        self.emit(
            record.ts_us,
            record.values(),
            record.stream,
            record.label,
            record.payload,
        )
    }

    /// How many records have been emitted for the current input record.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    fn clear(&mut self) {
        self.buf.clear();
        self.ends.clear();
    }

    /// The encoded records emitted so far, in order.
    fn records(&self) -> impl Iterator<Item = &[u8]> + '_ {
        let starts = core::iter::once(0).chain(self.ends.iter().copied());
        starts
            .zip(self.ends.iter().copied())
            .map(|(s, e)| &self.buf[s..e])
    }
}

/// Where the records of a batch go: the host's imports in a guest, vectors
/// in the native runner.
pub(crate) trait Sink {
    fn emit(&mut self, record: &[u8]);
    fn fail(&mut self, index: usize, reason: &str);
}

/// Parses the config (empty means `{}`) and builds the transform.
pub(crate) fn init<T: Transform>(config: &[u8]) -> Result<T, String> {
    let config = if config.iter().all(u8::is_ascii_whitespace) {
        &b"{}"[..]
    } else {
        config
    };
    let config: T::Config =
        serde_json::from_slice(config).map_err(|e| format!("invalid config: {e}"))?;
    T::init(config)
}

/// The one batch loop, shared by the WASM glue and [`native::Runner`].
/// `Err` means the batch itself is malformed (a host bug): the call fails.
pub(crate) fn run_batch<T: Transform, S: Sink>(
    transform: &mut T,
    out: &mut Output,
    batch: &[u8],
    count: usize,
    sink: &mut S,
) -> Result<(), String> {
    for (index, record) in wire::batch(batch, count).enumerate() {
        let record = record.map_err(|e| format!("input record {index} is malformed: {e}"))?;
        out.clear();
        match transform.process(index, record, out) {
            Ok(()) => out.records().for_each(|r| sink.emit(r)),
            Err(reason) => sink.fail(index, &reason),
        }
    }
    out.clear();
    Ok(())
}
