//! The edge agent on the architecture it ships to: cross-compiled for
//! 64-bit ARM (`aarch64-unknown-linux-gnu`, Raspberry Pi class) with
//! Debian's cross toolchain and run under qemu-user against a hub on
//! loopback. The agent is the small edge build, without the WASM compiler
//! (`--no-default-features`): it replays the BasicMotions test split
//! through a WASM transform whose aarch64 code `cloud-hub precompile` made
//! on this x86_64 machine, and the int8 edge model (tract's aarch64
//! kernels); mid-run the hub deploys another transform, which it
//! precompiled at push, and the agent downloads the module and its aarch64
//! code only and swaps it in. The hub must receive and score every window
//! as the model card says.
//!
//! Needs `aarch64-linux-gnu-gcc`, `qemu-aarch64-static` and the Rust
//! target (`.ci/run` installs all three; `.cargo/config.toml` names the
//! linker). Without them the test says loudly that it was skipped.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use conveyor_e2e::*;
use serde_json::Value;

const TARGET: &str = "aarch64-unknown-linux-gnu";
const QEMU: &str = "qemu-aarch64-static";
/// Where Debian's cross libc lives: qemu-user's root for the dynamic loader.
const SYSROOT: &str = "/usr/aarch64-linux-gnu";

fn on_path(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn target_installed() -> bool {
    Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .is_ok_and(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l == TARGET)
        })
}

/// What is missing for the cross build and its run, if anything.
fn missing() -> Vec<&'static str> {
    let mut out = Vec::new();
    if !on_path("aarch64-linux-gnu-gcc") {
        out.push("aarch64-linux-gnu-gcc (Debian: gcc-aarch64-linux-gnu)");
    }
    if !on_path(QEMU) {
        out.push("qemu-aarch64-static (Debian: qemu-user-static)");
    }
    if !Path::new(SYSROOT)
        .join("lib/ld-linux-aarch64.so.1")
        .exists()
    {
        out.push("the aarch64 libc (Debian: libc6-dev-arm64-cross)");
    }
    if !target_installed() {
        out.push("the Rust target (rustup target add aarch64-unknown-linux-gnu)");
    }
    out
}

/// `cargo build -p edge-agent --no-default-features --target
/// aarch64-unknown-linux-gnu` in the profile the tests run in (`.ci/run`
/// builds the same beforehand); the path of the binary.
fn cross_build() -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(repo_root())
        .args([
            "build",
            "--quiet",
            "--locked",
            "-p",
            "edge-agent",
            "--bin",
            "edge-agent",
            "--no-default-features",
            "--target",
            TARGET,
            "--message-format=json",
        ])
        .stderr(Stdio::inherit());
    if !cfg!(debug_assertions) {
        cmd.arg("--release");
    }
    let out = cmd.output().expect("running cargo build");
    assert!(
        out.status.success(),
        "the aarch64 build of edge-agent failed"
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|m| m["target"]["name"] == "edge-agent" && m["target"]["kind"][0] == "bin")
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .expect("cargo named the edge-agent executable")
}

/// The ELF header's machine field: 183 is AArch64, 62 is x86-64.
fn elf_machine(bin: &Path) -> u16 {
    let bytes = std::fs::read(bin).unwrap();
    assert_eq!(
        &bytes[..4],
        b"\x7fELF",
        "{} is not an ELF file",
        bin.display()
    );
    u16::from_le_bytes([bytes[18], bytes[19]])
}

fn qemu(bin: &Path) -> Command {
    let mut cmd = Command::new(QEMU);
    cmd.args(["-L", SYSROOT]).arg(bin);
    cmd
}

#[test]
fn the_agent_cross_built_for_aarch64_runs_under_qemu_and_the_hub_scores_every_window() {
    let missing = missing();
    if !missing.is_empty() {
        eprintln!(
            "SKIPPED aarch64: missing {}; see tests/tests/e2e/aarch64.rs",
            missing.join(", ")
        );
        return;
    }
    let bin = cross_build();
    assert_eq!(
        elf_machine(&bin),
        183,
        "{} is not an AArch64 binary",
        bin.display()
    );

    let dir = tempfile::tempdir().unwrap();
    let hub = Hub::start(dir.path());
    let model = repo_root().join("models/basicmotions/edge.int8.json");
    let modules = dir.path().join("modules");
    std::fs::create_dir_all(&modules).unwrap();
    let passthrough = modules.join("passthrough.wasm");
    std::fs::copy(
        repo_root().join("transforms/dist/passthrough.wasm"),
        &passthrough,
    )
    .unwrap();
    // 40 series x 100 readings, replayed once at 200 readings/s: 20 s, in
    // which the hub's deploy lands.
    let mut config = AgentConfig::for_device("pi-1")
        .data_dir("state")
        .uplink(&hub.mqtt_url())
        .uplink_with(|u| u.heartbeat_secs = 0.5)
        .source(ReplayConfig {
            rate: Some(200.0),
            ..ReplayConfig::new("motion", data_file("BasicMotions/BasicMotions_TEST.ts"))
        })
        .stage(TransformStageConfig {
            name: Some("motion-prep".into()),
            ..TransformStageConfig::new("motion", vec![ChainEntry::new(&passthrough)])
        })
        .stage(InferenceConfig {
            name: Some("motion-classifier".into()),
            ..InferenceConfig::new(&model)
        });
    config.ota = Some(edge_agent::ota::OtaConfig {
        trusted_keys: vec![hub.signing_key().parse().unwrap()],
        url: format!("http://{}", hub.http),
        cache_max_mb: 64,
        max_artifact_mb: 16,
    });
    let config_path = write_agent_config(dir.path(), "pi-1", &config);
    let check = || {
        qemu(&bin)
            .args(["check", "--config"])
            .arg(&config_path)
            .current_dir(dir.path())
            .output()
            .unwrap()
    };

    // Without a compiler and without code for it, the module is refused
    // by `check`, which names the file it looked for.
    let refused = check();
    let said = String::from_utf8_lossy(&refused.stderr).into_owned()
        + &String::from_utf8_lossy(&refused.stdout);
    assert!(!refused.status.success(), "{said}");
    assert!(
        said.contains("built without the WASM compiler")
            && said.contains("passthrough.aarch64-unknown-linux-gnu.cwasm"),
        "{said}"
    );

    // `cloud-hub precompile` cross-compiles it on this machine, beside it.
    let out = Command::new(hub_bin())
        .args(["precompile", "--target", TARGET])
        .arg(&passthrough)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(modules
        .join("passthrough.aarch64-unknown-linux-gnu.cwasm")
        .is_file());

    // `check`: every config check of the aarch64 build, the model's load
    // and the precompiled module's load included, passes.
    let check = check();
    assert!(
        check.status.success(),
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );

    // `scale` pushed: the hub precompiles it for every agent target.
    let scale = repo_root().join("transforms/dist/scale.wasm");
    hub_cli_ok(&hub, &["artifact", "push", &scale.display().to_string()]);
    let artifact = &hub.get("/api/v1/artifacts")["artifacts"][0];
    let files: Vec<&str> = artifact["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert!(
        files.contains(&"scale.aarch64-unknown-linux-gnu.cwasm")
            && files.contains(&"scale.x86_64-unknown-linux-gnu.cwasm"),
        "{files:?}"
    );
    let name = artifact["name"].as_str().unwrap();
    let tag = format!("{name}@{}", artifact["version"].as_str().unwrap());
    let scaled_by_one = format!(r#"{name}={{"scale": 1.0}}"#);

    let mut cmd = qemu(&bin);
    cmd.args(["run", "--config"]).arg(&config_path);
    let mut agent = Proc::spawn("pi-1", cmd, dir.path().join("pi-1.log"));
    hub.wait_for_records("pi-1", 1);
    // Scaled by 1: the same readings, so the same predictions.
    let (code, out, err) = hub_cli(
        &hub,
        &[
            "deploy",
            "--device",
            "pi-1",
            "--stage",
            "motion-prep",
            "--artifact",
            &tag,
            "--config",
            &scaled_by_one,
            "--wait",
            "--timeout",
            "120",
        ],
    );
    assert_eq!(code, Some(0), "{out}{err}\n{}", agent.log());
    assert!(agent.wait().success(), "{}", agent.log());
    hub.wait_for_records("pi-1", 40);
    let records = hub.all_records("pi-1");
    assert_eq!(records.len(), 40, "every window once");
    assert!(records.iter().all(|r| r["stream"] == "motion.predictions"));
    let device = hub.device("pi-1").unwrap();
    let version = records[0]["prediction"]["model_version"].as_str().unwrap();
    let tally = &device["predictions"][format!("basicmotions-edge@{version}")];
    assert_eq!(tally["scored"], 40, "{device}");
    let meta: Value = serde_json::from_slice(&std::fs::read(&model).unwrap()).unwrap();
    let accuracy = meta["metrics"]["test_accuracy"].as_f64().unwrap();
    let correct = tally["correct"].as_u64().unwrap();
    assert!(
        (correct as f64 / 40.0 - accuracy).abs() <= 1.0 / 40.0 + 1e-9,
        "the aarch64 agent scored {correct}/40, the model card says {accuracy}"
    );
    let stages = &device["last_heartbeat"]["stages"];
    assert_eq!(stages[0]["name"], "motion-prep", "{device}");
    assert_eq!(stages[1]["name"], "motion-classifier", "{device}");
    assert_eq!(stages[1]["windows"], 40, "{device}");

    // The agent downloaded the module and its own target's code, not the
    // x86_64 code it cannot run.
    let mut names = Vec::new();
    let mut todo = vec![dir.path().join("state")];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            if e.path().is_dir() {
                todo.push(e.path());
            } else {
                names.push(e.file_name().to_string_lossy().into_owned());
            }
        }
    }
    assert!(names.iter().any(|n| n == "scale.wasm"), "{names:?}");
    assert!(
        names
            .iter()
            .any(|n| n == "scale.aarch64-unknown-linux-gnu.cwasm"),
        "{names:?}"
    );
    assert!(!names.iter().any(|n| n.contains("x86_64")), "{names:?}");
}
