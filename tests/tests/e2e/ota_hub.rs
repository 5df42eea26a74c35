//! The hub's side of over-the-air updates, against a real hub and real
//! MQTT clients (no agent): the registry through `cloud-hub artifact`,
//! resumable downloads, desired states published retained (embedded
//! broker and mosquitto) and verifiable with the hub's published key,
//! agents' state reports, and all of it across a hub restart.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use conveyor_e2e::*;
use conveyor_shared::ota::{DesiredState, Opened, PublicKey, SignedManifest, StageTarget};
use serde_json::{json, Value};

fn hub_key(hub: &Hub) -> PublicKey {
    hub.signing_key().parse().unwrap()
}

fn model_meta() -> (PathBuf, Value) {
    let path = repo_root().join("models/basicmotions/edge.int8.json");
    let meta = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    (path, meta)
}

fn name_at_version(meta: &Value) -> String {
    format!(
        "{}@{}",
        meta["id"].as_str().unwrap(),
        meta["version"].as_str().unwrap()
    )
}

/// A GET with raw bytes back: status, headers (lowercase names), body.
fn get_bytes(addr: SocketAddr, path: &str, range: Option<&str>) -> (u16, String, Vec<u8>) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let range = range.map_or(String::new(), |r| format!("Range: {r}\r\n"));
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{range}\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head");
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(
        !head.contains("transfer-encoding: chunked"),
        "downloads have a length: {head}"
    );
    (status, head, raw[split + 4..].to_vec())
}

/// The first retained message on `topic`, from a client that connects now.
fn retained(port: u16, topic: &str) -> Vec<u8> {
    let out = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1"])
        .args(["-t", topic, "-C", "1", "-W", "30", "-N"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "no retained message on {topic}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn publish(port: u16, topic: &str, payload: &str, retain: bool) {
    let mut cmd = Command::new("mosquitto_pub");
    cmd.args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1"])
        .args(["-t", topic, "-m", payload]);
    if retain {
        cmd.arg("-r");
    }
    assert!(cmd.status().unwrap().success());
}

/// The desired state retained for `device`, verified as an agent would.
fn retained_desired(hub: &Hub, device: &str) -> DesiredState {
    let bytes = retained(hub.mqtt_port, &format!("conveyor/v1/{device}/down/desired"));
    match DesiredState::open(&bytes, &[hub_key(hub)], device, None) {
        Ok(Opened::New(doc, _)) => doc,
        other => panic!("{other:?}"),
    }
}

fn agent_state(device: &str, applied: Option<u64>) -> String {
    json!({
        "device_id": device,
        "generation": applied,
        "stages": {},
        "last_change": {"generation": 1, "phase": "downloading", "bytes_done": 10, "bytes_total": 100, "since_us": 1},
        "tags": {"site": "lab"},
        "ts_us": 2,
    })
    .to_string()
}

fn metric(hub: &Hub, line_start: &str) -> Option<f64> {
    let (_, text) = http(hub.http, "GET", "/metrics", None).ok()?;
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

fn tampered_copy(dir: &Path, meta_path: &Path, meta: &Value) -> PathBuf {
    let copy = dir.join("tampered");
    std::fs::create_dir_all(&copy).unwrap();
    let onnx = meta["model_file"].as_str().unwrap();
    let mut bytes = std::fs::read(meta_path.with_file_name(onnx)).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(copy.join(onnx), bytes).unwrap();
    let json = copy.join(meta_path.file_name().unwrap());
    std::fs::copy(meta_path, &json).unwrap();
    json
}

#[test]
fn the_registry_desired_states_and_reports_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let hub = Hub::start(dir.path());
    let key = hub_key(&hub);
    let (meta_path, meta) = model_meta();
    let model = name_at_version(&meta);

    // Push: checked, signed by the hub's key; the same again is no new one.
    let out = hub_cli_ok(&hub, &["artifact", "push", meta_path.to_str().unwrap()]);
    assert!(out.contains(&format!("pushed: {model} (model")), "{out}");
    assert!(out.contains(&format!("signed by {}", key.id())), "{out}");
    let out = hub_cli_ok(&hub, &["artifact", "push", meta_path.to_str().unwrap()]);
    assert!(out.contains("already in the registry"), "{out}");

    // A tampered ONNX is refused with the loader's reason.
    let bad = tampered_copy(dir.path(), &meta_path, &meta);
    let (code, out, err) = hub_cli(&hub, &["artifact", "push", bad.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(err.contains("422") && err.contains("sha256"), "{err}");
    assert!(
        metric(
            &hub,
            "conveyor_hub_artifact_push_rejected_total{reason=\"bad_model\"}"
        ) >= Some(1.0)
    );

    // Every example transform passes the ABI checks.
    let mut modules: Vec<PathBuf> = std::fs::read_dir(repo_root().join("transforms/dist"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wasm"))
        .collect();
    modules.sort();
    assert!(!modules.is_empty());
    for m in &modules {
        let out = hub_cli_ok(&hub, &["artifact", "push", m.to_str().unwrap()]);
        assert!(out.contains("(transform"), "{out}");
    }
    let list = hub_cli_ok(&hub, &["artifact", "list"]);
    assert_eq!(list.lines().count(), 1 + modules.len(), "{list}");
    assert!(list.contains(&format!("{model} (model")), "{list}");
    let listed: Value =
        serde_json::from_str(&hub_cli_ok(&hub, &["artifact", "list", "--json"])).unwrap();
    assert_eq!(
        listed["artifacts"].as_array().unwrap().len(),
        1 + modules.len()
    );

    // What agents download: the manifest, verified with the published key,
    // and a file, resumed from byte 100.
    let shown = hub.get(&format!("/api/v1/artifacts/{model}"));
    let id = shown["id"].as_str().unwrap().to_string();
    let (status, head, manifest) =
        get_bytes(hub.http, &format!("/api/v1/artifacts/{id}/manifest"), None);
    assert_eq!(status, 200, "{head}");
    let opened = SignedManifest::open(&manifest, std::slice::from_ref(&key)).unwrap();
    assert_eq!(opened.id.as_str(), id);
    let onnx_name = meta["model_file"].as_str().unwrap();
    let onnx = std::fs::read(meta_path.with_file_name(onnx_name)).unwrap();
    let file = format!("/api/v1/artifacts/{id}/files/{onnx_name}");
    let (status, head, whole) = get_bytes(hub.http, &file, None);
    assert_eq!((status, whole.as_slice()), (200, onnx.as_slice()));
    let sha = meta["model_sha256"].as_str().unwrap();
    assert!(head.contains(&format!("etag: \"{sha}\"")), "{head}");
    assert!(head.contains("accept-ranges: bytes"), "{head}");
    let (status, head, tail) = get_bytes(hub.http, &file, Some("bytes=100-"));
    assert_eq!(status, 206, "{head}");
    assert_eq!(tail, onnx[100..]);
    let n = onnx.len();
    assert!(
        head.contains(&format!("content-range: bytes 100-{}/{n}", n - 1)),
        "{head}"
    );
    let (status, head, _) = get_bytes(hub.http, &file, Some(&format!("bytes={n}-")));
    assert_eq!(status, 416);
    assert!(
        head.contains(&format!("content-range: bytes */{n}")),
        "{head}"
    );

    // Deploy to a device that has never connected: retained, verifiable.
    let out = hub_cli_ok(
        &hub,
        &[
            "deploy",
            "--device",
            "gw-ota",
            "--stage",
            "classify",
            "--artifact",
            &model,
        ],
    );
    assert!(
        out.contains("gw-ota: desired state generation 1 published"),
        "{out}"
    );
    let doc = retained_desired(&hub, "gw-ota");
    assert_eq!(doc.generation, 1);
    match &doc.stages["classify"] {
        StageTarget::Model(a) => assert_eq!(a.id.as_str(), id),
        other => panic!("{other:?}"),
    }

    // The agent's report is kept and shown; one naming another device is
    // refused and counted.
    publish(
        hub.mqtt_port,
        "conveyor/v1/gw-ota/state",
        &agent_state("gw-ota", None),
        true,
    );
    let state = wait_for("the agent's state", || {
        http(hub.http, "GET", "/api/v1/devices/gw-ota/state", None)
            .ok()
            .filter(|(code, _)| *code == 200)
    });
    let state: Value = serde_json::from_str(&state.1).unwrap();
    assert_eq!(state["last_change"]["phase"], "downloading");
    publish(
        hub.mqtt_port,
        "conveyor/v1/gw-ota/state",
        &agent_state("other", None),
        false,
    );
    wait_for("the bad state counted", || {
        metric(
            &hub,
            "conveyor_hub_payloads_rejected_total{reason=\"bad_state\"}",
        )
        .filter(|n| *n >= 1.0)
    });

    // The device list shows who is behind: once the device is known (its
    // status), with its desired and applied generations.
    publish(
        hub.mqtt_port,
        "conveyor/v1/gw-ota/status",
        r#"{"device_id": "gw-ota", "state": "online"}"#,
        false,
    );
    let view = wait_for("the device's OTA standing", || {
        hub.device("gw-ota")
            .filter(|d| d["ota"]["desired_generation"] == 1)
    });
    assert_eq!(view["ota"]["applied_generation"], Value::Null, "{view}");
    assert_eq!(view["ota"]["phase"], "downloading", "{view}");
    assert_eq!(view["ota"]["behind"], true, "{view}");

    // By tag: the device reported site=lab.
    let out = hub_cli_ok(
        &hub,
        &[
            "deploy",
            "--tag",
            "site=lab",
            "--stage",
            "classify",
            "--artifact",
            &model,
        ],
    );
    assert!(
        out.contains("gw-ota: desired state generation 2 published"),
        "{out}"
    );
    let (code, body) = http(
        hub.http,
        "POST",
        "/api/v1/deploy",
        Some(
            &json!({"tags": {"site": "nowhere"}, "stages": {"classify": {"model": model}}})
                .to_string(),
        ),
    )
    .unwrap();
    assert_eq!(code, 422, "{body}");

    // A restart keeps the registry, the desired state (republished,
    // retained, by the new embedded broker) and the report; the next
    // generation goes on from there.
    let hub = hub.restart();
    assert_eq!(hub_key(&hub), key, "the same key");
    assert_eq!(
        hub_cli_ok(&hub, &["artifact", "list"]).lines().count(),
        1 + modules.len()
    );
    assert_eq!(hub.get("/api/v1/devices/gw-ota/desired")["generation"], 2);
    assert_eq!(retained_desired(&hub, "gw-ota").generation, 2);
    assert_eq!(
        hub.get("/api/v1/devices/gw-ota/state")["tags"]["site"],
        "lab"
    );
    let out = hub_cli_ok(
        &hub,
        &[
            "deploy",
            "--device",
            "gw-ota",
            "--stage",
            "classify",
            "--artifact",
            &model,
        ],
    );
    assert!(out.contains("generation 3"), "{out}");
    assert_eq!(retained_desired(&hub, "gw-ota").generation, 3);
}

#[test]
fn a_transform_chain_is_retained_on_an_external_broker_and_bad_deploys_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (_mosquitto, port) = start_mosquitto(dir.path());
    let hub = Hub::start_with(dir.path(), Some(port));
    let dist = repo_root().join("transforms/dist");
    let mut names = Vec::new();
    for m in ["scale.wasm", "passthrough.wasm"] {
        hub_cli_ok(&hub, &["artifact", "push", dist.join(m).to_str().unwrap()]);
    }
    for a in hub.get("/api/v1/artifacts")["artifacts"]
        .as_array()
        .unwrap()
    {
        names.push(format!(
            "{}@{}",
            a["name"].as_str().unwrap(),
            a["version"].as_str().unwrap()
        ));
    }
    let (meta_path, meta) = model_meta();
    hub_cli_ok(&hub, &["artifact", "push", meta_path.to_str().unwrap()]);
    let model = name_at_version(&meta);

    let body = json!({"stages": {"prep": {"transforms": [
        {"artifact": names[0], "config": {"factor": 2}},
        {"artifact": names[1]},
    ]}}});
    let (code, out) = http(
        hub.http,
        "PUT",
        "/api/v1/devices/gw-ext/desired",
        Some(&body.to_string()),
    )
    .unwrap();
    assert_eq!(code, 200, "{out}");
    let doc = retained_desired(&hub, "gw-ext");
    match &doc.stages["prep"] {
        StageTarget::Transforms(chain) => {
            assert_eq!(chain.len(), 2);
            assert_eq!(chain[0].config["factor"], 2);
        }
        other => panic!("{other:?}"),
    }
    let shown = hub.get("/api/v1/devices/gw-ext/desired");
    assert_eq!(shown["generation"], 1);
    assert_eq!(
        shown["envelope"]["payload_type"],
        conveyor_shared::ota::DESIRED_TYPE
    );

    // null removes a stage; the document keeps the others.
    let body = json!({"stages": {"classify": {"model": model}}});
    http(
        hub.http,
        "PUT",
        "/api/v1/devices/gw-ext/desired",
        Some(&body.to_string()),
    )
    .unwrap();
    let body = json!({"stages": {"prep": null}});
    let (code, out) = http(
        hub.http,
        "PUT",
        "/api/v1/devices/gw-ext/desired",
        Some(&body.to_string()),
    )
    .unwrap();
    assert_eq!(code, 200, "{out}");
    let doc = retained_desired(&hub, "gw-ext");
    let stages: Vec<&str> = doc.stages.keys().map(String::as_str).collect();
    assert_eq!((doc.generation, stages), (3, vec!["classify"]));

    // Refused, naming the cause; nothing is published.
    for (body, why) in [
        (
            json!({"stages": {"classify": {"model": "nothing@1"}}}),
            "no artifact \"nothing@1\"",
        ),
        (
            json!({"stages": {"prep": {"transforms": [{"artifact": model}]}}}),
            "is a model",
        ),
        (
            json!({"stages": {"classify": {"model": names[0]}}}),
            "is a transform",
        ),
        (
            json!({"stages": {"prep": {"transforms": []}}}),
            "1 to 16 transforms",
        ),
    ] {
        let (code, out) = http(
            hub.http,
            "PUT",
            "/api/v1/devices/gw-ext/desired",
            Some(&body.to_string()),
        )
        .unwrap();
        assert_eq!(code, 422, "{out}");
        let message: Value = serde_json::from_str(&out).unwrap();
        let message = message["error"].as_str().unwrap();
        assert!(message.contains(why), "{why}: {message}");
    }
    let (code, out) = http(
        hub.http,
        "PUT",
        "/api/v1/devices/gw-ext/desired",
        Some("{\"stage\": 1}"),
    )
    .unwrap();
    assert!(
        (400..500).contains(&code) && out.contains("error"),
        "{code} {out}"
    );
    assert_eq!(retained_desired(&hub, "gw-ext").generation, 3);
    let (code, _) = http(hub.http, "GET", "/api/v1/devices/nobody/desired", None).unwrap();
    assert_eq!(code, 404);
}

#[test]
fn a_signing_key_that_is_no_key_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("bad.key");
    std::fs::write(&key, "not a key\n").unwrap();
    let config = dir.path().join("hub.toml");
    std::fs::write(
        &config,
        format!(
            "[broker]\nlisten = \"127.0.0.1:{}\"\n[http]\nlisten = \"127.0.0.1:{}\"\n[store]\npath = \"store\"\n[ota]\nsigning_key = \"bad.key\"\n",
            free_port(),
            free_port()
        ),
    )
    .unwrap();
    let out = Command::new(hub_bin())
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(
        err.contains("ota.signing_key") && err.contains("bad.key"),
        "{err}"
    );
}

#[test]
fn a_push_over_the_bound_or_not_a_form_is_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let hub = Hub::start_serving(dir.path(), "[ota]\nmax_artifact_bytes = 4096\n");
    let (meta_path, _) = model_meta();
    let (code, out, err) = hub_cli(&hub, &["artifact", "push", meta_path.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(
        err.contains("413") && err.contains("max_artifact_bytes (4096 bytes)"),
        "{err}"
    );
    let (code, out) = http(hub.http, "POST", "/api/v1/artifacts", Some("{}")).unwrap();
    assert_eq!(code, 400, "{out}");
    assert!(out.contains("multipart/form-data"), "{out}");
    assert!(
        metric(
            &hub,
            "conveyor_hub_artifact_push_rejected_total{reason=\"too_large\"}"
        ) >= Some(1.0)
    );
    assert_eq!(hub.get("/api/v1/artifacts")["artifacts"], json!([]));
    let (code, _) = http(hub.http, "GET", "/api/v1/artifacts/nothing@1", None).unwrap();
    assert_eq!(code, 404);
}
