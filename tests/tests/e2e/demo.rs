//! The README's one command: `conveyor-demo` starts a hub and real agents,
//! and its `--json` summary accounts for every record.

use std::process::Command;

use conveyor_e2e::*;

#[test]
fn demo_runs_and_loses_nothing() {
    let (s, stderr) = run_demo(&[
        "--agents",
        "3",
        "--duration",
        "5",
        "--rate",
        "200",
        "--update-after",
        "2",
    ]);
    assert!(
        stderr.contains("/api/v1/devices"),
        "prints where the API is:\n{stderr}"
    );
    let first_url = stderr
        .lines()
        .find(|l| l.contains("http://"))
        .unwrap_or_default();
    assert!(
        first_url.trim_start().starts_with("dashboard http://"),
        "the dashboard's URL comes first:\n{stderr}"
    );
    assert_eq!(s["agents"], 3);
    assert_eq!(s["devices"].as_array().unwrap().len(), 3);
    // Every agent runs its data set's edge model; the watches (a window
    // every 0.5 s at 200 readings/s) have predictions in 4 s.
    for d in s["devices"].as_array().unwrap() {
        let model = d["model"].as_str().unwrap();
        if d["stream"] == "motion" {
            assert!(model.starts_with("basicmotions-edge@"), "{d}");
            assert!(d["predictions"].as_u64().unwrap() >= 2, "{d}");
            assert_eq!(d["predictions_scored"], d["predictions"], "{d}");
        }
    }
    assert!(s["predictions_correct"].as_u64().unwrap() > 0, "{s}");
    // Over the air, while they streamed: the hub pushed the watches'
    // better model and each watch reports running it; the plug kept its
    // own. Nothing was lost across the switch (above).
    let update = &s["update"];
    assert_eq!(update["artifact"], "basicmotions-edge@2.0.0-int8", "{s}");
    assert_eq!(update["applied"], 2, "{s}");
    assert_eq!(update["failed"], serde_json::json!({}), "{s}");
    for d in s["devices"].as_array().unwrap() {
        if d["stream"] == "motion" {
            assert_eq!(d["running"], "basicmotions-edge@2.0.0-int8", "{d}");
            assert!(
                d["updated_after_s"].as_f64().unwrap()
                    >= update["deployed_after_s"].as_f64().unwrap(),
                "{d}"
            );
        } else {
            assert_eq!(d["running"], "acsf1-edge@1.0.0-int8", "{d}");
            assert!(d["updated_after_s"].is_null(), "{d}");
        }
    }
    // Every edge prediction got exactly one final result (the cascade is
    // on: unsure windows were decided by the hub's models).
    assert_eq!(s["final_results"], s["predictions"], "{s}");
    for d in s["devices"].as_array().unwrap() {
        assert_eq!(d["finals"]["results"], d["predictions"], "{d}");
        assert_eq!(d["finals"]["hub_errors"], 0, "{d}");
    }
    // And the offline cascade table, for both data sets.
    let report = s["cascade_report"]["datasets"].as_array().unwrap();
    assert_eq!(report.len(), 2, "{s}");
    assert!(s["latency_p99_ms"].as_f64().unwrap() >= s["latency_p50_ms"].as_f64().unwrap());
}

/// The pids of `parent`'s children, from /proc.
fn children_of(parent: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                // Field 4 (after the parenthesised command) is the parent pid.
                let after = stat.rsplit_once(") ").map_or("", |(_, rest)| rest);
                after.split_whitespace().nth(1) == Some(&parent.to_string())
            })
        })
        .collect()
}

fn alive(pid: u32) -> bool {
    // A zombie has exited; only its parent's wait() is missing.
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
}

#[test]
fn ctrl_c_stops_every_process_the_demo_started() {
    let dir = tempfile::tempdir().unwrap();
    let http_port = free_port();
    let mut cmd = Command::new(demo_bin());
    cmd.args(["--agents", "2", "--rate", "50"])
        .args([
            "--mqtt-port",
            &free_port().to_string(),
            "--http-port",
            &http_port.to_string(),
        ])
        .arg("--data-dir")
        .arg(repo_root().join("models/data"));
    let mut demo = Proc::spawn("demo", cmd, dir.path().join("demo.log"));
    let api: std::net::SocketAddr = ([127, 0, 0, 1], http_port).into();
    wait_for("both agents online", || {
        let stats = http(api, "GET", "/api/v1/stats", None).ok()?;
        let v: serde_json::Value = serde_json::from_str(&stats.1).ok()?;
        (v["devices_online"] == 2).then_some(())
    });
    let agents = children_of(demo.pid());
    assert_eq!(agents.len(), 2, "two agent processes: {agents:?}");
    demo.signal(libc::SIGINT);
    let status = demo.wait();
    assert!(status.success(), "{}", demo.log());
    assert!(demo.log().contains("Summary:"), "{}", demo.log());
    for pid in agents {
        wait_for(&format!("agent {pid} to be gone"), || {
            (!alive(pid)).then_some(())
        });
    }
}

/// The demo moved out of the hub: `cloud-hub demo` says where it went, and
/// the demo's own binary explains its options.
#[test]
fn cloud_hub_demo_points_to_conveyor_demo() {
    let out = Command::new(hub_bin())
        .args(["demo", "--agents", "3"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("cargo run --release -p conveyor-demo"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");

    let help = Command::new(demo_bin()).arg("--help").output().unwrap();
    assert!(help.status.success());
    let help = String::from_utf8_lossy(&help.stdout);
    for option in ["--agents", "--rate", "--duration", "--json", "--broker-url"] {
        assert!(help.contains(option), "{help}");
    }
    assert!(
        !help.contains("\n  agent"),
        "the agent subcommand is hidden:\n{help}"
    );
}
