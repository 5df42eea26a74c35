//! A hub as it is by default: devices prove who they are, and each may
//! touch only its own topics; API callers need a token of a role. The
//! attacks are made with a third-party client (`mosquitto_pub`,
//! `mosquitto_sub`, MQTT 3.1.1 and 5) against the real hub and agents.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use conveyor_e2e::*;

/// A batch claiming seqs `seqs` of `device`, every value 666.
fn forged(dir: &Path, device: &str, seqs: std::ops::Range<u64>) -> PathBuf {
    batch_file(dir, &format!("forged-{device}"), device, seqs, 666.0)
}

/// The hub holds `device`'s records from seq 0 on, none missing, none
/// forged (value 666): at least 300.
fn assert_all_genuine(hub: &Hub, device: &str) {
    let records = hub.all_records(device);
    let n = records.len() as u64;
    assert!(n >= 300, "{n} records of {device}");
    assert_eq!(
        records
            .iter()
            .map(|r| r["seq"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        (0..n).collect::<Vec<_>>()
    );
    assert!(
        records
            .iter()
            .all(|r| r["values"][0].as_f64() != Some(666.0)),
        "a forged record of {device} was stored"
    );
}

fn secret(file: &Path) -> String {
    std::fs::read_to_string(file).unwrap().trim().to_string()
}

/// `mosquitto_pub` of `file` to `topic`, as `login` (client id, user, password).
fn publish(hub: &Hub, v5: bool, login: Option<(&str, &str)>, topic: &str, file: &Path) -> Output {
    let mut c = Command::new("mosquitto_pub");
    c.args([
        "-h",
        "127.0.0.1",
        "-p",
        &hub.mqtt_port.to_string(),
        "-q",
        "1",
    ])
    .args(["-V", if v5 { "mqttv5" } else { "mqttv311" }])
    .args(["-t", topic, "-f"])
    .arg(file);
    if let Some((user, password)) = login {
        c.args(["-i", user, "-u", user, "-P", password]);
    }
    c.output()
        .expect("mosquitto_pub must be installed (.ci/run installs mosquitto-clients)")
}

/// `device`, with its secret, publishes 10 records of its own: accepted.
fn publish_as_itself(hub: &Hub, dir: &Path, v5: bool, device: &str, secret: &str) {
    let own = forged(dir, device, 0..10);
    let topic = format!("conveyor/v1/{device}/up/records");
    let out = publish(hub, v5, Some((device, secret)), &topic, &own);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `mosquitto_sub` of `filter` for `seconds`, as `user`: what it received.
fn subscribe(
    hub: &Hub,
    user: &str,
    password: &str,
    filter: &str,
    seconds: u32,
) -> std::process::Child {
    Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &hub.mqtt_port.to_string()])
        .args(["-i", user, "-u", user, "-P", password, "-t", filter])
        .args(["-W", &seconds.to_string(), "-F", "%t"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

fn metric(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name_and_labels))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// An agent replaying BasicMotions at 500 readings/s, looping.
fn agent(hub: &Hub, device: &str, password_file: &Path) -> AgentConfig {
    AgentConfig::for_device(device)
        .data_dir(format!("state-{device}"))
        .uplink(&hub.mqtt_url())
        .uplink_with(|u| {
            u.password_file = Some(password_file.to_path_buf());
            u.heartbeat_secs = 0.5;
        })
        .source(ReplayConfig {
            rate: Some(500.0),
            looping: true,
            ..ReplayConfig::new("motion", data_file("BasicMotions/BasicMotions_TEST.ts"))
        })
}

#[test]
fn no_one_but_a_device_itself_can_publish_as_it_or_read_what_is_its() {
    let dir = tempfile::tempdir().unwrap();
    let hub = Hub::start_secure(dir.path(), "");
    let victim_file = hub.provision("victim");
    let attacker_file = hub.provision("attacker");
    let attacker = secret(&attacker_file);
    let forged_victim = forged(dir.path(), "victim", 0..100);

    // No credentials, over 3.1.1 and 5: refused at connect.
    for v5 in [false, true] {
        let out = publish(
            &hub,
            v5,
            None,
            "conveyor/v1/victim/up/records",
            &forged_victim,
        );
        assert!(
            !out.status.success(),
            "an anonymous client got in (v5: {v5})"
        );
        let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
        assert!(
            err.contains("bad user name or password") || err.contains("not authori"),
            "{err}"
        );
    }
    // The victim's name with a wrong secret: refused.
    let out = publish(
        &hub,
        false,
        Some(("victim", "cvd_guess")),
        "conveyor/v1/victim/up/records",
        &forged_victim,
    );
    assert!(!out.status.success());
    // Another device's real credentials, on the victim's topic: the
    // connection is closed before the batch reaches the broker.
    let _ = publish(
        &hub,
        false,
        Some(("attacker", &attacker)),
        "conveyor/v1/victim/up/records",
        &forged_victim,
    );
    let _ = publish(
        &hub,
        true,
        Some(("attacker", &attacker)),
        "conveyor/v1/victim/up/records",
        &forged_victim,
    );
    // Nor may it listen to the victim's downlinks, or to everything.
    let spies = [
        subscribe(&hub, "attacker", &attacker, "conveyor/v1/victim/down/#", 6),
        subscribe(&hub, "attacker", &attacker, "#", 6),
    ];

    // The real device streams; every record is its own.
    let mut a = start_agent(dir.path(), "victim", &agent(&hub, "victim", &victim_file));
    wait_for("300 of the victim's records", || {
        (hub.records("victim") >= 300).then_some(())
    });
    assert_all_genuine(&hub, "victim");
    for spy in spies {
        let out = spy.wait_with_output().unwrap();
        let got = String::from_utf8_lossy(&out.stdout);
        assert!(
            !got.contains("victim"),
            "the attacker read the victim's messages: {got}"
        );
    }
    // A device of its own, over MQTT 5, publishing as itself: stored.
    let v5_file = hub.provision("dev5");
    publish_as_itself(&hub, dir.path(), true, "dev5", &secret(&v5_file));
    hub.wait_for_records("dev5", 10);

    // Revoked while connected: cut off within a second or so, and refused
    // when it tries again.
    hub_cli_ok(
        &hub,
        &[
            "device",
            "revoke",
            "victim",
            "--store",
            hub.store.to_str().unwrap(),
        ],
    );
    wait_for("the revoked device refused on reconnect", || {
        (metric(
            &hub.metrics(),
            "conveyor_hub_mqtt_connections_refused_total{reason=\"revoked\"}",
        ) >= 1.0)
            .then_some(())
    });
    a.stop();

    let m = hub.metrics();
    assert!(
        metric(
            &m,
            "conveyor_hub_mqtt_connections_refused_total{reason=\"no_credentials\"}"
        ) >= 2.0,
        "{m}"
    );
    assert!(
        metric(
            &m,
            "conveyor_hub_mqtt_connections_refused_total{reason=\"bad_credentials\"}"
        ) >= 1.0,
        "{m}"
    );
    assert!(
        metric(&m, "conveyor_hub_mqtt_denied_total{reason=\"publish\"}") >= 2.0,
        "{m}"
    );
    assert!(
        metric(&m, "conveyor_hub_mqtt_denied_total{reason=\"subscribe\"}") >= 2.0,
        "{m}"
    );
    // Each refusal is logged with who it was; no secret ever is.
    let log = hub.proc.log();
    assert!(
        log.contains("device attacker may not publish to \"conveyor/v1/victim/up/records\""),
        "{log}"
    );
    for s in [secret(&victim_file), attacker, secret(&v5_file)] {
        assert!(!log.contains(&s), "a secret in the hub's log");
    }
}

#[test]
fn the_api_asks_for_a_token_of_the_right_role() {
    let dir = tempfile::tempdir().unwrap();
    let hub = Hub::start_secure(dir.path(), "");
    let viewer = hub.token("dash", "viewer");
    let operator = hub.token("ops", "operator");
    let deploy = r#"{"devices": ["d1"], "stages": {"classify": {"model": "nope@1"}}}"#;
    let call = |method: &str, path: &str, body: Option<&str>, token: Option<&str>| {
        http_as(hub.http, method, path, body, token).unwrap()
    };
    let (status, body) = call("GET", "/api/v1/devices", None, None);
    assert_eq!(status, 401, "{body}");
    assert!(
        body.contains("needs an API token") && body.contains("cloud-hub token create"),
        "{body}"
    );
    let (status, _) = call("GET", "/api/v1/devices", None, Some("cvt_wrong"));
    assert_eq!(status, 401);
    assert_eq!(call("GET", "/api/v1/devices", None, Some(&viewer)).0, 200);
    let (status, body) = call("POST", "/api/v1/deploy", Some(deploy), Some(&viewer));
    assert_eq!(status, 403, "{body}");
    assert!(
        body.contains("needs role operator; dash has role viewer"),
        "{body}"
    );
    // The operator gets past the door (and is told the artifact is unknown).
    let (status, body) = call("POST", "/api/v1/deploy", Some(deploy), Some(&operator));
    assert_eq!(status, 422, "{body}");
    // Open as before: health, metrics, the dashboard's page.
    assert_eq!(call("GET", "/healthz", None, None).0, 200);
    assert_eq!(call("GET", "/metrics", None, None).0, 200);
    assert_eq!(call("GET", "/", None, None).0, 200);
    // Tokens survive a restart; a revoked one does not work.
    let hub = hub.restart();
    assert_eq!(
        http_as(hub.http, "GET", "/api/v1/devices", None, Some(&viewer))
            .unwrap()
            .0,
        200
    );
    hub_cli_ok(
        &hub,
        &[
            "token",
            "revoke",
            "dash",
            "--store",
            hub.store.to_str().unwrap(),
        ],
    );
    wait_for("the revoked token refused", || {
        (http_as(hub.http, "GET", "/api/v1/devices", None, Some(&viewer))
            .unwrap()
            .0
            == 401)
            .then_some(())
    });
    // An admin provisions a device and makes a token over the API (an
    // operator may not); the new ones work at once, and it is all in the
    // audit log.
    let admin = hub.token("root", "admin");
    let api = |method: &str, path: &str, body: Option<&str>, token: &str| {
        let (status, body) = http_as(hub.http, method, path, body, Some(token)).unwrap();
        (
            status,
            serde_json::from_str::<serde_json::Value>(&body).unwrap_or_default(),
        )
    };
    let add = r#"{"device": "store-9"}"#;
    let (status, body) = api("POST", "/api/v1/identities/devices", Some(add), &operator);
    assert_eq!(status, 403, "{body}");
    let (status, body) = api("POST", "/api/v1/identities/devices", Some(add), &admin);
    assert_eq!(status, 201, "{body}");
    let secret = body["secret"].as_str().unwrap().to_string();
    let (status, _) = api("POST", "/api/v1/identities/devices", Some(add), &admin);
    assert_eq!(status, 409, "a second add of the same device");
    publish_as_itself(&hub, dir.path(), false, "store-9", &secret);
    let ci_token = r#"{"name": "ci", "role": "viewer"}"#;
    let (status, body) = api("POST", "/api/v1/identities/tokens", Some(ci_token), &admin);
    assert_eq!(status, 201, "{body}");
    let ci = body["token"].as_str().unwrap().to_string();
    assert_eq!(api("GET", "/api/v1/devices", None, &ci).0, 200);
    let (status, body) = api("GET", "/api/v1/identities", None, &admin);
    assert_eq!(status, 200);
    let listed = body.to_string();
    assert!(
        listed.contains("store-9") && !listed.contains(&secret) && !listed.contains("sha256"),
        "{listed}"
    );
    let audit = hub.get("/api/v1/audit")["entries"].to_string();
    assert!(
        audit.contains("device.add") && audit.contains("token.create") && audit.contains("root"),
        "{audit}"
    );

    let m = hub.metrics();
    assert!(
        m.contains("conveyor_hub_api_refused_total{reason=\"bad_token\"}"),
        "{m}"
    );
}

#[test]
fn a_device_that_floods_is_slowed_and_the_others_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let hub = Hub::start_secure(dir.path(), "[broker.limits]\nmessages_per_s = 50\n");
    let devices = ["store-1", "store-2", "store-3"];
    let mut agents: Vec<Proc> = devices
        .iter()
        .map(|d| {
            let file = hub.provision(d);
            let config = agent(&hub, d, &file).uplink_with(|u| u.batch_max_delay_ms = 100);
            start_agent(dir.path(), d, &config)
        })
        .collect();
    // The flooder: as many heartbeats as mosquitto_pub can send, on its
    // own topic (allowed: only its rate is wrong).
    let flooder = secret(&hub.provision("flooder"));
    let mut flood = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &hub.mqtt_port.to_string()])
        .args(["-i", "flooder", "-u", "flooder", "-P", &flooder])
        .args(["-t", "conveyor/v1/flooder/heartbeat", "-l", "-q", "0"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = flood.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        let line = br#"{"device_id":"flooder","ts_us":1,"uptime_s":1,"records_produced":0,"records_published":0,"batches_published":0,"next_seq":0,"connects":1}
"#;
        while stdin.write_all(line).is_ok() {}
    });
    for d in devices {
        wait_for(&format!("1,500 records of {d}"), || {
            (hub.records(d) >= 1500).then_some(())
        });
    }
    let m = hub.metrics();
    assert!(
        metric(&m, "conveyor_hub_mqtt_throttled_total") > 0.0,
        "the flooder was not slowed: {m}"
    );
    let _ = flood.kill();
    let _ = flood.wait();
    let _ = writer.join();
    // Stopped cleanly, each agent's last heartbeat says how many records
    // it made: the hub holds every one, once, in order.
    for (a, d) in agents.iter_mut().zip(devices) {
        assert!(a.stop().success());
        let next = wait_for("the goodbye heartbeat", || {
            hub.heartbeat(d)
                .filter(|h| h["log_records"] == 0)
                .and_then(|h| h["next_seq"].as_u64())
                .filter(|n| hub.records(d) == *n)
        });
        assert_eq!(hub.seqs(d), (0..next).collect::<Vec<_>>(), "{d}");
    }
    let m = hub.metrics();
    assert!(
        metric(&m, "conveyor_hub_mqtt_throttled_seconds_total") > 0.0,
        "{m}"
    );
}

/// The mosquitto configuration shipped in docs/mosquitto/, with a
/// password file made by `mosquitto_passwd`: the same rules as the
/// hub's own gate, for a fleet on an external broker.
#[test]
fn mosquitto_with_the_shipped_acl_keeps_each_device_to_its_own_topics() {
    let dir = tempfile::tempdir().unwrap();
    let (files, passwd) = mosquitto_users(dir.path(), &["conveyor-hub", "victim", "attacker"]);
    let (hub_file, victim_file, attacker_file) = (&files[0], &files[1], &files[2]);
    let port = free_port();
    let shipped =
        std::fs::read_to_string(repo_root().join("docs/mosquitto/conveyor.conf")).unwrap();
    let conf = shipped
        .replace(
            "listener 1883 127.0.0.1",
            &format!("listener {port} 127.0.0.1"),
        )
        .replace("/etc/mosquitto/conveyor.passwd", passwd.to_str().unwrap())
        .replace(
            "/etc/mosquitto/conveyor.acl",
            repo_root()
                .join("docs/mosquitto/conveyor.acl")
                .to_str()
                .unwrap(),
        );
    assert_ne!(conf, shipped);
    let conf_path = dir.path().join("conveyor.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let _mosquitto = start_mosquitto_conf(dir.path(), &conf_path, port);
    let hub = &Hub::start_external_with_login(dir.path(), port, "conveyor-hub", hub_file);
    assert_eq!(hub.mqtt_port, port);

    let forged_victim = forged(dir.path(), "victim", 0..100);
    let out = publish(
        hub,
        false,
        None,
        "conveyor/v1/victim/up/records",
        &forged_victim,
    );
    assert!(!out.status.success(), "an anonymous client got in");
    // The attacker's publish on the victim's topic is dropped by the ACL
    // (mosquitto says nothing to the client); its subscriptions get nothing.
    let attacker = secret(attacker_file);
    let _ = publish(
        hub,
        false,
        Some(("attacker", &attacker)),
        "conveyor/v1/victim/up/records",
        &forged_victim,
    );
    let spy = subscribe(hub, "attacker", &attacker, "#", 6);
    let mut a = start_agent(dir.path(), "victim", &agent(hub, "victim", victim_file));
    wait_for("300 of the victim's records", || {
        (hub.records("victim") >= 300).then_some(())
    });
    let _ = publish(
        hub,
        true,
        Some(("attacker", &attacker)),
        "conveyor/v1/victim/up/records",
        &forged_victim,
    );
    let got = String::from_utf8_lossy(&spy.wait_with_output().unwrap().stdout).into_owned();
    assert!(
        !got.contains("victim"),
        "the attacker read the victim's messages: {got}"
    );
    a.stop();
    assert_all_genuine(hub, "victim");
}
