//! The pipeline: the ordered stages between the sources and the uplink.
//!
//! A stage takes one reading and emits zero or more (a filter drops, a
//! featuriser may emit a window summary). This build ships the slot but no
//! stage types; WASM transforms and ONNX inference are stages to come, and
//! they plug in by adding a variant to [`StageConfig`] and a `Stage` impl.
//! Stages run on the uplink task, before sequence numbers are assigned, so
//! a record's `seq` is always the order in which it left the pipeline.

use serde::Deserialize;

use crate::config::ConfigError;
use crate::sources::Reading;

/// A `[[stages]]` table of `agent.toml`.
#[derive(Debug, Clone, Deserialize)]
pub struct StageConfig {
    #[serde(rename = "type")]
    pub kind: String,
}

impl StageConfig {
    pub fn build(&self, field: &str) -> Result<Box<dyn Stage>, ConfigError> {
        Err(ConfigError::invalid(
            format!("{field}.type"),
            format!(
                "stage type {:?} is not available in this build (it has no stage types yet)",
                self.kind
            ),
        ))
    }
}

pub trait Stage: Send {
    fn name(&self) -> &str;
    /// Processes one reading, pushing what comes out onto `out`.
    fn process(&mut self, reading: Reading, out: &mut Vec<Reading>);
}

#[derive(Default)]
pub struct Pipeline {
    stages: Vec<Box<dyn Stage>>,
}

impl Pipeline {
    pub fn build(configs: &[StageConfig]) -> Result<Self, ConfigError> {
        let stages = configs
            .iter()
            .enumerate()
            .map(|(i, c)| c.build(&format!("stages[{i}]")))
            .collect::<Result<_, _>>()?;
        Ok(Pipeline { stages })
    }

    pub fn from_stages(stages: Vec<Box<dyn Stage>>) -> Self {
        Pipeline { stages }
    }

    /// Runs `reading` through every stage; what the last stage emits is
    /// appended to `out`.
    pub fn process(&mut self, reading: Reading, out: &mut Vec<Reading>) {
        let mut current = vec![reading];
        for stage in &mut self.stages {
            let mut next = Vec::with_capacity(current.len());
            for r in current {
                stage.process(r, &mut next);
            }
            current = next;
        }
        out.extend(current);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct DropNegative;
    impl Stage for DropNegative {
        fn name(&self) -> &str {
            "drop-negative"
        }
        fn process(&mut self, r: Reading, out: &mut Vec<Reading>) {
            if r.values.iter().all(|v| *v >= 0.0) {
                out.push(r);
            }
        }
    }

    struct Duplicate;
    impl Stage for Duplicate {
        fn name(&self) -> &str {
            "duplicate"
        }
        fn process(&mut self, r: Reading, out: &mut Vec<Reading>) {
            out.push(r.clone());
            out.push(r);
        }
    }

    fn reading(v: f64) -> Reading {
        Reading {
            stream: "s".into(),
            ts_us: 0,
            values: vec![v],
            label: String::new(),
        }
    }

    #[test]
    fn empty_pipeline_passes_through() {
        let mut out = Vec::new();
        Pipeline::default().process(reading(1.0), &mut out);
        assert_eq!(out, vec![reading(1.0)]);
    }

    #[test]
    fn stages_apply_in_order() {
        let mut p = Pipeline::from_stages(vec![Box::new(DropNegative), Box::new(Duplicate)]);
        let mut out = Vec::new();
        p.process(reading(-1.0), &mut out);
        p.process(reading(2.0), &mut out);
        assert_eq!(out, vec![reading(2.0), reading(2.0)]);
    }

    #[test]
    fn unknown_stage_type_names_the_field() {
        let e = Pipeline::build(&[StageConfig {
            kind: "wasm".into(),
        }])
        .err()
        .unwrap();
        assert!(e.to_string().starts_with("stages[0].type"), "{e}");
    }
}
