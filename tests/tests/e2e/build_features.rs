//! The harness builds the binaries with its own `cargo build -p cloud-hub
//! -p edge-agent --bins` (`binaries()` in `src/lib.rs`). Cargo resolves
//! features per command: a test run also turns on what the workspace's
//! dev-dependencies ask for, a plain build does not. Where the two differ,
//! the harness compiles every crate from the first difference up (tract,
//! both binaries) a second time, after the test run compiled them once.
//! This checks, with `cargo tree`, that the harness's build resolves each
//! of its packages with the features `cargo test --workspace` and `cargo
//! test -p conveyor-e2e` resolve for it. A new dev-dependency that turns on
//! a feature of something the binaries use fails here: ask for the same
//! feature in the binaries' own dependencies (see edge-agent's Cargo.toml).

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use conveyor_e2e::repo_root;

/// Package (`name version`) -> features, as `cargo tree` resolves them
/// for `args`. (A package built for the host and for the target is one
/// entry here, with the union of both.)
fn resolved(args: &[&str]) -> BTreeMap<String, BTreeSet<String>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(repo_root())
        .args(["tree", "--offline", "--prefix", "none", "-f", "{p} {f}"])
        .args(args)
        .output()
        .expect("running cargo tree");
    assert!(
        out.status.success(),
        "cargo tree {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut packages = BTreeMap::<String, BTreeSet<String>>::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let mut words = line.split_whitespace();
        let (Some(name), Some(version)) = (words.next(), words.next()) else {
            continue;
        };
        // The rest: `(path)`, `(proc-macro)`, `(*)` and the feature list.
        let features = packages.entry(format!("{name} {version}")).or_default();
        for w in words.filter(|w| !w.starts_with('(')) {
            features.extend(w.split(',').map(String::from));
        }
    }
    packages
}

#[test]
fn the_harness_build_resolves_the_features_the_test_run_compiled() {
    let harness = resolved(&["-p", "cloud-hub", "-p", "edge-agent", "-e", "normal,build"]);
    assert!(
        harness.keys().any(|p| p.starts_with("tract-core ")),
        "{harness:?}"
    );
    for (run, args) in [
        (
            "cargo test --workspace",
            &["--workspace", "-e", "normal,build,dev"][..],
        ),
        (
            "cargo test -p conveyor-e2e",
            &["-p", "conveyor-e2e", "-e", "normal,build,dev"][..],
        ),
    ] {
        let test = resolved(args);
        let differ: Vec<String> = harness
            .iter()
            .filter(|(p, f)| test.get(*p) != Some(f))
            .map(|(p, f)| format!("{p}: harness {f:?}, {run} {:?}", test.get(p)))
            .collect();
        assert!(
            differ.is_empty(),
            "the harness's cargo build would compile these (and all above them) again \
             after {run}:\n{}",
            differ.join("\n")
        );
    }
}
