//! Running a transform natively, without WASM: for unit tests, and for
//! benchmarks that weigh the WASM path against native code.
//!
//! [`Runner::run_batch`] takes the same encoded input batch the host writes
//! into guest memory and goes through the same loop as the guest glue
//! (decode with [`wire::batch`], [`Transform::process`], encode the outputs),
//! so the only difference a benchmark sees is the WASM boundary and code
//! generation.

use alloc::string::{String, ToString};
use alloc::vec::Vec;

use crate::{wire, Output, Sink, Transform};

/// A transform instance, run natively.
pub struct Runner<T> {
    transform: T,
    output: Output,
}

impl<T: Transform> Runner<T> {
    /// Builds the transform from its config JSON (`""` means `{}`), as
    /// `conveyor_init` does.
    pub fn init(config_json: &str) -> Result<Self, String> {
        Ok(Runner {
            transform: crate::init::<T>(config_json.as_bytes())?,
            output: Output::default(),
        })
    }

    /// Runs one input batch (records padded to 8 bytes, as the host writes
    /// them: see [`encode_batch`]), as `conveyor_transform` does. Each
    /// emitted record is pushed, encoded, onto `out`; each rejected record
    /// onto `failures` with its index and reason. `Err` means the batch is
    /// malformed (where the guest would return non-zero).
    pub fn run_batch(
        &mut self,
        batch: &[u8],
        count: usize,
        out: &mut Vec<Vec<u8>>,
        failures: &mut Vec<(usize, String)>,
    ) -> Result<(), String> {
        let mut sink = VecSink { out, failures };
        crate::run_batch(
            &mut self.transform,
            &mut self.output,
            batch,
            count,
            &mut sink,
        )
    }

    /// Convenience for tests: runs `records` as one batch and decodes the
    /// outputs.
    pub fn run(&mut self, records: &[Record]) -> Result<Outcome, String> {
        let batch = encode_batch(records);
        let (mut out, mut failures) = (Vec::new(), Vec::new());
        self.run_batch(&batch, records.len(), &mut out, &mut failures)?;
        let emitted = out
            .iter()
            .map(|b| wire::decode(b).map(|r| Record::from_ref(&r)))
            .collect::<Result<_, _>>()
            .map_err(|e| e.to_string())?;
        Ok(Outcome { emitted, failures })
    }

    /// The transform itself, e.g. to inspect its state in a test.
    pub fn transform(&mut self) -> &mut T {
        &mut self.transform
    }
}

/// What [`Runner::run`] produced.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Outcome {
    pub emitted: Vec<Record>,
    /// Rejected input records: index in the batch, and reason.
    pub failures: Vec<(usize, String)>,
}

struct VecSink<'a> {
    out: &'a mut Vec<Vec<u8>>,
    failures: &'a mut Vec<(usize, String)>,
}

impl Sink for VecSink<'_> {
    fn emit(&mut self, record: &[u8]) {
        self.out.push(record.to_vec());
    }
    fn fail(&mut self, index: usize, reason: &str) {
        self.failures.push((index, reason.to_string()));
    }
}

/// An owned record, for building inputs and checking outputs in tests.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Record {
    pub ts_us: i64,
    pub values: Vec<f64>,
    pub stream: String,
    pub label: String,
    pub payload: Vec<u8>,
}

impl Record {
    pub fn new(ts_us: i64, values: &[f64], stream: &str) -> Self {
        Record {
            ts_us,
            values: values.to_vec(),
            stream: stream.to_string(),
            ..Record::default()
        }
    }

    pub fn with_label(mut self, label: &str) -> Self {
        self.label = label.to_string();
        self
    }

    pub fn with_payload(mut self, payload: &[u8]) -> Self {
        self.payload = payload.to_vec();
        self
    }

    pub fn from_ref(r: &wire::RecordRef<'_>) -> Self {
        Record {
            ts_us: r.ts_us,
            values: r.values().collect(),
            stream: r.stream.to_string(),
            label: r.label.to_string(),
            payload: r.payload.to_vec(),
        }
    }

    /// Appends this record to an input batch (padding first, as the host
    /// does).
    pub fn encode_into_batch(&self, batch: &mut Vec<u8>) {
        wire::pad_to_8(batch);
        wire::encode_into(
            batch,
            self.ts_us,
            self.values.iter().copied(),
            &self.stream,
            &self.label,
            &self.payload,
        );
    }
}

/// Encodes `records` as an input batch, the way the host does.
pub fn encode_batch(records: &[Record]) -> Vec<u8> {
    let mut batch = Vec::new();
    for r in records {
        r.encode_into_batch(&mut batch);
    }
    batch
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::RecordRef;
    use alloc::format;
    use alloc::vec;

    /// Doubles values; rejects negative ones after emitting, to show the
    /// rejected record's outputs are dropped; emits twice for label "dup".
    struct Double;

    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct NoConfig {}

    impl Transform for Double {
        type Config = NoConfig;
        fn init(_: NoConfig) -> Result<Self, String> {
            Ok(Double)
        }
        fn process(&mut self, i: usize, r: RecordRef<'_>, out: &mut Output) -> Result<(), String> {
            out.emit(
                r.ts_us,
                r.values().map(|v| v * 2.0),
                r.stream,
                r.label,
                r.payload,
            )?;
            if r.label == "dup" {
                out.emit_ref(&r)?;
            }
            if r.values().any(|v| v < 0.0) {
                return Err(format!("record {i} is negative"));
            }
            if r.label == "inf" {
                out.emit(0, [f64::INFINITY], "s", "", b"")?;
            }
            if r.label == "nostream" {
                out.emit(0, [], "", "", b"")?;
            }
            Ok(())
        }
    }

    #[test]
    fn emits_rejects_and_discards_outputs_of_rejected_records() {
        let mut runner = Runner::<Double>::init("").unwrap();
        let got = runner
            .run(&[
                Record::new(1, &[1.0, 2.0], "a").with_payload(b"p"),
                Record::new(2, &[-1.0], "a"),
                Record::new(3, &[3.0], "bb").with_label("dup"),
                Record::new(4, &[1.0], "a").with_label("inf"),
                Record::new(5, &[1.0], "a").with_label("nostream"),
            ])
            .unwrap();
        assert_eq!(
            got.emitted,
            vec![
                Record::new(1, &[2.0, 4.0], "a").with_payload(b"p"),
                Record::new(3, &[6.0], "bb").with_label("dup"),
                Record::new(3, &[3.0], "bb").with_label("dup"),
            ]
        );
        assert_eq!(
            got.failures,
            vec![
                (1, "record 1 is negative".into()),
                (3, "output value 0 is not finite".into()),
                (4, "output stream name is 0 bytes; it must be 1-256".into()),
            ]
        );
    }

    #[test]
    fn config_errors_fail_init() {
        let err = Runner::<Double>::init(r#"{"x":1}"#).err().unwrap();
        assert!(
            err.starts_with("invalid config: unknown field `x`"),
            "{err}"
        );
        assert!(Runner::<Double>::init("[").is_err());
        assert!(Runner::<Double>::init(" {} ").is_ok());
    }

    #[test]
    fn malformed_batch_is_an_error() {
        let mut runner = Runner::<Double>::init("{}").unwrap();
        let batch = encode_batch(&[Record::new(1, &[1.0], "a")]);
        let (mut out, mut failures) = (Vec::new(), Vec::new());
        let err = runner
            .run_batch(&batch, 2, &mut out, &mut failures)
            .unwrap_err();
        assert!(err.starts_with("input record 1 is malformed"), "{err}");
    }
}
