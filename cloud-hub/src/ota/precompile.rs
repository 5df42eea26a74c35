//! A pushed transform compiled at push time for every agent target
//! (`conveyor_wasm_engine::AGENT_TARGETS`), so that an agent built
//! without a compiler (no Cranelift: a smaller edge binary) runs it with
//! wasmtime's runtime alone.
//!
//! The code goes into the artifact beside the module, as
//! `<stem>.<target>.cwasm` (`conveyor_shared::ota::precompiled_file_name`),
//! and is signed with it: an agent trusts it exactly as far as it trusts
//! the hub's key. An agent with a compiler downloads only the module and
//! compiles it itself, for its own CPU; one without downloads the module
//! (its identity and ABI checks) and its target's code. The code is for
//! each target's baseline CPU, so it runs on every machine of the target.

use std::path::Path;

use conveyor_shared::ota::precompiled_file_name;
use sha2::{Digest, Sha256};

use super::check::{refused, PushError};
use super::registry::StagedFile;

/// Why code for one target could not be made.
enum Failed {
    /// The compiler refused the module (or the target).
    Compile(String),
    /// The code could not be written.
    Write(String),
}

/// Compiles `wasm` (the module named `module`) for `target` and writes
/// the code into `dir` under the name an agent looks for: its name and
/// bytes, and how long the compile took.
fn compile_into(
    wasm: &[u8],
    module: &str,
    dir: &Path,
    target: &str,
) -> Result<(String, Vec<u8>, std::time::Duration), Failed> {
    let (code, took) = conveyor_wasm_engine::precompile(wasm, target).map_err(Failed::Compile)?;
    let name = precompiled_file_name(module, target);
    let path = dir.join(&name);
    std::fs::write(&path, &code)
        .map_err(|e| Failed::Write(format!("cannot write {}: {e}", path.display())))?;
    Ok((name, code, took))
}

/// Compiles the staged module `module` (in `dir`) for every agent target
/// and stages the code beside it; the staged files to add.
pub fn precompile(dir: &Path, module: &StagedFile) -> Result<Vec<StagedFile>, PushError> {
    let wasm = std::fs::read(dir.join(&module.name))
        .map_err(|e| refused(500, "io", format!("reading the staged module: {e}")))?;
    let mut out = Vec::new();
    for target in conveyor_wasm_engine::AGENT_TARGETS {
        // The module passed the ABI checks, which parse but do not
        // validate every function body; the compile does.
        let (name, code, took) =
            compile_into(&wasm, &module.name, dir, target).map_err(|e| match e {
                Failed::Compile(e) => refused(
                    422,
                    "bad_module",
                    format!("the module does not compile: {e}"),
                ),
                Failed::Write(e) => {
                    refused(500, "io", format!("staging the precompiled module: {e}"))
                }
            })?;
        tracing::info!(
            module = %module.name,
            target,
            bytes = code.len(),
            ms = took.as_millis() as u64,
            "precompiled the transform for agents without a compiler"
        );
        out.push(StagedFile {
            name,
            sha256: hex::encode(Sha256::digest(&code)),
            size: code.len() as u64,
        });
    }
    Ok(out)
}

/// `cloud-hub precompile`: the module at `module` checked as a push is
/// and compiled for each of `targets` (every agent target when empty),
/// the code written beside it (or into `out_dir`) under the name an agent
/// without a compiler looks for. Returns each file written and its size.
pub fn precompile_file(
    module: &Path,
    targets: &[String],
    out_dir: Option<&Path>,
) -> Result<Vec<(std::path::PathBuf, usize)>, String> {
    let wasm =
        std::fs::read(module).map_err(|e| format!("cannot read {}: {e}", module.display()))?;
    conveyor_wasm_abi::check_abi(&wasm)
        .and_then(|_| conveyor_wasm_abi::read_meta(&wasm))
        .map_err(|e| format!("{} fails the transform checks: {e}", module.display()))?;
    let name = module
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| n.ends_with(".wasm"))
        .ok_or_else(|| format!("{}: a transform module is a .wasm file", module.display()))?;
    let dir = match out_dir {
        Some(d) => d.to_path_buf(),
        None => module.parent().map(Path::to_path_buf).unwrap_or_default(),
    };
    let targets: Vec<&str> = if targets.is_empty() {
        conveyor_wasm_engine::AGENT_TARGETS.to_vec()
    } else {
        targets.iter().map(String::as_str).collect()
    };
    let mut written = Vec::new();
    for target in targets {
        let (file, code, _) = compile_into(&wasm, name, &dir, target).map_err(|e| match e {
            Failed::Compile(e) | Failed::Write(e) => e,
        })?;
        written.push((dir.join(file), code.len()));
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn passthrough() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../transforms/dist/passthrough.wasm")
    }

    #[test]
    fn a_push_gets_code_for_every_agent_target_that_the_host_s_runtime_loads() {
        let dir = tempfile::tempdir().unwrap();
        let wasm = std::fs::read(passthrough()).unwrap();
        std::fs::write(dir.path().join("passthrough.wasm"), &wasm).unwrap();
        let module = StagedFile {
            name: "passthrough.wasm".into(),
            sha256: hex::encode(Sha256::digest(&wasm)),
            size: wasm.len() as u64,
        };
        let code = precompile(dir.path(), &module).unwrap();
        let names: Vec<&str> = code.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "passthrough.x86_64-unknown-linux-gnu.cwasm",
                "passthrough.aarch64-unknown-linux-gnu.cwasm"
            ]
        );
        for f in &code {
            let bytes = std::fs::read(dir.path().join(&f.name)).unwrap();
            assert_eq!(bytes.len() as u64, f.size);
            assert_eq!(hex::encode(Sha256::digest(&bytes)), f.sha256);
        }
        // The host's own code loads into the engine the agent runs.
        let host = precompiled_file_name("passthrough.wasm", conveyor_wasm_engine::HOST_TARGET);
        let engine = conveyor_wasm_engine::engine().unwrap();
        // SAFETY: compiled a moment ago with the agent's settings.
        unsafe {
            conveyor_wasm_engine::wasmtime::Module::deserialize_file(&engine, dir.path().join(host))
        }
        .unwrap();
    }

    #[test]
    fn a_module_that_fails_the_checks_is_not_compiled_and_the_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("bad.wasm");
        std::fs::write(&bad, b"\0asm\x01\0\0\0").unwrap();
        let e = precompile_file(&bad, &[], None).unwrap_err();
        assert!(
            e.contains("bad.wasm") && e.contains("transform checks"),
            "{e}"
        );
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        let e = precompile_file(&passthrough(), &["mips-nonsense".into()], Some(dir.path()))
            .unwrap_err();
        assert!(e.contains("mips-nonsense"), "{e}");
    }
}
