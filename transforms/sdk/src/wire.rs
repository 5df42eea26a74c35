//! The record encoding of the transform ABI (docs/transform-abi.md,
//! "Record encoding"), used by both sides: the edge agent encodes input
//! batches and decodes emitted records with it, guests decode inputs and
//! encode outputs with it. One definition, so the two cannot drift.
//!
//! Plain data and byte slices only: no I/O, no allocation on the decode
//! path.

use core::fmt;

/// Size of the fixed header before the values.
pub const HEADER_BYTES: usize = 24;
/// Longest stream name a record may carry.
pub const MAX_STREAM_BYTES: usize = 256;

/// A record borrowed from an encoded buffer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RecordRef<'a> {
    pub ts_us: i64,
    values: &'a [u8],
    pub stream: &'a str,
    pub label: &'a str,
    pub payload: &'a [u8],
}

impl<'a> RecordRef<'a> {
    pub fn n_values(&self) -> usize {
        self.values.len() / 8
    }

    /// The `i`th value. Panics if `i >= n_values()`.
    pub fn value(&self, i: usize) -> f64 {
        let b = &self.values[i * 8..i * 8 + 8];
        f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
    }

    pub fn values(&self) -> impl ExactSizeIterator<Item = f64> + 'a {
        self.values
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
    }

    /// Size of this record once encoded (without padding).
    pub fn encoded_len(&self) -> usize {
        encoded_len(
            self.n_values(),
            self.stream.len(),
            self.label.len(),
            self.payload.len(),
        )
    }
}

/// Why bytes are not a valid record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireError {
    /// Fewer bytes than the header or the lengths it gives.
    Truncated { need: usize, have: usize },
    /// More bytes than the header accounts for (single-record decode).
    TrailingBytes { extra: usize },
    /// The stream name is empty or longer than [`MAX_STREAM_BYTES`].
    StreamLength(usize),
    /// `stream` or `label` is not UTF-8.
    NotUtf8(&'static str),
    /// A value is NaN or infinite.
    NotFinite { index: usize },
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::Truncated { need, have } => {
                write!(f, "record needs {need} bytes but has {have}")
            }
            WireError::TrailingBytes { extra } => {
                write!(f, "{extra} bytes after the end of the record")
            }
            WireError::StreamLength(n) => {
                write!(
                    f,
                    "stream name is {n} bytes; it must be 1-{MAX_STREAM_BYTES}"
                )
            }
            WireError::NotUtf8(field) => write!(f, "{field} is not UTF-8"),
            WireError::NotFinite { index } => write!(f, "value {index} is not finite"),
        }
    }
}

pub const fn encoded_len(n_values: usize, stream: usize, label: usize, payload: usize) -> usize {
    HEADER_BYTES + 8 * n_values + stream + label + payload
}

const fn pad8(n: usize) -> usize {
    (n + 7) & !7
}

fn u32_at(b: &[u8], at: usize) -> usize {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]) as usize
}

/// Decodes the record at the start of `bytes`; returns it and its encoded
/// length. Checks lengths, UTF-8 and the stream length; not finiteness
/// (see [`check_finite`]).
pub fn decode_prefix(bytes: &[u8]) -> Result<(RecordRef<'_>, usize), WireError> {
    if bytes.len() < HEADER_BYTES {
        return Err(WireError::Truncated {
            need: HEADER_BYTES,
            have: bytes.len(),
        });
    }
    let ts_us = i64::from_le_bytes([
        bytes[0], bytes[1], bytes[2], bytes[3], bytes[4], bytes[5], bytes[6], bytes[7],
    ]);
    let (n, s, l, p) = (
        u32_at(bytes, 8),
        u32_at(bytes, 12),
        u32_at(bytes, 16),
        u32_at(bytes, 20),
    );
    // Computed in u64 so that hostile lengths cannot overflow on wasm32.
    let need = HEADER_BYTES as u64 + 8 * n as u64 + s as u64 + l as u64 + p as u64;
    if need > bytes.len() as u64 {
        return Err(WireError::Truncated {
            need: need.min(usize::MAX as u64) as usize,
            have: bytes.len(),
        });
    }
    if s == 0 || s > MAX_STREAM_BYTES {
        return Err(WireError::StreamLength(s));
    }
    let v_end = HEADER_BYTES + 8 * n;
    let s_end = v_end + s;
    let l_end = s_end + l;
    let p_end = l_end + p;
    let stream =
        core::str::from_utf8(&bytes[v_end..s_end]).map_err(|_| WireError::NotUtf8("stream"))?;
    let label =
        core::str::from_utf8(&bytes[s_end..l_end]).map_err(|_| WireError::NotUtf8("label"))?;
    Ok((
        RecordRef {
            ts_us,
            values: &bytes[HEADER_BYTES..v_end],
            stream,
            label,
            payload: &bytes[l_end..p_end],
        },
        p_end,
    ))
}

/// Decodes exactly one record (as `conveyor.emit` receives it).
pub fn decode(bytes: &[u8]) -> Result<RecordRef<'_>, WireError> {
    let (r, used) = decode_prefix(bytes)?;
    if used != bytes.len() {
        return Err(WireError::TrailingBytes {
            extra: bytes.len() - used,
        });
    }
    Ok(r)
}

/// Refuses NaN and infinite values.
pub fn check_finite(r: &RecordRef<'_>) -> Result<(), WireError> {
    match r.values().position(|v| !v.is_finite()) {
        Some(index) => Err(WireError::NotFinite { index }),
        None => Ok(()),
    }
}

/// Appends one record to `out` (no padding).
pub fn encode_into<I>(
    out: &mut alloc::vec::Vec<u8>,
    ts_us: i64,
    values: I,
    stream: &str,
    label: &str,
    payload: &[u8],
) where
    I: ExactSizeIterator<Item = f64>,
{
    let n = values.len();
    out.reserve(encoded_len(n, stream.len(), label.len(), payload.len()));
    out.extend_from_slice(&ts_us.to_le_bytes());
    for len in [n, stream.len(), label.len(), payload.len()] {
        out.extend_from_slice(&(len as u32).to_le_bytes());
    }
    for v in values {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out.extend_from_slice(stream.as_bytes());
    out.extend_from_slice(label.as_bytes());
    out.extend_from_slice(payload);
}

/// Pads `out` with zero bytes to a multiple of 8: call it before appending
/// each record of an input batch.
pub fn pad_to_8(out: &mut alloc::vec::Vec<u8>) {
    out.resize(pad8(out.len()), 0);
}

/// Iterates over the `count` records of an input batch.
pub fn batch(bytes: &[u8], count: usize) -> BatchIter<'_> {
    BatchIter {
        bytes,
        at: 0,
        left: count,
    }
}

pub struct BatchIter<'a> {
    bytes: &'a [u8],
    at: usize,
    left: usize,
}

impl<'a> Iterator for BatchIter<'a> {
    type Item = Result<RecordRef<'a>, WireError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let start = pad8(self.at).min(self.bytes.len());
        match decode_prefix(&self.bytes[start..]) {
            Ok((r, used)) => {
                self.at = start + used;
                Some(Ok(r))
            }
            Err(e) => {
                self.left = 0;
                Some(Err(e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;
    use alloc::vec::Vec;

    fn enc(ts: i64, values: &[f64], stream: &str, label: &str, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        encode_into(&mut v, ts, values.iter().copied(), stream, label, payload);
        v
    }

    #[test]
    fn round_trip() {
        let b = enc(-5, &[1.5, -2.0], "imu", "walking", b"{\"a\":1}");
        assert_eq!(b.len(), 24 + 16 + 3 + 7 + 7);
        let r = decode(&b).unwrap();
        assert_eq!(r.ts_us, -5);
        assert_eq!(r.values().collect::<Vec<_>>(), vec![1.5, -2.0]);
        assert_eq!(r.value(1), -2.0);
        assert_eq!(
            (r.stream, r.label, r.payload),
            ("imu", "walking", &b"{\"a\":1}"[..])
        );
        assert_eq!(r.encoded_len(), b.len());
    }

    #[test]
    fn batch_is_padded_and_iterates() {
        let mut b = Vec::new();
        for i in 0..3 {
            pad_to_8(&mut b);
            assert_eq!(b.len() % 8, 0);
            let s = "s".repeat(i + 1);
            encode_into(&mut b, i as i64, [i as f64].into_iter(), &s, "", b"");
        }
        let got: Vec<_> = batch(&b, 3).map(|r| r.unwrap().ts_us).collect();
        assert_eq!(got, vec![0, 1, 2]);
    }

    #[test]
    fn malformed_records_are_named() {
        let b = enc(0, &[1.0], "s", "", b"");
        assert!(matches!(
            decode(&b[..10]),
            Err(WireError::Truncated { need: 24, .. })
        ));
        assert!(matches!(
            decode(&b[..b.len() - 1]),
            Err(WireError::Truncated { .. })
        ));
        let mut long = b.clone();
        long.push(0);
        assert_eq!(decode(&long), Err(WireError::TrailingBytes { extra: 1 }));
        assert_eq!(
            decode(&enc(0, &[], "", "", b"")),
            Err(WireError::StreamLength(0))
        );
        let mut bad = enc(0, &[], "s", "x", b"");
        *bad.last_mut().unwrap() = 0xff;
        assert_eq!(decode(&bad), Err(WireError::NotUtf8("label")));
        // Hostile lengths do not overflow.
        let mut huge = enc(0, &[], "s", "", b"");
        huge[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        huge[20..24].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(decode(&huge), Err(WireError::Truncated { .. })));
        let nan = enc(0, &[1.0, f64::NAN], "s", "", b"");
        assert_eq!(
            check_finite(&decode(&nan).unwrap()),
            Err(WireError::NotFinite { index: 1 })
        );
    }
}
