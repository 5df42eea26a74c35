//! The held-out test split of a model's data set, cut into the model's
//! windows: what the cascade report, the tests and the benchmark feed the
//! models. Each example of a UEA/UCR `.ts` file is one window of readings
//! with one label.

use std::path::{Path, PathBuf};

use conveyor_model::recording::{Recording, ReplayFileError};
use conveyor_shared::ModelMetadata;

/// One window of raw readings (sensor units), reading by reading.
#[derive(Debug, Clone, PartialEq)]
pub struct TestWindow {
    /// `window x channels` values.
    pub values: Vec<f32>,
    pub label: String,
}

/// `<data_dir>/<dataset>/<dataset>_TEST.ts`.
pub fn test_split_path(data_dir: &Path, meta: &ModelMetadata) -> PathBuf {
    data_dir
        .join(&meta.dataset)
        .join(format!("{}_TEST.ts", meta.dataset))
}

#[derive(Debug, thiserror::Error)]
pub enum SplitError {
    #[error(transparent)]
    File(#[from] ReplayFileError),
    #[error("{path}: readings have {got} values, model {model} takes {want} channels")]
    Channels {
        path: String,
        model: String,
        got: usize,
        want: usize,
    },
}

/// The test split's windows for `meta`'s model (a trailing partial window
/// is left out).
pub fn test_windows(data_dir: &Path, meta: &ModelMetadata) -> Result<Vec<TestWindow>, SplitError> {
    let path = test_split_path(data_dir, meta);
    let rec = Recording::load(&path, None)?;
    let mut out = Vec::with_capacity(rec.rows.len() / meta.window);
    for chunk in rec.rows.chunks_exact(meta.window) {
        if let Some(bad) = chunk.iter().find(|r| r.values.len() != meta.channels) {
            return Err(SplitError::Channels {
                path: path.display().to_string(),
                model: meta.id.clone(),
                got: bad.values.len(),
                want: meta.channels,
            });
        }
        out.push(TestWindow {
            values: chunk
                .iter()
                .flat_map(|r| r.values.iter().map(|v| *v as f32))
                .collect(),
            label: chunk[0].label.clone(),
        });
    }
    Ok(out)
}
