//! The wasmtime settings every transform runs under, kept in one place
//! because compiled code loads only into an engine with the settings it
//! was compiled for.
//!
//! The agent builds its engine here. The hub precompiles each pushed
//! transform here, once per agent target ([`AGENT_TARGETS`]), so that an
//! agent built without the compiler (edge-agent `--no-default-features`:
//! no Cranelift, a smaller binary) loads the module with wasmtime's
//! runtime alone. Precompiled code is for a target's baseline CPU (no
//! host feature is inferred), so it runs on every machine of that target;
//! wasmtime itself refuses code from another version, target or setting
//! when it is loaded, with the reason.

pub use wasmtime;

/// The target triple this build runs on: the precompiled file an agent
/// without a compiler looks for.
pub const HOST_TARGET: &str = env!("CONVEYOR_WASM_TARGET");

/// The agent's release targets: what the hub precompiles every transform
/// for.
pub const AGENT_TARGETS: &[&str] = &["x86_64-unknown-linux-gnu", "aarch64-unknown-linux-gnu"];

/// The settings: fuel (what stops an endless loop: deterministic, per
/// call) and a bounded WASM stack.
pub fn config() -> wasmtime::Config {
    let mut config = wasmtime::Config::new();
    config.consume_fuel(true);
    config.max_wasm_stack(512 << 10);
    config
}

/// The engine transforms run in, for this host.
pub fn engine() -> Result<wasmtime::Engine, String> {
    wasmtime::Engine::new(&config()).map_err(|e| format!("{e:#}"))
}

/// A module compiled for `target`'s baseline CPU, in the form
/// `Module::deserialize` loads, and how long the compile took.
#[cfg(feature = "compiler")]
pub fn precompile(wasm: &[u8], target: &str) -> Result<(Vec<u8>, std::time::Duration), String> {
    let started = std::time::Instant::now();
    let mut config = config();
    config
        .target(target)
        .map_err(|e| format!("target {target}: {e:#}"))?;
    let engine =
        wasmtime::Engine::new(&config).map_err(|e| format!("an engine for {target}: {e:#}"))?;
    let code = engine
        .precompile_module(wasm)
        .map_err(|e| format!("compiling for {target}: {e:#}"))?;
    Ok((code, started.elapsed()))
}

#[cfg(all(test, feature = "compiler"))]
mod tests {
    use super::*;

    const MODULE: &str = r#"(module (func (export "f") (result i32) i32.const 7))"#;

    #[test]
    fn host_precompiled_code_loads_and_runs_in_the_runtime_s_engine() {
        let wasm = wat::parse_str(MODULE).unwrap();
        let (code, _) = precompile(&wasm, HOST_TARGET).unwrap();
        let engine = engine().unwrap();
        // SAFETY: compiled a moment ago by this crate's own settings.
        let module = unsafe { wasmtime::Module::deserialize(&engine, &code) }.unwrap();
        let mut store = wasmtime::Store::new(&engine, ());
        store.set_fuel(1_000).unwrap();
        let instance = wasmtime::Instance::new(&mut store, &module, &[]).unwrap();
        let f = instance.get_typed_func::<(), i32>(&mut store, "f").unwrap();
        assert_eq!(f.call(&mut store, ()).unwrap(), 7);
    }

    #[test]
    fn code_for_another_target_is_refused_with_the_reason() {
        let wasm = wat::parse_str(MODULE).unwrap();
        let other = AGENT_TARGETS
            .iter()
            .find(|t| **t != HOST_TARGET)
            .expect("two agent targets");
        let Ok((code, _)) = precompile(&wasm, other) else {
            // Built without `all-targets`: only the host's backend is in.
            return;
        };
        let engine = engine().unwrap();
        // SAFETY: wasmtime checks the target before it maps any code.
        let err = unsafe { wasmtime::Module::deserialize(&engine, &code) }.unwrap_err();
        assert!(
            format!("{err:#}").contains("compiled for architecture"),
            "{err:#}"
        );
    }

    #[test]
    fn an_unknown_target_is_named() {
        let err = precompile(b"\0asm\x01\0\0\0", "sparc-sun-nonsense").unwrap_err();
        assert!(err.contains("sparc-sun-nonsense"), "{err}");
    }
}
