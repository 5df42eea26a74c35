//! `window-features`: turns a stream of sensor readings into a stream of
//! per-window features (mean, std, min, max, rms, dominant frequency), at
//! the edge, so that what travels on is a few numbers per window instead
//! of every reading.
//!
//! Config (all optional):
//!
//! ```json
//! {"window": 100, "hop": 100, "sample_rate_hz": 1.0,
//!  "output_stream": "<stream>.features", "passthrough": false}
//! ```
//!
//! Each input stream has its own window of the last `window` (>= 2)
//! readings. When it first fills, and then every `hop` readings, the
//! transform emits one record on `output_stream` (default: the input's
//! stream name + `.features`) with the last reading's `ts_us`, the readings'
//! common label (or `""` if they differ), no payload, and for each channel
//! `c` in order the six values `[mean, std, min, max, rms, dominant_hz]`:
//!
//! - `std` is the population standard deviation, `rms` the root mean square;
//! - `dominant_hz` is the frequency `bin * sample_rate_hz / window` of the
//!   largest-magnitude bin of the window's DFT among bins `1..=window/2`
//!   (DC excluded; the lowest bin wins a tie); 0 when the channel is
//!   constant over the window. Each bin's power comes from the Goertzel
//!   recurrence (one multiply and two adds per reading per bin, no table
//!   lookups, any N, not only powers of two): O(N²) per window, which is
//!   cheap at the sizes edge windows have (N = 100: 5,000 steps per channel
//!   per window). Mind the fuel limit with large windows and small hops.
//!
//! With `"passthrough": true` every input record is also re-emitted
//! unchanged (before any features record it completes).
//!
//! A reading whose value count differs from the window's is rejected and
//! leaves the window untouched; so is a reading with no values.
//!
//! The windows live in the guest's linear memory: if the host discards the
//! instance (after a trap) they are lost, and the next window starts empty,
//! as after a process restart.

use std::collections::{HashMap, VecDeque};

use conveyor_transform_sdk::{export_transform, wire, wire::RecordRef, Output, Transform};
use serde::Deserialize;

/// Features per channel.
pub const FEATURES: usize = 6;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default = "default_window")]
    pub window: usize,
    pub hop: Option<usize>,
    #[serde(default = "default_rate")]
    pub sample_rate_hz: f64,
    pub output_stream: Option<String>,
    #[serde(default)]
    pub passthrough: bool,
}

fn default_window() -> usize {
    100
}

fn default_rate() -> f64 {
    1.0
}

/// The last `n` readings of one stream.
struct Window {
    channels: usize,
    /// Reading-major: `values[i * channels + c]`.
    values: VecDeque<f64>,
    labels: VecDeque<String>,
    /// Readings to go before the next features record.
    until_emit: usize,
    /// Where this window's features go.
    output_stream: String,
}

pub struct WindowFeatures {
    n: usize,
    hop: usize,
    sample_rate_hz: f64,
    output_stream: Option<String>,
    passthrough: bool,
    windows: HashMap<String, Window>,
    /// Goertzel coefficients 2·cos(2πk/N), k in 1..=N/2.
    coeffs: Vec<f64>,
    /// Scratch: one channel of the window, mean removed.
    scratch: Vec<f64>,
}

impl Transform for WindowFeatures {
    type Config = Config;

    fn init(c: Config) -> Result<Self, String> {
        if c.window < 2 {
            return Err(format!("`window` must be at least 2, got {}", c.window));
        }
        let hop = c.hop.unwrap_or(c.window);
        if hop == 0 {
            return Err("`hop` must be at least 1".into());
        }
        if !(c.sample_rate_hz > 0.0 && c.sample_rate_hz.is_finite()) {
            return Err(format!(
                "`sample_rate_hz` must be positive, got {}",
                c.sample_rate_hz
            ));
        }
        if let Some(s) = &c.output_stream {
            if s.is_empty() || s.len() > wire::MAX_STREAM_BYTES {
                return Err("`output_stream` must be 1-256 bytes".into());
            }
        }
        let n = c.window;
        let coeffs = (1..=n / 2)
            .map(|k| 2.0 * (2.0 * std::f64::consts::PI * k as f64 / n as f64).cos())
            .collect();
        Ok(WindowFeatures {
            n,
            hop,
            sample_rate_hz: c.sample_rate_hz,
            output_stream: c.output_stream,
            passthrough: c.passthrough,
            windows: HashMap::new(),
            coeffs,
            scratch: Vec::with_capacity(n),
        })
    }

    fn process(&mut self, _: usize, r: RecordRef<'_>, out: &mut Output) -> Result<(), String> {
        let channels = r.n_values();
        if channels == 0 {
            return Err("record has no values".into());
        }
        let n = self.n;
        if !self.windows.contains_key(r.stream) {
            let output_stream = match &self.output_stream {
                Some(s) => s.clone(),
                None => format!("{}.features", r.stream),
            };
            if output_stream.len() > wire::MAX_STREAM_BYTES {
                return Err(format!(
                    "output stream name {output_stream:?} would be longer than {} bytes",
                    wire::MAX_STREAM_BYTES
                ));
            }
            let window = Window {
                channels,
                values: VecDeque::with_capacity(n * channels),
                labels: VecDeque::with_capacity(n),
                until_emit: n,
                output_stream,
            };
            self.windows.insert(r.stream.to_string(), window);
        }
        let Some(w) = self.windows.get_mut(r.stream) else {
            return Err("window vanished".into());
        };
        if channels != w.channels {
            return Err(format!(
                "record has {channels} values but the window of stream {:?} holds readings of {}",
                r.stream, w.channels
            ));
        }
        if self.passthrough {
            out.emit_ref(&r)?;
        }
        // The oldest reading's label buffer is reused: no allocation per
        // reading once the window is full.
        let mut label = String::new();
        if w.labels.len() == n {
            w.values.drain(..channels);
            label = w.labels.pop_front().unwrap_or_default();
            label.clear();
        }
        w.values.extend(r.values());
        label.push_str(r.label);
        w.labels.push_back(label);
        w.until_emit -= 1;
        if w.until_emit > 0 {
            return Ok(());
        }
        w.until_emit = self.hop;

        let label = match w.labels.iter().all(|l| *l == w.labels[0]) {
            true => w.labels[0].as_str(),
            false => "",
        };
        let mut features = Vec::with_capacity(channels * FEATURES);
        for c in 0..channels {
            let channel = w.values.iter().skip(c).step_by(channels).copied();
            features.extend(channel_features(
                channel,
                &self.coeffs,
                n,
                &mut self.scratch,
                self.sample_rate_hz,
            ));
        }
        out.emit(r.ts_us, features, &w.output_stream, label, b"")
    }
}

/// `[mean, std, min, max, rms, dominant_hz]` of one channel's `N` readings.
fn channel_features(
    xs: impl Iterator<Item = f64> + Clone,
    coeffs: &[f64],
    n: usize,
    scratch: &mut Vec<f64>,
    sample_rate_hz: f64,
) -> [f64; FEATURES] {
    let nf = n as f64;
    let (mut sum, mut sum_sq) = (0.0, 0.0);
    let (mut min, mut max) = (f64::INFINITY, f64::NEG_INFINITY);
    for x in xs.clone() {
        sum += x;
        sum_sq += x * x;
        min = min.min(x);
        max = max.max(x);
    }
    let mean = sum / nf;
    scratch.clear();
    scratch.extend(xs.map(|x| x - mean));
    let var = scratch.iter().map(|d| d * d).sum::<f64>() / nf;
    let rms = (sum_sq / nf).sqrt();
    let dominant_hz = if min == max {
        0.0
    } else {
        dominant_bin(scratch, coeffs) as f64 * sample_rate_hz / nf
    };
    [mean, var.sqrt(), min, max, rms, dominant_hz]
}

/// Bins run side by side in [`dominant_bin`]: each bin's recurrence is a
/// chain of dependent operations, so interleaving independent bins keeps
/// the CPU's floating-point units busy.
const LANES: usize = 4;

/// The bin in `1..=N/2` with the largest DFT magnitude (the lowest on a
/// tie), by the Goertzel recurrence: `coeffs[k - 1] = 2·cos(2πk/N)`.
fn dominant_bin(xs: &[f64], coeffs: &[f64]) -> usize {
    let (mut best, mut best_power) = (1, -1.0);
    for (chunk, c) in coeffs.chunks(LANES).enumerate() {
        let mut coeff = [0.0; LANES];
        coeff[..c.len()].copy_from_slice(c);
        let (mut s1, mut s2) = ([0.0; LANES], [0.0; LANES]);
        for &x in xs {
            for l in 0..LANES {
                let s = x + coeff[l] * s1[l] - s2[l];
                s2[l] = s1[l];
                s1[l] = s;
            }
        }
        for l in 0..c.len() {
            let power = s1[l] * s1[l] + s2[l] * s2[l] - coeff[l] * s1[l] * s2[l];
            if power > best_power {
                (best, best_power) = (chunk * LANES + l + 1, power);
            }
        }
    }
    best
}

export_transform!(
    WindowFeatures,
    name = "window-features",
    version = env!("CARGO_PKG_VERSION")
);

#[cfg(test)]
mod tests {
    use super::*;
    use conveyor_transform_sdk::native::{Outcome, Record, Runner};

    fn run(config: &str, records: &[Record]) -> Outcome {
        Runner::<WindowFeatures>::init(config)
            .unwrap()
            .run(records)
            .unwrap()
    }

    fn readings(stream: &str, values: &[&[f64]]) -> Vec<Record> {
        (0..)
            .zip(values)
            .map(|(ts, v)| Record::new(ts * 10, v, stream))
            .collect()
    }

    #[test]
    fn features_of_a_full_window() {
        let got = run(
            r#"{"window":4,"sample_rate_hz":8}"#,
            &readings(
                "imu",
                &[&[1.0, 5.0], &[-1.0, 5.0], &[1.0, 5.0], &[-1.0, 5.0]],
            ),
        );
        assert!(got.failures.is_empty());
        // Channel 0 alternates at the Nyquist rate: bin 2 of 4, 2 * 8 / 4 = 4 Hz.
        // Channel 1 is constant: std 0, dominant 0.
        #[rustfmt::skip]
        let expected = Record::new(30, &[
            0.0, 1.0, -1.0, 1.0, 1.0, 4.0,
            5.0, 0.0, 5.0, 5.0, 5.0, 0.0,
        ], "imu.features");
        assert_eq!(got.emitted, vec![expected]);
    }

    #[test]
    fn dominant_frequency_of_a_sine() {
        let n = 64;
        let xs: Vec<Vec<f64>> = (0..n)
            .map(|t| {
                let t = t as f64 / 100.0; // 100 Hz sampling
                vec![(2.0 * std::f64::consts::PI * 12.5 * t).sin() + 3.0]
            })
            .collect();
        let refs: Vec<&[f64]> = xs.iter().map(|v| v.as_slice()).collect();
        let got = run(
            r#"{"window":64,"sample_rate_hz":100}"#,
            &readings("s", &refs),
        );
        let f = &got.emitted[0].values;
        assert_eq!(f.len(), 6);
        assert!((f[0] - 3.0).abs() < 1e-9, "mean {}", f[0]);
        assert!((f[1] - 0.5f64.sqrt()).abs() < 1e-9, "std {}", f[1]);
        // 12.5 Hz lies on bin 8 (8 * 100 / 64 = 12.5).
        assert_eq!(f[5], 12.5);
    }

    #[test]
    fn hop_labels_and_passthrough() {
        let mut input = readings("s", &[&[1.0], &[2.0], &[3.0], &[4.0], &[5.0]]);
        for r in &mut input {
            r.label = "walk".into();
        }
        input[4].label = "run".into();
        let got = run(
            r#"{"window":3,"hop":1,"output_stream":"f","passthrough":true}"#,
            &input,
        );
        let features: Vec<(i64, &str, f64)> = got
            .emitted
            .iter()
            .filter(|r| r.stream == "f")
            .map(|r| (r.ts_us, r.label.as_str(), r.values[0]))
            .collect();
        // Windows [1,2,3], [2,3,4], [3,4,5]; the last mixes labels.
        assert_eq!(
            features,
            vec![(20, "walk", 2.0), (30, "walk", 3.0), (40, "", 4.0)]
        );
        // Every input is re-emitted, before the features it completes.
        let order: Vec<&str> = got.emitted.iter().map(|r| r.stream.as_str()).collect();
        assert_eq!(order, ["s", "s", "s", "f", "s", "f", "s", "f"]);
        assert_eq!(got.emitted[0], input[0]);
    }

    #[test]
    fn hop_longer_than_window() {
        let xs: Vec<Vec<f64>> = (0..9).map(|i| vec![i as f64]).collect();
        let refs: Vec<&[f64]> = xs.iter().map(|v| v.as_slice()).collect();
        let got = run(r#"{"window":2,"hop":3}"#, &readings("s", &refs));
        let means: Vec<f64> = got.emitted.iter().map(|r| r.values[0]).collect();
        // Full at reading 1 ([0,1]), then readings 4 ([3,4]) and 7 ([6,7]).
        assert_eq!(means, vec![0.5, 3.5, 6.5]);
    }

    #[test]
    fn streams_have_separate_windows() {
        let mut input = readings("a", &[&[1.0], &[3.0]]);
        input.insert(1, Record::new(5, &[100.0, 1.0], "b"));
        input.push(Record::new(6, &[200.0, 1.0], "b"));
        let got = run(r#"{"window":2}"#, &input);
        assert!(got.failures.is_empty());
        let summary: Vec<(&str, f64)> = got
            .emitted
            .iter()
            .map(|r| (r.stream.as_str(), r.values[0]))
            .collect();
        assert_eq!(summary, vec![("a.features", 2.0), ("b.features", 150.0)]);
        assert_eq!(got.emitted[1].values.len(), 12);
    }

    #[test]
    fn channel_count_change_is_rejected_and_leaves_the_window() {
        let input = readings("s", &[&[1.0, 1.0], &[1.0], &[], &[3.0, 5.0]]);
        let got = run(r#"{"window":2}"#, &input);
        assert_eq!(
            got.failures,
            vec![
                (
                    1,
                    "record has 1 values but the window of stream \"s\" holds readings of 2".into()
                ),
                (2, "record has no values".into()),
            ]
        );
        assert_eq!(got.emitted.len(), 1);
        assert_eq!(got.emitted[0].ts_us, 30);
        assert_eq!(&got.emitted[0].values[..4], &[2.0, 1.0, 1.0, 3.0]);
    }

    #[test]
    fn bad_configs_are_refused() {
        let err = |c: &str| Runner::<WindowFeatures>::init(c).err().unwrap();
        assert_eq!(err(r#"{"window":1}"#), "`window` must be at least 2, got 1");
        assert_eq!(err(r#"{"hop":0}"#), "`hop` must be at least 1");
        assert!(err(r#"{"sample_rate_hz":0}"#).contains("must be positive"));
        assert!(err(r#"{"windw":3}"#).starts_with("invalid config: unknown field"));
    }
}
