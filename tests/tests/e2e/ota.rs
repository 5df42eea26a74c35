//! Over-the-air updates with real processes: a hub's registry and desired
//! states, agents that verify, download, apply and report, and the ways
//! an update can be wrong (tampered, replayed, signed by someone else).

use std::process::Command;

use conveyor_e2e::*;
use edge_agent::ota::OtaConfig;
use serde_json::Value;

pub(super) const DEVICE: &str = "gw-1";

pub(super) fn model(rel: &str) -> String {
    repo_root().join("models").join(rel).display().to_string()
}

pub(super) fn push(hub: &Hub, file: &str) -> String {
    hub_cli_ok(hub, &["artifact", "push", file])
}

/// `cloud-hub deploy --device DEVICE --stage STAGE --artifact ARTIFACT
/// EXTRA...`: its exit code, stdout and stderr.
pub(super) fn deploy_cli(
    hub: &Hub,
    stage: &str,
    artifact: &str,
    extra: &[&str],
) -> (Option<i32>, String, String) {
    let mut args = vec![
        "deploy",
        "--device",
        DEVICE,
        "--stage",
        stage,
        "--artifact",
        artifact,
    ];
    args.extend_from_slice(extra);
    hub_cli(hub, &args)
}

pub(super) fn agent_config(
    hub: &Hub,
    rate: f64,
    model_json: &str,
    trusted: Vec<String>,
) -> AgentConfig {
    let mut c = AgentConfig::for_device(DEVICE)
        .data_dir("state")
        .uplink(&hub.mqtt_url())
        .uplink_with(|u| u.heartbeat_secs = 0.5)
        .source(ReplayConfig {
            rate: Some(rate),
            ..ReplayConfig::new("motion", data_file("BasicMotions/BasicMotions_TEST.ts"))
        })
        .stage(InferenceConfig {
            name: Some("classify".into()),
            ..InferenceConfig::new(model_json)
        });
    c.tags.insert("store".into(), "7".into());
    c.ota = Some(OtaConfig {
        trusted_keys: trusted.iter().map(|k| k.parse().unwrap()).collect(),
        url: format!("http://{}", hub.http),
        cache_max_mb: 64,
        max_artifact_mb: 16,
    });
    c
}

pub(super) fn state(hub: &Hub) -> Option<Value> {
    let (code, body) = http(
        hub.http,
        "GET",
        &format!("/api/v1/devices/{DEVICE}/state"),
        None,
    )
    .ok()?;
    (code == 200)
        .then(|| serde_json::from_str(&body).ok())
        .flatten()
}

pub(super) fn wait_for_phase(hub: &Hub, generation: u64, phase: &str) -> Value {
    wait_for(&format!("generation {generation} {phase}"), || {
        state(hub).filter(|s| {
            s["last_change"]["generation"].as_u64() == Some(generation)
                && s["last_change"]["phase"] == phase
        })
    })
}

/// The model versions of the device's predictions switch once, from
/// `from` to `to`, and never back; the index of the first `to`.
pub(super) fn assert_one_switch(hub: &Hub, from: &str, to: &str) -> usize {
    let v = versions(hub);
    let switch = v
        .iter()
        .position(|v| v.ends_with(to))
        .unwrap_or_else(|| panic!("{to} ran: {v:?}"));
    assert!(v[..switch].iter().all(|v| v.ends_with(from)), "{v:?}");
    assert!(v[switch..].iter().all(|v| v.ends_with(to)), "{v:?}");
    switch
}

pub(super) fn versions(hub: &Hub) -> Vec<String> {
    hub.all_records(DEVICE)
        .iter()
        .map(|r| {
            r["prediction"]["model_version"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect()
}

#[test]
fn a_deployed_model_is_swapped_in_between_windows_and_bad_updates_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let hub = Hub::start(dir.path());
    let int8 = model("basicmotions/edge.int8.json");
    let fp32 = model("basicmotions/edge.fp32.json");
    let out = push(&hub, &fp32);
    assert!(
        out.contains("pushed: basicmotions-edge@1.0.0-fp32"),
        "{out}"
    );
    // The same again is not a new artifact.
    assert!(push(&hub, &fp32).contains("already in the registry"));
    let (code, list, _) = hub_cli(&hub, &["artifact", "list"]);
    assert_eq!(code, Some(0));
    assert!(
        list.contains("basicmotions-edge@1.0.0-fp32 (model"),
        "{list}"
    );

    // 4000 readings at 200/s: twenty seconds, a window every half second.
    let mut agent = start_agent(
        dir.path(),
        "agent",
        &agent_config(&hub, 200.0, &int8, vec![hub.signing_key()]),
    );
    wait_for("a few predictions", || {
        (hub.records(DEVICE) >= 4).then_some(())
    });
    // What it runs is reported before any update.
    let before = wait_for("the agent's state", || state(&hub));
    assert_eq!(
        before["stages"]["classify"]["running"]["model"]["version"], "1.0.0-int8",
        "{before}"
    );
    assert_eq!(before["tags"]["store"], "7");

    // Deploy by tag, and wait for it.
    let (code, out, err) = hub_cli(
        &hub,
        &[
            "deploy",
            "--tag",
            "store=7",
            "--stage",
            "classify",
            "--artifact",
            "basicmotions-edge@1.0.0-fp32",
            "--wait",
            "--timeout",
            "60",
        ],
    );
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("applied generation 1"), "{out}");
    let applied = state(&hub).unwrap();
    assert_eq!(applied["generation"], 1, "{applied}");
    assert_eq!(
        applied["stages"]["classify"]["running"]["model"]["version"],
        "1.0.0-fp32"
    );
    assert_eq!(
        applied["stages"]["classify"]["previous"]["model"]["version"],
        "1.0.0-int8"
    );

    // A second deploy (the same model): generation 2.
    let (code, out, err) = deploy_cli(&hub, "classify", "basicmotions-edge@1.0.0-fp32", &[]);
    assert_eq!(code, Some(0), "{out}{err}");
    wait_for("generation 2 applied", || {
        state(&hub).filter(|s| s["generation"] == 2)
    });

    // A tampered file: the hub's copy of the int8 ONNX is changed after it
    // was pushed; the agent refuses it by its digest and keeps fp32.
    push(&hub, &int8);
    let shown = hub.get("/api/v1/artifacts/basicmotions-edge@1.0.0-int8");
    let onnx_sha = shown["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"].as_str().unwrap().ends_with(".onnx"))
        .unwrap()["sha256"]
        .as_str()
        .unwrap()
        .to_string();
    let blob = hub.store.join("artifacts/blobs").join(&onnx_sha);
    let mut bytes = std::fs::read(&blob).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&blob, &bytes).unwrap();
    let (code, out, err) = deploy_cli(
        &hub,
        "classify",
        "basicmotions-edge@1.0.0-int8",
        &["--wait", "--timeout", "60"],
    );
    assert_eq!(code, Some(1), "{out}{err}");
    let failed = wait_for_phase(&hub, 3, "failed");
    let reason = failed["last_change"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("does not match the signed manifest"),
        "{reason}"
    );
    assert_eq!(failed["generation"], 2, "the applied generation stays");

    // A replayed older document, signed by the hub but older than what
    // the agent applied, published by a third party on the desired topic.
    let old = hub.get(&format!("/api/v1/devices/{DEVICE}/desired"));
    assert_eq!(old["generation"], 3);
    let replay = {
        let dir2 = dir.path().join("replay");
        std::fs::create_dir_all(&dir2).unwrap();
        let p = dir2.join("gen1.json");
        std::fs::write(&p, gen1_envelope(&hub)).unwrap();
        p
    };
    let status = Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &hub.mqtt_port.to_string(),
            "-q",
            "1",
        ])
        .args(["-t", &format!("conveyor/v1/{DEVICE}/down/desired"), "-f"])
        .arg(&replay)
        .status()
        .unwrap();
    assert!(status.success());
    let stale = wait_for("the replay refused", || {
        state(&hub).filter(|s| {
            s["last_change"]["reason"]
                .as_str()
                .is_some_and(|r| r.contains("older than the applied"))
        })
    });
    assert_eq!(stale["generation"], 2, "{stale}");

    assert!(agent.wait().success(), "{}", agent.log());
    hub.wait_for_records(DEVICE, 40);
    let v = versions(&hub);
    assert_eq!(v.len(), 40, "one prediction per window, none lost: {v:?}");
    let switch = assert_one_switch(&hub, "int8", "fp32");
    assert!(switch >= 4, "{v:?}");
    assert_eq!(
        hub.seqs(DEVICE),
        (0..40).collect::<Vec<u64>>(),
        "exactly once, in order"
    );

    // A hub restart keeps the registry and every desired state, and the
    // next generation goes on from there.
    let hub = hub.restart();
    let (_, list2, _) = hub_cli(&hub, &["artifact", "list"]);
    assert_eq!(list2.lines().count(), 2, "{list2}");
    assert_eq!(
        hub.get(&format!("/api/v1/devices/{DEVICE}/desired"))["generation"],
        3
    );
    let (code, out, err) = deploy_cli(&hub, "classify", "basicmotions-edge@1.0.0-fp32", &[]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("generation 4"), "{out}");
}

/// A desired state of generation 1, signed with the hub's own key (as a
/// recorded old document would be).
fn gen1_envelope(hub: &Hub) -> Vec<u8> {
    let key = std::fs::read_to_string(hub.store.join("signing.key")).unwrap();
    let key = conveyor_shared::ota::SecretKey::from_file_text(&key).unwrap();
    let now: Value = hub.get(&format!("/api/v1/devices/{DEVICE}/desired"));
    let mut doc: conveyor_shared::ota::DesiredState =
        serde_json::from_value(now["desired"].clone()).unwrap();
    doc.generation = 1;
    doc.sign(&key).encode()
}

#[test]
fn an_offline_agent_applies_on_connect_resumes_a_download_and_keeps_it_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let hub = Hub::start(dir.path());
    let int8 = model("basicmotions/edge.int8.json");
    let fp32 = model("basicmotions/edge.fp32.json");
    push(&hub, &fp32);
    // Deployed while the device has never connected: retained.
    let (code, out, err) = deploy_cli(&hub, "classify", "basicmotions-edge@1.0.0-fp32", &[]);
    assert_eq!(code, Some(0), "{out}{err}");
    // Half of the ONNX file is already in the agent's cache, as a download
    // cut off by a SIGKILL leaves it: the agent resumes from there.
    let shown = hub.get("/api/v1/artifacts/basicmotions-edge@1.0.0-fp32");
    let id = shown["id"].as_str().unwrap();
    let partial = dir.path().join(format!("state/ota/artifacts/{id}.partial"));
    std::fs::create_dir_all(&partial).unwrap();
    let onnx = std::fs::read(model("basicmotions/edge.fp32.onnx")).unwrap();
    std::fs::write(partial.join("edge.fp32.onnx"), &onnx[..onnx.len() / 2]).unwrap();

    // A slow replay: the whole recording takes 20 s.
    let config = agent_config(&hub, 200.0, &int8, vec![hub.signing_key()]);
    let mut agent = start_agent(dir.path(), "agent", &config);
    wait_for("generation 1 applied", || {
        state(&hub).filter(|s| s["generation"] == 1)
    });
    // Killed, then started again: it runs what was applied, not agent.toml.
    agent.signal(libc::SIGKILL);
    let _ = agent.wait();
    let mut agent = start_agent(dir.path(), "agent2", &config);
    assert!(agent.wait().success(), "{}", agent.log());
    let log = agent.log();
    assert!(
        !log.contains("OTA update refused") && !log.contains("left out"),
        "{log}"
    );
    let running = wait_for("the restarted agent's state", || {
        state(&hub)
            .filter(|s| s["stages"]["classify"]["running"]["model"]["version"] == "1.0.0-fp32")
    });
    assert_eq!(running["generation"], 1);
    // The second run's predictions are fp32's only.
    let v = versions(&hub);
    assert!(v.last().unwrap().ends_with("fp32"), "{v:?}");
}

#[test]
fn a_manifest_signed_by_another_key_and_an_unknown_hub_key_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let hub = Hub::start(dir.path());
    let int8 = model("basicmotions/edge.int8.json");
    push(&hub, &model("basicmotions/edge.fp32.json"));
    // The agent trusts another key only: the hub's desired state is refused.
    let other = conveyor_shared::ota::SecretKey::from_seed([7; 32])
        .public()
        .to_string();
    let mut agent = start_agent(
        dir.path(),
        "agent",
        &agent_config(&hub, 400.0, &int8, vec![other.clone()]),
    );
    wait_for("a few predictions", || {
        (hub.records(DEVICE) >= 2).then_some(())
    });
    deploy_cli(&hub, "classify", "basicmotions-edge@1.0.0-fp32", &[]);
    let refused = wait_for("the unknown key refused", || {
        state(&hub).filter(|s| s["last_change"]["phase"] == "failed")
    });
    let reason = refused["last_change"]["reason"].as_str().unwrap();
    assert!(reason.contains("desired state refused"), "{reason}");
    assert!(agent.wait().success(), "{}", agent.log());
    hub.wait_for_records(DEVICE, 40);
    assert!(versions(&hub).iter().all(|v| v.ends_with("int8")));

    // Trusting both keys, but the manifest on the hub was replaced by one
    // signed with the other key: the manifest is refused.
    let hub_public = hub.signing_key();
    let id = hub.get("/api/v1/artifacts/basicmotions-edge@1.0.0-fp32")["id"]
        .as_str()
        .unwrap()
        .to_string();
    let path = hub
        .store
        .join("artifacts/manifests")
        .join(format!("{id}.json"));
    let envelope: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let payload = envelope["payload"].as_str().unwrap().to_string();
    let forged = conveyor_shared::ota::Envelope::sign(
        conveyor_shared::ota::MANIFEST_TYPE,
        payload,
        &conveyor_shared::ota::SecretKey::from_seed([8; 32]),
    );
    std::fs::write(&path, forged.encode()).unwrap();
    let dir2 = dir.path().join("second");
    std::fs::create_dir_all(&dir2).unwrap();
    let config = agent_config(&hub, 400.0, &int8, vec![hub_public, other]);
    let mut agent = start_agent(&dir2, "agent", &config);
    let refused = wait_for("the forged manifest refused", || {
        state(&hub).filter(|s| {
            s["last_change"]["reason"]
                .as_str()
                .is_some_and(|r| r.contains("manifest of basicmotions-edge@1.0.0-fp32"))
        })
    });
    assert_eq!(refused["last_change"]["phase"], "failed", "{refused}");
    assert!(agent.wait().success(), "{}", agent.log());
}

#[test]
fn a_deployed_transform_chain_with_its_config_is_swapped_in_between_batches() {
    let dir = tempfile::tempdir().unwrap();
    let hub = Hub::start(dir.path());
    let dist = |n: &str| {
        repo_root()
            .join(format!("transforms/dist/{n}.wasm"))
            .display()
            .to_string()
    };
    let out = push(&hub, &dist("scale"));
    assert!(out.contains("pushed: scale@"), "{out}");
    let mut config = agent_config(
        &hub,
        200.0,
        &model("basicmotions/edge.int8.json"),
        vec![hub.signing_key()],
    );
    // Readings only, through one transform stage.
    config.stages = vec![TransformStageConfig {
        name: Some("prep".into()),
        ..TransformStageConfig::new("motion", vec![ChainEntry::new(dist("passthrough"))])
    }
    .into()];
    let mut agent = start_agent(dir.path(), "agent", &config);
    wait_for("records at the hub", || {
        (hub.records(DEVICE) >= 200).then_some(())
    });
    let scale = hub.get("/api/v1/artifacts")["artifacts"][0]["name"]
        .as_str()
        .unwrap()
        .to_string();
    let tag = format!(
        "{scale}@{}",
        hub.get("/api/v1/artifacts")["artifacts"][0]["version"]
            .as_str()
            .unwrap()
    );
    let (code, out, err) = deploy_cli(
        &hub,
        "prep",
        &tag,
        &[
            "--config",
            &format!("{scale}={{\"scale\": 2.0}}"),
            "--wait",
            "--timeout",
            "60",
        ],
    );
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(agent.wait().success(), "{}", agent.log());
    hub.wait_for_records(DEVICE, 4000);
    let records = hub.all_records(DEVICE);
    assert_eq!(records.len(), 4000, "every reading, once");
    assert_eq!(hub.seqs(DEVICE), (0..4000).collect::<Vec<u64>>());
    let tags: Vec<&str> = records
        .iter()
        .map(|r| r["transforms"][0].as_str().unwrap())
        .collect();
    let switch = tags
        .iter()
        .position(|t| t.starts_with("scale@"))
        .expect("the deployed chain ran");
    assert!(switch >= 200, "{switch}");
    assert!(tags[..switch].iter().all(|t| t.starts_with("passthrough@")));
    assert!(tags[switch..].iter().all(|t| t.starts_with("scale@")));
    // Its config came with the desired state: every value doubled. The
    // replay repeats the file's series in order, so reading i of the
    // switch is the file's reading i of the same series position.
    let file = std::fs::read_to_string(data_file("BasicMotions/BasicMotions_TEST.ts")).unwrap();
    let series: Vec<Vec<f64>> = file
        .lines()
        .skip_while(|l| !l.starts_with("@data"))
        .skip(1)
        .map(|l| {
            l.split(':')
                .next()
                .unwrap()
                .split(',')
                .map(|v| v.parse().unwrap())
                .collect()
        })
        .collect();
    for (i, r) in records.iter().enumerate() {
        let want = series[i / 100][i % 100];
        let factor = if i >= switch { 2.0 } else { 1.0 };
        assert_eq!(
            r["values"][0].as_f64().unwrap(),
            want * factor,
            "reading {i}"
        );
    }
    // The hub precompiled `scale` for agents without a compiler; this one
    // compiles for itself and downloaded the module alone.
    let entry = std::fs::read_dir(dir.path().join("state/ota/artifacts"))
        .unwrap()
        .flatten()
        .find(|e| e.path().join("scale.wasm").is_file())
        .expect("scale is in the agent's artifact cache");
    let files: Vec<String> = std::fs::read_dir(entry.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!files.iter().any(|f| f.ends_with(".cwasm")), "{files:?}");
}
