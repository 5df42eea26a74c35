//! `threshold`: keeps the records whose value on one channel lies inside a
//! band, and drops the rest. A filter, so that only the interesting
//! readings travel further (to inference, to the uplink).
//!
//! Config: `{"channel": 0, "above": a, "below": b}`; at least one of
//! `above` and `below`. A record is kept (unchanged) when
//! `value[channel] > above` (if set) and `value[channel] < below` (if set).
//! A record without that channel is rejected.

use conveyor_transform_sdk::{export_transform, wire::RecordRef, Output, Transform};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub channel: usize,
    pub above: Option<f64>,
    pub below: Option<f64>,
}

pub struct Threshold(Config);

impl Transform for Threshold {
    type Config = Config;

    fn init(config: Config) -> Result<Self, String> {
        match (config.above, config.below) {
            (None, None) => Err("threshold needs `above`, `below` or both".into()),
            (Some(a), Some(b)) if a >= b => Err(format!(
                "`above` ({a}) must be less than `below` ({b}): no value could pass"
            )),
            _ => Ok(Threshold(config)),
        }
    }

    fn process(&mut self, _: usize, record: RecordRef<'_>, out: &mut Output) -> Result<(), String> {
        let Config {
            channel,
            above,
            below,
        } = self.0;
        if channel >= record.n_values() {
            return Err(format!(
                "record has {} values; threshold reads channel {channel}",
                record.n_values()
            ));
        }
        let v = record.value(channel);
        if above.is_none_or(|a| v > a) && below.is_none_or(|b| v < b) {
            out.emit_ref(&record)?;
        }
        Ok(())
    }
}

export_transform!(
    Threshold,
    name = "threshold",
    version = env!("CARGO_PKG_VERSION")
);

#[cfg(test)]
mod tests {
    use super::*;
    use conveyor_transform_sdk::native::{Record, Runner};

    fn run(config: &str, values: &[&[f64]]) -> (Vec<i64>, Vec<(usize, String)>) {
        let records: Vec<Record> = (0..)
            .zip(values)
            .map(|(ts, v)| Record::new(ts, v, "s").with_label("l"))
            .collect();
        let got = Runner::<Threshold>::init(config)
            .unwrap()
            .run(&records)
            .unwrap();
        for r in &got.emitted {
            assert_eq!(*r, records[r.ts_us as usize], "kept records are unchanged");
        }
        (got.emitted.iter().map(|r| r.ts_us).collect(), got.failures)
    }

    #[test]
    fn keeps_values_strictly_inside_the_band() {
        let values: &[&[f64]] = &[
            &[0.0, 5.0],
            &[0.0, 10.0],
            &[0.0, 10.5],
            &[0.0, 20.0],
            &[9.0, 19.9],
        ];
        let (kept, failures) = run(r#"{"channel":1,"above":10,"below":20}"#, values);
        assert_eq!(kept, vec![2, 4]);
        assert!(failures.is_empty());
        assert_eq!(
            run(r#"{"above":0.5}"#, &[&[0.0], &[1.0], &[-3.0]]).0,
            vec![1]
        );
        assert_eq!(
            run(r#"{"below":0.5}"#, &[&[0.0], &[1.0], &[-3.0]]).0,
            vec![0, 2]
        );
    }

    #[test]
    fn record_without_the_channel_is_rejected() {
        let (kept, failures) = run(
            r#"{"channel":2,"above":0}"#,
            &[&[1.0, 2.0, 3.0], &[1.0], &[]],
        );
        assert_eq!(kept, vec![0]);
        assert_eq!(
            failures,
            vec![
                (1, "record has 1 values; threshold reads channel 2".into()),
                (2, "record has 0 values; threshold reads channel 2".into()),
            ]
        );
    }

    #[test]
    fn bad_configs_are_refused() {
        let err = |c: &str| Runner::<Threshold>::init(c).err().unwrap();
        assert_eq!(err("{}"), "threshold needs `above`, `below` or both");
        assert!(err(r#"{"above":2,"below":1}"#).contains("must be less than"));
        assert!(err(r#"{"abvoe":1}"#).starts_with("invalid config: unknown field `abvoe`"));
        assert!(err(r#"{"channel":-1,"above":1}"#).starts_with("invalid config"));
    }
}
