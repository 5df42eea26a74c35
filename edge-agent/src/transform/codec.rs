//! The host's side of the ABI's record codec: agent `Reading`s into an
//! input batch, emitted records back into `Reading`s. The byte layout
//! itself is `conveyor_transform_sdk::wire`; this is the glue to the
//! agent's types, in one place for the host and for the benchmark that
//! measures the same path natively.

use std::collections::HashMap;
use std::sync::Arc;

use conveyor_transform_sdk::wire::{self, RecordRef};

use crate::sources::Reading;

/// Encodes `inputs` as an input batch (each record 8-aligned) into `buf`,
/// which is cleared first.
pub fn encode_batch(inputs: &[Reading], buf: &mut Vec<u8>) {
    buf.clear();
    for r in inputs {
        wire::pad_to_8(buf);
        wire::encode_into(
            buf,
            r.ts_us,
            r.values.iter().copied(),
            &r.stream,
            &r.label,
            &r.payload,
        );
    }
}

/// Stream names already seen, so that emitted records share one `Arc<str>`
/// per stream instead of allocating one each (bounded: a guest inventing
/// names cannot grow it past 1,024).
#[derive(Debug, Default)]
pub struct StreamNames(HashMap<Box<str>, Arc<str>>);

impl StreamNames {
    pub fn intern(&mut self, stream: &str) -> Arc<str> {
        if let Some(s) = self.0.get(stream) {
            return s.clone();
        }
        let s: Arc<str> = Arc::from(stream);
        if self.0.len() < 1024 {
            self.0.insert(stream.into(), s.clone());
        }
        s
    }

    /// The `Reading` an emitted record stands for (its history of
    /// transforms is the caller's to add).
    pub fn reading(&mut self, r: &RecordRef<'_>) -> Reading {
        Reading {
            stream: self.intern(r.stream),
            ts_us: r.ts_us,
            values: r.values().collect(),
            label: r.label.to_string(),
            payload: r.payload.to_vec(),
            ..Reading::default()
        }
    }
}
