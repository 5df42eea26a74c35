//! The crate boundaries ARCHITECTURE.md states, read from cargo's own
//! dependency graph: the hub's production build carries no agent (its
//! wasmtime is there only through `conveyor-wasm-engine`, to precompile
//! transforms), the agent does not build the embedded broker, and the
//! small agent (`--no-default-features`) carries no Cranelift.

use std::process::Command;

use conveyor_e2e::repo_root;

/// The packages `package` depends on (normal and build dependencies, the
/// default features unless `extra` says otherwise), one name each.
fn dependencies(package: &str, extra: &[&str]) -> Vec<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(repo_root())
        .args(["tree", "--offline", "--locked", "-e", "normal,build"])
        .args(["--prefix", "none", "-f", "{p}", "-p", package])
        .args(extra)
        .output()
        .expect("running cargo tree");
    assert!(
        out.status.success(),
        "cargo tree -p {package}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(String::from))
        .collect()
}

#[test]
fn the_hub_does_not_carry_the_agent_and_the_agent_not_the_broker() {
    let hub = dependencies("cloud-hub", &[]);
    assert!(hub.iter().any(|p| p == "conveyor-model"), "{hub:?}");
    for banned in ["edge-agent", "sled"] {
        assert!(
            !hub.iter().any(|p| p == banned),
            "cloud-hub depends on {banned}"
        );
    }
    // The hub's wasmtime comes only through the shared engine settings.
    let direct = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(repo_root())
        .args([
            "tree",
            "--offline",
            "--locked",
            "-e",
            "normal",
            "--depth",
            "1",
        ])
        .args(["--prefix", "none", "-f", "{p}", "-p", "cloud-hub"])
        .output()
        .expect("running cargo tree");
    let direct = String::from_utf8_lossy(&direct.stdout).into_owned();
    assert!(direct.contains("conveyor-wasm-engine"), "{direct}");
    assert!(
        !direct.lines().any(|l| l.starts_with("wasmtime ")),
        "cloud-hub depends on wasmtime directly: {direct}"
    );
    let agent = dependencies("edge-agent", &[]);
    assert!(agent.iter().any(|p| p == "conveyor-transport"), "{agent:?}");
    for banned in ["cloud-hub", "rumqttd"] {
        assert!(
            !agent.iter().any(|p| p == banned),
            "edge-agent depends on {banned}"
        );
    }
    assert!(agent.iter().any(|p| p == "cranelift-codegen"), "{agent:?}");
    let small = dependencies("edge-agent", &["--no-default-features"]);
    assert!(small.iter().any(|p| p == "wasmtime"), "{small:?}");
    for banned in [
        "cranelift-codegen",
        "wasmtime-internal-cranelift",
        "rumqttd",
    ] {
        assert!(
            !small.iter().any(|p| p == banned),
            "the small edge-agent depends on {banned}"
        );
    }
}
