//! `scale`: unit scaling and normalisation of a record's values, so that
//! models and dashboards downstream see calibrated, comparable numbers.
//!
//! Config (all keys optional; the default is the identity):
//!
//! ```json
//! {"mode": "affine", "scale": 2.0, "offset": [0, -1, 0], "output_stream": "imu.si"}
//! {"mode": "zscore", "mean": [0.1, 9.8], "std": [0.5, 0.2]}
//! ```
//!
//! - `affine` (default): `v * scale + offset`; `scale` defaults to 1 and
//!   `offset` to 0.
//! - `zscore`: `(v - mean) / std`; `mean` and `std` are required, and every
//!   `std` must be positive (0 is refused at init).
//!
//! Each parameter is a number (for every channel) or an array (one per
//! channel): a record whose value count differs from an array's length is
//! rejected. The output keeps the input's timestamp, label and payload, on
//! `output_stream` if set, else on the input's stream.

use conveyor_transform_sdk::{export_transform, wire::RecordRef, Output, Transform};
use serde::Deserialize;

#[derive(Debug, Default, Deserialize, PartialEq, Clone, Copy)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Affine,
    Zscore,
}

/// A number for every channel, or one per channel.
#[derive(Debug, Deserialize, Clone, PartialEq)]
#[serde(untagged)]
pub enum Param {
    All(f64),
    PerChannel(Vec<f64>),
}

impl Param {
    fn check_len(&self, key: &str, n: usize) -> Result<(), String> {
        match self {
            Param::PerChannel(v) if v.len() != n => Err(format!(
                "record has {n} values but `{key}` has {} (one per channel)",
                v.len()
            )),
            _ => Ok(()),
        }
    }

    fn get(&self, channel: usize) -> f64 {
        match self {
            Param::All(x) => *x,
            Param::PerChannel(v) => v[channel],
        }
    }

    fn all(&self) -> &[f64] {
        match self {
            Param::All(x) => core::slice::from_ref(x),
            Param::PerChannel(v) => v,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub mode: Mode,
    pub scale: Option<Param>,
    pub offset: Option<Param>,
    pub mean: Option<Param>,
    pub std: Option<Param>,
    pub output_stream: Option<String>,
}

/// `v * mul + add` for affine; `(v - mean) / std` for zscore.
pub struct Scale {
    mode: Mode,
    a: Param,
    b: Param,
    output_stream: Option<String>,
}

impl Transform for Scale {
    type Config = Config;

    fn init(c: Config) -> Result<Self, String> {
        let (a, b) = match c.mode {
            Mode::Affine => {
                if c.mean.is_some() || c.std.is_some() {
                    return Err("`mean` and `std` are for mode \"zscore\"".into());
                }
                (
                    c.scale.unwrap_or(Param::All(1.0)),
                    c.offset.unwrap_or(Param::All(0.0)),
                )
            }
            Mode::Zscore => {
                if c.scale.is_some() || c.offset.is_some() {
                    return Err("`scale` and `offset` are for mode \"affine\"".into());
                }
                let (Some(mean), Some(std)) = (c.mean, c.std) else {
                    return Err("mode \"zscore\" needs `mean` and `std`".into());
                };
                if let Some(s) = std.all().iter().find(|s| s.is_nan() || **s <= 0.0) {
                    return Err(format!("`std` must be positive, got {s}"));
                }
                (mean, std)
            }
        };
        if let Some(s) = &c.output_stream {
            if s.is_empty() || s.len() > conveyor_transform_sdk::wire::MAX_STREAM_BYTES {
                return Err("`output_stream` must be 1-256 bytes".into());
            }
        }
        Ok(Scale {
            mode: c.mode,
            a,
            b,
            output_stream: c.output_stream,
        })
    }

    fn process(&mut self, _: usize, r: RecordRef<'_>, out: &mut Output) -> Result<(), String> {
        let n = r.n_values();
        let (ka, kb) = match self.mode {
            Mode::Affine => ("scale", "offset"),
            Mode::Zscore => ("mean", "std"),
        };
        self.a.check_len(ka, n)?;
        self.b.check_len(kb, n)?;
        let (a, b, mode) = (&self.a, &self.b, self.mode);
        let values = r.values().enumerate().map(|(c, v)| match mode {
            Mode::Affine => v * a.get(c) + b.get(c),
            Mode::Zscore => (v - a.get(c)) / b.get(c),
        });
        let stream = self.output_stream.as_deref().unwrap_or(r.stream);
        out.emit(r.ts_us, values, stream, r.label, r.payload)
    }
}

export_transform!(Scale, name = "scale", version = env!("CARGO_PKG_VERSION"));

#[cfg(test)]
mod tests {
    use super::*;
    use conveyor_transform_sdk::native::{Record, Runner};

    fn run(config: &str, records: &[Record]) -> (Vec<Record>, Vec<(usize, String)>) {
        let got = Runner::<Scale>::init(config).unwrap().run(records).unwrap();
        (got.emitted, got.failures)
    }

    #[test]
    fn default_is_the_identity() {
        let r = Record::new(5, &[1.5, -2.0], "imu")
            .with_label("l")
            .with_payload(b"p");
        assert_eq!(run("{}", std::slice::from_ref(&r)).0, vec![r]);
    }

    #[test]
    fn affine_with_scalars_and_per_channel_arrays() {
        let input = [Record::new(1, &[1.0, 2.0, -4.0], "raw")
            .with_label("x")
            .with_payload(b"p")];
        let (out, _) = run(r#"{"scale":2,"offset":0.5}"#, &input);
        assert_eq!(
            out,
            vec![Record::new(1, &[2.5, 4.5, -7.5], "raw")
                .with_label("x")
                .with_payload(b"p")]
        );
        let (out, _) = run(
            r#"{"mode":"affine","scale":[1,10,0.25],"offset":[0,-1,1],"output_stream":"si"}"#,
            &input,
        );
        assert_eq!(
            out,
            vec![Record::new(1, &[1.0, 19.0, 0.0], "si")
                .with_label("x")
                .with_payload(b"p")]
        );
    }

    #[test]
    fn zscore() {
        let (out, failures) = run(
            r#"{"mode":"zscore","mean":[1,10],"std":[2,0.5]}"#,
            &[
                Record::new(1, &[3.0, 9.0], "s"),
                Record::new(2, &[1.0, 10.0], "s"),
            ],
        );
        assert!(failures.is_empty());
        assert_eq!(
            out,
            vec![
                Record::new(1, &[1.0, -2.0], "s"),
                Record::new(2, &[0.0, 0.0], "s")
            ]
        );
    }

    #[test]
    fn per_channel_length_mismatch_rejects_the_record() {
        let (out, failures) = run(
            r#"{"scale":[1,2],"offset":1}"#,
            &[
                Record::new(1, &[1.0], "s"),
                Record::new(2, &[1.0, 1.0], "s"),
            ],
        );
        assert_eq!(out, vec![Record::new(2, &[2.0, 3.0], "s")]);
        assert_eq!(
            failures,
            vec![(
                0,
                "record has 1 values but `scale` has 2 (one per channel)".into()
            )]
        );
        let (_, failures) = run(
            r#"{"mode":"zscore","mean":0,"std":[1,1,1]}"#,
            &[Record::new(1, &[1.0], "s")],
        );
        assert_eq!(
            failures,
            vec![(
                0,
                "record has 1 values but `std` has 3 (one per channel)".into()
            )]
        );
    }

    #[test]
    fn overflow_to_infinity_rejects_the_record() {
        let (out, failures) = run(r#"{"scale":1e300}"#, &[Record::new(1, &[1e300], "s")]);
        assert!(out.is_empty());
        assert_eq!(failures, vec![(0, "output value 0 is not finite".into())]);
    }

    #[test]
    fn bad_configs_are_refused() {
        let err = |c: &str| Runner::<Scale>::init(c).err().unwrap();
        assert_eq!(
            err(r#"{"mode":"zscore","mean":[0],"std":[0]}"#),
            "`std` must be positive, got 0"
        );
        assert_eq!(
            err(r#"{"mode":"zscore","mean":1}"#),
            "mode \"zscore\" needs `mean` and `std`"
        );
        assert_eq!(
            err(r#"{"std":1}"#),
            "`mean` and `std` are for mode \"zscore\""
        );
        assert_eq!(
            err(r#"{"mode":"zscore","mean":0,"std":1,"scale":2}"#),
            "`scale` and `offset` are for mode \"affine\""
        );
        assert!(err(r#"{"mode":"log"}"#).starts_with("invalid config"));
        assert!(err(r#"{"scale":"2"}"#).starts_with("invalid config"));
        assert!(err(r#"{"output_stream":""}"#).contains("1-256"));
    }
}
