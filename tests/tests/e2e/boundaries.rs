//! The crate boundaries ARCHITECTURE.md states, read from cargo's own
//! dependency graph: the hub's production build carries no agent (and so
//! no wasmtime or Cranelift), and the agent does not build the embedded
//! broker.

use std::process::Command;

use conveyor_e2e::repo_root;

/// The packages `package` depends on (normal and build dependencies, the
/// default features), one name each.
fn dependencies(package: &str) -> Vec<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(repo_root())
        .args(["tree", "--offline", "--locked", "-e", "normal,build"])
        .args(["--prefix", "none", "-f", "{p}", "-p", package])
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
    let hub = dependencies("cloud-hub");
    assert!(hub.iter().any(|p| p == "conveyor-model"), "{hub:?}");
    for banned in ["edge-agent", "wasmtime", "cranelift-codegen", "sled"] {
        assert!(
            !hub.iter().any(|p| p == banned),
            "cloud-hub depends on {banned}"
        );
    }
    let agent = dependencies("edge-agent");
    assert!(agent.iter().any(|p| p == "conveyor-transport"), "{agent:?}");
    for banned in ["cloud-hub", "rumqttd"] {
        assert!(
            !agent.iter().any(|p| p == banned),
            "edge-agent depends on {banned}"
        );
    }
}
