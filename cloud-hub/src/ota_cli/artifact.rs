//! `cloud-hub artifact push | list | show`.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

use super::http::{check, multipart, request};

/// The files of the artifact `path` names: a model's metadata `.json` and
/// the ONNX file it names beside it, or one `.wasm`.
pub fn artifact_files(path: &Path) -> Result<Vec<(String, Vec<u8>)>> {
    let name = |p: &Path| -> Result<String> {
        Ok(p.file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| anyhow!("{}: no file name", p.display()))?
            .to_string())
    };
    let read = |p: &Path| std::fs::read(p).with_context(|| format!("cannot read {}", p.display()));
    match path.extension().and_then(|e| e.to_str()) {
        Some("json") => {
            let bytes = read(path)?;
            let meta: conveyor_shared::ModelMetadata = serde_json::from_slice(&bytes)
                .with_context(|| format!("{} is not model metadata", path.display()))?;
            let onnx: PathBuf = path
                .parent()
                .unwrap_or(Path::new("."))
                .join(&meta.model_file);
            let onnx_bytes =
                read(&onnx).with_context(|| format!("the ONNX file {} names", path.display()))?;
            Ok(vec![(name(path)?, bytes), (name(&onnx)?, onnx_bytes)])
        }
        Some("wasm") => Ok(vec![(name(path)?, read(path)?)]),
        _ => bail!(
            "{}: give a model's metadata (.json, its ONNX file beside it) or a transform (.wasm)",
            path.display()
        ),
    }
}

/// One line for an artifact: `name@version (kind, N bytes) id ID`.
pub fn summary(a: &Value) -> String {
    format!(
        "{}@{} ({}, {} bytes) id {}",
        a["name"].as_str().unwrap_or("?"),
        a["version"].as_str().unwrap_or("?"),
        a["kind"].as_str().unwrap_or("?"),
        a["size_bytes"],
        a["id"].as_str().unwrap_or("?"),
    )
}

pub async fn push(hub: &str, path: &Path) -> Result<()> {
    let files = artifact_files(path)?;
    let (status, a) = request(hub, "POST", "/api/v1/artifacts", Some(multipart(&files)?)).await?;
    check(status, &a, &format!("push {}", path.display()))?;
    let how = if status == 201 {
        "pushed"
    } else {
        "already in the registry"
    };
    println!("{how}: {}", summary(&a));
    println!("signed by {}", a["signed_by"].as_str().unwrap_or("?"));
    Ok(())
}

pub async fn list(hub: &str, as_json: bool) -> Result<()> {
    let (status, v) = request(hub, "GET", "/api/v1/artifacts", None).await?;
    check(status, &v, "artifact list")?;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let all = v["artifacts"].as_array().cloned().unwrap_or_default();
    if all.is_empty() {
        eprintln!(
            "no artifacts (push one with `cloud-hub artifact push <model.json | transform.wasm>`)"
        );
    }
    for a in all {
        println!("{}", summary(&a));
    }
    Ok(())
}

pub async fn show(hub: &str, reference: &str) -> Result<()> {
    if reference.is_empty() || reference.contains(['/', '?', '#', ' ']) {
        bail!("artifact show: give an id or name@version, got {reference:?}");
    }
    let (status, v) = request(hub, "GET", &format!("/api/v1/artifacts/{reference}"), None).await?;
    check(status, &v, "artifact show")?;
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(())
}
