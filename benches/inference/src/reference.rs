//! The reference windows of a model: `models/<dataset>/reference/<model>.json`,
//! `{"cases": [{"input": [...], "output": [...]}]}`, written by the training
//! scripts with real, already normalised test windows and what the exporting
//! runtime answered for them. `input` may be flat or nested (`[channels][window]`);
//! it is read in row-major order, which is NCW for a batch-1 window.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::Value;

#[derive(Debug, Clone, PartialEq)]
pub struct Case {
    /// `channels x window` values, NCW, normalised.
    pub input: Vec<f32>,
    /// The recorded output (probabilities), flat; may be empty.
    pub output: Vec<f32>,
}

/// Parses a reference file's text; every input must hold `input_len` values.
pub fn parse(text: &str, input_len: usize) -> Result<Vec<Case>> {
    let doc: Value = serde_json::from_str(text).context("not JSON")?;
    let cases = doc
        .get("cases")
        .and_then(Value::as_array)
        .context("no \"cases\" array")?;
    if cases.is_empty() {
        bail!("\"cases\" is empty");
    }
    cases
        .iter()
        .enumerate()
        .map(|(i, case)| {
            let mut input = Vec::with_capacity(input_len);
            flatten(
                case.get("input")
                    .context(format!("case {i}: no \"input\""))?,
                &mut input,
            )
            .with_context(|| format!("case {i}: input"))?;
            if input.len() != input_len {
                bail!(
                    "case {i}: input has {} values, the model takes {input_len}",
                    input.len()
                );
            }
            let mut output = Vec::new();
            if let Some(o) = case.get("output") {
                flatten(o, &mut output).with_context(|| format!("case {i}: output"))?;
            }
            Ok(Case { input, output })
        })
        .collect()
}

/// Appends every number of a (possibly nested) array, in order.
fn flatten(v: &Value, out: &mut Vec<f32>) -> Result<()> {
    match v {
        Value::Number(n) => {
            let x = n.as_f64().context("not a number")?;
            out.push(x as f32);
        }
        Value::Array(items) => {
            for item in items {
                flatten(item, out)?;
            }
        }
        other => bail!("expected numbers, found {other}"),
    }
    Ok(())
}

/// Where the reference of the model at `metadata_path` lives: next to it,
/// in `reference/`, named like the metadata file (`edge.int8.json`) or,
/// failing that, like the ONNX file's stem (`edge.int8.onnx` ->
/// `edge.int8.json`). Returns the candidates in the order tried.
pub fn candidates(metadata_path: &Path, model_file: &Path) -> Vec<PathBuf> {
    let dir = metadata_path
        .parent()
        .unwrap_or(Path::new("."))
        .join("reference");
    let mut out = Vec::new();
    if let Some(name) = metadata_path.file_name() {
        out.push(dir.join(name));
    }
    if let Some(stem) = model_file.file_stem() {
        let p = dir.join(format!("{}.json", stem.to_string_lossy()));
        if !out.contains(&p) {
            out.push(p);
        }
    }
    out
}

/// Loads the first reference file of [`candidates`] that exists.
pub fn load(
    metadata_path: &Path,
    model_file: &Path,
    input_len: usize,
) -> Result<(PathBuf, Vec<Case>)> {
    let tried = candidates(metadata_path, model_file);
    for p in &tried {
        if p.is_file() {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            let cases = parse(&text, input_len).with_context(|| format!("{}", p.display()))?;
            return Ok((p.clone(), cases));
        }
    }
    bail!(
        "no reference windows: tried {}",
        tried
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// Largest absolute difference between two equally long slices; `None`
/// when the lengths differ or either is empty.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> Option<f32> {
    if a.len() != b.len() || a.is_empty() {
        return None;
    }
    Some(
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max),
    )
}

/// Index of the largest value (the first of equals).
pub fn argmax(v: &[f32]) -> Option<usize> {
    v.iter()
        .enumerate()
        .fold(None, |best: Option<(usize, f32)>, (i, &x)| match best {
            Some((_, b)) if x <= b => best,
            _ => Some((i, x)),
        })
        .map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_and_nested_inputs_read_row_major() {
        let text = r#"{"cases": [
            {"input": [[1, 2, 3], [4, 5, 6]], "output": [[0.25, 0.75]]},
            {"input": [1.5, 2, 3, 4, 5, 6.5], "output": [1, 0]}
        ], "model": "edge.int8.onnx"}"#;
        let cases = parse(text, 6).unwrap();
        assert_eq!(cases.len(), 2);
        assert_eq!(cases[0].input, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        assert_eq!(cases[0].output, vec![0.25, 0.75]);
        assert_eq!(cases[1].input[0], 1.5);
        assert_eq!(cases[1].output, vec![1.0, 0.0]);
    }

    #[test]
    fn wrong_length_or_shape_is_refused_with_the_case() {
        let e = parse(r#"{"cases": [{"input": [1, 2], "output": []}]}"#, 3).unwrap_err();
        assert!(
            format!("{e:#}").contains("case 0: input has 2 values"),
            "{e:#}"
        );
        let e = parse(r#"{"cases": [{"input": [1, "x", 3]}]}"#, 3).unwrap_err();
        assert!(format!("{e:#}").contains("expected numbers"), "{e:#}");
        assert!(parse(r#"{"cases": []}"#, 3).is_err());
        assert!(parse(r#"{"windows": []}"#, 3).is_err());
    }

    #[test]
    fn reference_path_follows_the_metadata_name() {
        let c = candidates(
            Path::new("models/acsf1/edge.int8.json"),
            Path::new("edge.int8.onnx"),
        );
        assert_eq!(
            c,
            vec![PathBuf::from("models/acsf1/reference/edge.int8.json")]
        );
        let c = candidates(
            Path::new("models/acsf1/edge.json"),
            Path::new("edge-v2.onnx"),
        );
        assert_eq!(
            c,
            vec![
                PathBuf::from("models/acsf1/reference/edge.json"),
                PathBuf::from("models/acsf1/reference/edge-v2.json")
            ]
        );
    }

    #[test]
    fn diff_and_argmax() {
        assert_eq!(max_abs_diff(&[1.0, 2.0], &[1.5, 1.0]), Some(1.0));
        assert_eq!(max_abs_diff(&[1.0], &[1.0, 2.0]), None);
        assert_eq!(argmax(&[0.1, 0.7, 0.7, 0.1]), Some(1));
        assert_eq!(argmax(&[]), None);
    }
}
