//! `passthrough`: re-emits every record unchanged.
//!
//! It does no work of its own, so benchmarking it measures the cost of the
//! transform machinery itself (copying records across the WASM boundary,
//! decoding and re-encoding them).

use conveyor_transform_sdk::{export_transform, serde::de::IgnoredAny, wire::RecordRef};
use conveyor_transform_sdk::{Output, Transform};

pub struct Passthrough;

impl Transform for Passthrough {
    /// Any config is accepted and ignored.
    type Config = IgnoredAny;

    fn init(_: IgnoredAny) -> Result<Self, String> {
        Ok(Passthrough)
    }

    fn process(&mut self, _: usize, record: RecordRef<'_>, out: &mut Output) -> Result<(), String> {
        out.emit_ref(&record)
    }
}

export_transform!(
    Passthrough,
    name = "passthrough",
    version = env!("CARGO_PKG_VERSION")
);

#[cfg(test)]
mod tests {
    use super::*;
    use conveyor_transform_sdk::native::{encode_batch, Record, Runner};

    #[test]
    fn re_emits_every_record_byte_for_byte() {
        let records = [
            Record::new(1, &[1.0, -2.5], "imu").with_label("walk"),
            Record::new(-7, &[], "pos").with_payload(br#"{"total":3}"#),
            Record::new(i64::MAX, &[0.0; 9], "x"),
        ];
        let batch = encode_batch(&records);
        let mut runner = Runner::<Passthrough>::init("{}").unwrap();
        let (mut out, mut failures) = (Vec::new(), Vec::new());
        runner
            .run_batch(&batch, 3, &mut out, &mut failures)
            .unwrap();
        assert!(failures.is_empty());
        let expected: Vec<Vec<u8>> = records
            .iter()
            .map(|r| encode_batch(std::slice::from_ref(r)))
            .collect();
        assert_eq!(out, expected);
    }
}
