//! The README's one command: `cloud-hub demo` starts a hub and real agents,
//! and its `--json` summary accounts for every record.

use std::process::Command;

use conveyor_e2e::*;

#[test]
fn demo_runs_and_loses_nothing() {
    let out = Command::new(hub_bin())
        .args([
            "demo",
            "--agents",
            "3",
            "--duration",
            "4",
            "--rate",
            "200",
            "--json",
        ])
        .args([
            "--mqtt-port",
            &free_port().to_string(),
            "--http-port",
            &free_port().to_string(),
        ])
        .arg("--data-dir")
        .arg(repo_root().join("models/data"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed:\n{stderr}");
    assert!(
        stderr.contains("/api/v1/devices"),
        "prints where the API is:\n{stderr}"
    );
    let s: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {stderr}"));
    assert_eq!(s["agents"], 3);
    assert_eq!(s["agents_failed"], 0, "{s}");
    let sent = s["records_sent"].as_u64().unwrap();
    assert!(sent > 0, "{s}");
    assert_eq!(s["records_received"].as_u64(), Some(sent), "{s}");
    assert_eq!(s["records_lost"], 0, "{s}");
    assert_eq!(s["devices"].as_array().unwrap().len(), 3);
    assert!(s["latency_p99_ms"].as_f64().unwrap() >= s["latency_p50_ms"].as_f64().unwrap());
}
