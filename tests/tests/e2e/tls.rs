//! TLS end to end: a hub serving MQTT and HTTPS with its own CA, agents
//! that pin it (and refuse a hub whose certificate another CA signed, or
//! one that has expired), third-party clients (`mosquitto_pub`, `curl`)
//! on the same listeners, and a real mosquitto with the shipped TLS config
//! between agents and the hub.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use conveyor_e2e::*;
use edge_agent::ota::OtaConfig;

use super::ota::{model, push};

fn secret(file: &Path) -> String {
    std::fs::read_to_string(file).unwrap().trim().to_string()
}

fn metric(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name_and_labels))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// A batch of 10 records of `device`, seqs 0-9.
fn batch(dir: &Path, device: &str) -> PathBuf {
    batch_file(dir, &format!("batch-{device}"), device, 0..10, 1.0)
}

/// `mosquitto_pub` of `file` to `device`'s records, over TLS checked
/// against `ca` (none: plain MQTT), as `device` with `secret`.
fn publish(port: u16, ca: Option<&Path>, device: &str, secret: &str, file: &Path) -> Output {
    let mut c = Command::new("mosquitto_pub");
    c.args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1"])
        .args(["-V", "mqttv5", "-i", device, "-u", device, "-P", secret])
        .args(["-t", &format!("conveyor/v1/{device}/up/records"), "-f"])
        .arg(file);
    if let Some(ca) = ca {
        c.arg("--cafile").arg(ca);
    }
    c.output()
        .expect("mosquitto_pub must be installed (.ci/run installs mosquitto-clients)")
}

/// `curl` of `path` on the hub's HTTPS API: the status code curl saw (0
/// when there was no HTTP answer) and its exit code.
fn curl(hub: &Hub, ca: Option<&Path>, token: Option<&str>, path: &str) -> (u16, Option<i32>) {
    let mut c = Command::new("curl");
    c.args([
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--max-time",
        "10",
    ]);
    if let Some(ca) = ca {
        c.arg("--cacert").arg(ca);
    }
    if let Some(t) = token {
        c.args(["-H", &format!("Authorization: Bearer {t}")]);
    }
    let out = c
        .arg(format!("https://{}{path}", hub.http))
        .output()
        .expect("curl");
    let code = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    (code, out.status.code())
}

/// An agent replaying BasicMotions at 500 readings/s, looping, over TLS
/// to `url` with the CA in `ca`.
fn agent(url: &str, device: &str, password_file: &Path, ca: &Path) -> AgentConfig {
    agent_at(url, device, password_file, ca, 500.0)
}

/// [`agent`] at `rate` readings/s.
fn agent_at(url: &str, device: &str, password_file: &Path, ca: &Path, rate: f64) -> AgentConfig {
    AgentConfig::for_device(device)
        .data_dir(format!("state-{device}"))
        .uplink(url)
        .uplink_with(|u| {
            u.password_file = Some(password_file.to_path_buf());
            u.ca_file = Some(ca.to_path_buf());
            u.heartbeat_secs = 0.5;
        })
        .source(ReplayConfig {
            rate: Some(rate),
            looping: true,
            ..ReplayConfig::new("motion", data_file("BasicMotions/BasicMotions_TEST.ts"))
        })
}

/// The hub holds `device`'s records 0..n, in order, n >= 300.
fn assert_complete(hub: &Hub, device: &str) {
    let seqs = hub.seqs(device);
    assert!(seqs.len() >= 300, "{} records of {device}", seqs.len());
    assert_eq!(seqs, (0..seqs.len() as u64).collect::<Vec<_>>());
}

#[test]
fn over_tls_agents_pin_the_hub_and_a_certificate_from_another_ca_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let hub = Hub::start_tls(dir.path(), "");
    assert!(hub.mqtt_url().starts_with("mqtts://"));

    // `device add` puts the hub's CA beside the device's secret.
    let secret_file = hub.provision("gw-1");
    let ca = secret_file.with_file_name("hub-ca.pem");
    assert_eq!(
        std::fs::read(&ca).unwrap(),
        std::fs::read(hub.ca_file()).unwrap()
    );

    // A model pushed and deployed with the CLI over HTTPS (CONVEYOR_HUB_CA),
    // and downloaded by the agent over HTTPS too.
    push(&hub, &model("basicmotions/edge.fp32.json"));
    // 5,000 readings/s: a window of 100 readings is one record.
    let mut config =
        agent_at(&hub.mqtt_url(), "gw-1", &secret_file, &ca, 5000.0).stage(InferenceConfig {
            name: Some("classify".into()),
            ..InferenceConfig::new(model("basicmotions/edge.int8.json"))
        });
    config.ota = Some(OtaConfig::new(
        vec![hub.signing_key().parse().unwrap()],
        hub.api_url(),
    ));
    let mut a = start_agent(dir.path(), "gw-1", &config);
    hub_cli_ok(
        &hub,
        &[
            "deploy",
            "--device",
            "gw-1",
            "--stage",
            "classify",
            "--artifact",
            "basicmotions-edge@1.0.0-fp32",
        ],
    );
    wait_for("the fp32 model downloaded over HTTPS and applied", || {
        let (code, body) = hub.call("GET", "/api/v1/devices/gw-1/state", None).ok()?;
        let s: serde_json::Value = serde_json::from_str(&body).ok()?;
        (code == 200 && s["stages"]["classify"]["running"]["model"]["version"] == "1.0.0-fp32")
            .then_some(())
    });
    wait_for("300 records over mqtts", || {
        (hub.records("gw-1") >= 300).then_some(())
    });

    // Third-party clients on the same listeners: mosquitto_pub over TLS
    // with MQTT 5, curl over HTTPS; each pinned to the hub's CA.
    let dev5 = hub.provision("dev5");
    let out = publish(
        hub.mqtt_port,
        Some(&ca),
        "dev5",
        &secret(&dev5),
        &batch(dir.path(), "dev5"),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    hub.wait_for_records("dev5", 10);
    let token = hub.token("tls-viewer", "viewer");
    assert_eq!(
        curl(&hub, Some(&ca), Some(&token), "/api/v1/devices").0,
        200
    );
    assert_eq!(curl(&hub, Some(&ca), None, "/api/v1/devices").0, 401);
    // Without the hub's CA (the system's roots only), curl refuses the hub
    // (exit 60: the peer's certificate cannot be verified).
    assert_eq!(
        curl(&hub, None, Some(&token), "/api/v1/devices"),
        (0, Some(60))
    );
    // A plain MQTT client on the TLS listener gets nothing in; counted.
    let out = publish(
        hub.mqtt_port,
        None,
        "dev5",
        &secret(&dev5),
        &batch(dir.path(), "dev5"),
    );
    assert!(
        !out.status.success(),
        "a plain client published over the TLS listener"
    );

    // An agent that pins another hub's CA (one `cloud-hub tls init` made
    // elsewhere) refuses this hub, says why, and sends nothing.
    let foreign = dir.path().join("other-hub");
    let made = Command::new(hub_bin())
        .args(["tls", "init", "--store"])
        .arg(&foreign)
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let foreign_ca = PathBuf::from(String::from_utf8_lossy(&made.stdout).trim());
    assert!(foreign_ca.ends_with("tls/ca.pem"), "{foreign_ca:?}");
    let gw2 = hub.provision("gw-2");
    let mut b = start_agent(
        dir.path(),
        "gw-2",
        &agent(&hub.mqtt_url(), "gw-2", &gw2, &foreign_ca),
    );
    let why = format!(
        "TLS: the server's certificate is not signed by the CA in {}",
        foreign_ca.display()
    );
    wait_for("the agent with a foreign CA to say why", || {
        b.log().contains(&why).then_some(())
    });
    // The CLI with the wrong CA, and with none, says so too.
    let out = Command::new(hub_bin())
        .args(["artifact", "list"])
        .env("CONVEYOR_HUB", hub.api_url())
        .env("CONVEYOR_HUB_CA", &foreign_ca)
        .env("CONVEYOR_TOKEN", &token)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("is not signed by the CA in"),
        "{err}"
    );
    let out = Command::new(hub_bin())
        .args(["artifact", "list"])
        .env("CONVEYOR_HUB", hub.api_url())
        .env_remove("CONVEYOR_HUB_CA")
        .env("CONVEYOR_TOKEN", &token)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("an https:// hub needs CONVEYOR_HUB_CA"),
        "{err}"
    );

    // The hub counted the refused handshakes: the plain client, the
    // foreign-CA agent (MQTT), curl without the CA (HTTPS).
    wait_for("the refused handshakes counted", || {
        let m = hub.metrics();
        (metric(
            &m,
            "conveyor_hub_tls_handshake_failures_total{listener=\"mqtt\"}",
        ) >= 2.0
            && metric(
                &m,
                "conveyor_hub_tls_handshake_failures_total{listener=\"http\"}",
            ) >= 1.0)
            .then_some(())
    });
    b.stop();
    a.stop();
    assert_eq!(hub.records("gw-2"), 0);
    assert_complete(&hub, "gw-1");
    // The fleet's view over HTTPS, by the harness: the device is known
    // with its TLS uplink.
    assert!(hub.device("gw-1").is_some());

    // `check` names the field a TLS agent needs.
    let no_ca = agent(&hub.mqtt_url(), "gw-3", &gw2, &ca).uplink_with(|u| u.ca_file = None);
    let (code, out) = check_agent(dir.path(), "no-ca", &no_ca);
    assert_eq!(code, Some(64), "{out}");
    assert!(
        out.contains("uplink.ca_file: is required with an mqtts:// url"),
        "{out}"
    );
    let not_pem = dir.path().join("not-a-ca.pem");
    std::fs::write(&not_pem, "hello").unwrap();
    let (code, out) = check_agent(
        dir.path(),
        "bad-ca",
        &agent(&hub.mqtt_url(), "gw-3", &gw2, &not_pem),
    );
    assert_eq!(code, Some(64), "{out}");
    assert!(
        out.contains("uplink.ca_file") && out.contains("holds no PEM certificate"),
        "{out}"
    );
}

/// A CA of a broker's operator, and certificates it signs for 127.0.0.1.
struct TestCa {
    key: rcgen::KeyPair,
    params: rcgen::CertificateParams,
    pem: String,
}

impl TestCa {
    fn new() -> TestCa {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "e2e broker CA");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
        let pem = params.self_signed(&key).unwrap().pem();
        TestCa { key, params, pem }
    }

    /// A certificate and key for 127.0.0.1, valid until `until` (year).
    fn issue(&self, until: i32) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
        p.not_before = rcgen::date_time_ymd(2020, 1, 1);
        p.not_after = rcgen::date_time_ymd(until, 1, 1);
        let issuer = rcgen::Issuer::from_params(&self.params, &self.key);
        (
            p.signed_by(&key, &issuer).unwrap().pem(),
            key.serialize_pem(),
        )
    }
}

/// mosquitto with the shipped TLS config on `port`, serving `cert` (kept
/// in `<dir>/<name>/`).
fn mosquitto_with(
    dir: &Path,
    name: &str,
    port: u16,
    cert: &(String, String),
    ca: &Path,
    passwd: &Path,
) -> Proc {
    let certs = dir.join(name);
    std::fs::create_dir_all(&certs).unwrap();
    std::fs::write(certs.join("broker.pem"), &cert.0).unwrap();
    std::fs::write(certs.join("broker.key"), &cert.1).unwrap();
    let shipped =
        std::fs::read_to_string(repo_root().join("docs/mosquitto/conveyor-tls.conf")).unwrap();
    let conf = shipped
        .replace(
            "listener 8883 127.0.0.1",
            &format!("listener {port} 127.0.0.1"),
        )
        .replace("/etc/mosquitto/certs/ca.pem", ca.to_str().unwrap())
        .replace(
            "/etc/mosquitto/certs/broker.pem",
            certs.join("broker.pem").to_str().unwrap(),
        )
        .replace(
            "/etc/mosquitto/certs/broker.key",
            certs.join("broker.key").to_str().unwrap(),
        )
        .replace("/etc/mosquitto/conveyor.passwd", passwd.to_str().unwrap())
        .replace(
            "/etc/mosquitto/conveyor.acl",
            repo_root()
                .join("docs/mosquitto/conveyor.acl")
                .to_str()
                .unwrap(),
        );
    assert!(
        conf.lines()
            .all(|l| l.starts_with('#') || !l.contains("/etc/mosquitto")),
        "{conf}"
    );
    let conf_path = dir.join("conveyor-tls.conf");
    std::fs::write(&conf_path, conf).unwrap();
    start_mosquitto_conf(dir, &conf_path, port)
}

/// The shipped `docs/mosquitto/conveyor-tls.conf` between an agent and
/// the hub, both on `mqtts://`: an expired broker certificate is refused
/// by name, and once the broker has a valid one, the agent's log drains
/// into the hub, every record once and in order.
#[test]
fn tls_through_mosquitto_with_the_shipped_config_and_an_expired_certificate_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (files, passwd) = mosquitto_users(dir.path(), &["conveyor-hub", "victim"]);
    let (hub_file, device_file) = (&files[0], &files[1]);
    let ca = TestCa::new();
    let ca_file = dir.path().join("broker-ca.pem");
    std::fs::write(&ca_file, &ca.pem).unwrap();
    let port = free_port();
    let url = format!("mqtts://127.0.0.1:{port}");

    // The broker's certificate expired in 2021: the agent says so, keeps
    // its records, and tries again.
    let mut mosquitto = mosquitto_with(
        dir.path(),
        "expired",
        port,
        &ca.issue(2021),
        &ca_file,
        &passwd,
    );
    let mut a = start_agent(
        dir.path(),
        "victim",
        &agent(&url, "victim", device_file, &ca_file),
    );
    wait_for("the agent to refuse the expired certificate", || {
        a.log()
            .contains("TLS: the server's certificate has expired")
            .then_some(())
    });
    mosquitto.stop();

    // A valid certificate on the same port; the hub on mqtts:// too.
    let _mosquitto = mosquitto_with(
        dir.path(),
        "valid",
        port,
        &ca.issue(2100),
        &ca_file,
        &passwd,
    );
    // Anonymous over TLS, with the broker's CA: refused by the shipped
    // config.
    let out = Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-t",
            "x",
            "-m",
            "y",
        ])
        .arg("--cafile")
        .arg(&ca_file)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert!(
        !out.status.success() && err.contains("not authori"),
        "{err}"
    );
    let hub = Hub::start_external_tls(dir.path(), port, "conveyor-hub", hub_file, &ca_file);
    wait_for(
        "300 of the device's records through mosquitto over TLS",
        || (hub.records("victim") >= 300).then_some(()),
    );
    a.stop();
    assert_complete(&hub, "victim");
    assert!(hub
        .proc
        .log()
        .contains(&format!("mqtts://127.0.0.1:{port}")));
}
