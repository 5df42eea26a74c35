//! What a push is, checked the way the agent will check it before it runs
//! it, so the hub never signs what an agent would refuse.
//!
//! A model is its metadata JSON and the ONNX file the metadata names,
//! loaded by the agent's own loader (`OnnxModel::load` with batch 1:
//! metadata fields, the file's sha256, the parse, every operator, the
//! declared shapes). A transform is one `.wasm`, through the ABI's static
//! checks (`conveyor-wasm-abi`, the agent's own). The files are checked
//! where they were staged, as the agent will have them: side by side in
//! one directory. Every refusal carries the checker's own words and a
//! metric label.

use std::path::{Component, Path};

use conveyor_shared::ota::{ArtifactKind, ModelInput, Requires};

use super::registry::StagedFile;

/// Why a push was refused: the HTTP status to answer, the metric label,
/// and the message.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct PushError {
    pub status: u16,
    pub reason: &'static str,
    pub message: String,
}

pub fn refused(status: u16, reason: &'static str, message: impl Into<String>) -> PushError {
    PushError {
        status,
        reason,
        message: message.into(),
    }
}

/// What a checked push is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    pub kind: ArtifactKind,
    pub name: String,
    pub version: String,
    pub requires: Requires,
}

/// A plain file name: what a manifest may list (the same rule as the
/// manifest's own validation), so no name reaches outside its directory.
pub fn is_plain_file_name(n: &str) -> bool {
    !n.is_empty()
        && !n.starts_with('.')
        && n.len() <= 128
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'+'))
}

/// Checks the files staged in `dir`. Messages name the files, not where
/// they were staged.
pub fn check(dir: &Path, files: &[StagedFile]) -> Result<Checked, PushError> {
    let staged = format!("{}/", dir.display());
    check_staged(dir, files).map_err(|mut e| {
        e.message = e.message.replace(&staged, "");
        e
    })
}

fn check_staged(dir: &Path, files: &[StagedFile]) -> Result<Checked, PushError> {
    if let Some(f) = files.iter().find(|f| !is_plain_file_name(&f.name)) {
        return Err(bad_name(&f.name));
    }
    let ends = |ext: &str| files.iter().filter(|f| f.name.ends_with(ext)).count();
    match (files.len(), ends(".wasm"), ends(".json"), ends(".onnx")) {
        (1, 1, _, _) => check_transform(&dir.join(&files[0].name)),
        (2, 0, 1, 1) => check_model(dir, files),
        _ => Err(refused(
            422,
            "bad_files",
            format!(
                "an artifact is one transform module (.wasm), or a model's metadata (.json) \
                 with the ONNX file it names; got {:?}",
                files.iter().map(|f| &f.name).collect::<Vec<_>>()
            ),
        )),
    }
}

pub fn bad_name(name: &str) -> PushError {
    refused(
        422,
        "bad_name",
        format!(
            "file name {:?}: a plain file name of 1-128 of A-Z a-z 0-9 . _ - +, \
             not starting with . (no directories)",
            name.chars().take(160).collect::<String>()
        ),
    )
}

fn check_transform(path: &Path) -> Result<Checked, PushError> {
    let bytes = std::fs::read(path)
        .map_err(|e| refused(500, "io", format!("reading the staged module: {e}")))?;
    let bad = |e: conveyor_wasm_abi::AbiError| {
        refused(
            422,
            "bad_module",
            format!("the module fails the transform checks: {e}"),
        )
    };
    conveyor_wasm_abi::check_abi(&bytes).map_err(bad)?;
    let meta = conveyor_wasm_abi::read_meta(&bytes).map_err(bad)?;
    Ok(Checked {
        kind: ArtifactKind::Transform,
        name: meta.name,
        version: meta.version,
        requires: Requires {
            model_input: None,
            transform_abi: Some(meta.abi),
        },
    })
}

fn check_model(dir: &Path, files: &[StagedFile]) -> Result<Checked, PushError> {
    let named = |ext: &str| {
        files
            .iter()
            .find(|f| f.name.ends_with(ext))
            .map(|f| f.name.as_str())
            .unwrap_or_default()
    };
    let (meta_name, onnx_name) = (named(".json"), named(".onnx"));
    let bad = |message: String| refused(422, "bad_model", message);
    let meta_path = dir.join(meta_name);
    let meta = conveyor_shared::ModelMetadata::load(&meta_path)
        .map_err(|e| bad(format!("{meta_name}: {e}")))?;
    let mut parts = meta.model_file.components();
    let plain = matches!(
        (parts.next(), parts.next()),
        (Some(Component::Normal(n)), None) if n == onnx_name
    );
    if !plain {
        return Err(bad(format!(
            "{meta_name} names model_file {:?}; it must be the plain name of the ONNX file \
             pushed with it ({onnx_name:?})",
            meta.model_file
        )));
    }
    let model = conveyor_model::OnnxModel::load(&meta_path, 1)
        .map_err(|e| bad(format!("the model does not load: {e}")))?;
    let m = model.meta();
    Ok(Checked {
        kind: ArtifactKind::Model,
        name: m.id.clone(),
        version: m.version.clone(),
        requires: Requires {
            model_input: Some(ModelInput {
                channels: m.channels,
                window: m.window,
            }),
            transform_abi: None,
        },
    })
}
