//! The dashboard in a real headless Chromium, against a real hub and real
//! agents: the overview's counts and live numbers, the device list and
//! its search, a device's page with its chart and model, a killed agent
//! turning offline on the page, a rollout started from the CLI shown
//! (with its gate figures over time) and aborted from the page, the
//! device's history of changes and dead letters with their reasons, the
//! audit log, and no request to any host but the hub.
//!
//! With `CONVEYOR_SCREENSHOTS=<dir>` it also writes a PNG of each page
//! there (`docs/dashboard/screenshots.sh` does, for the README).

use conveyor_e2e::browser::Browser;
use conveyor_e2e::*;
use edge_agent::ota::OtaConfig;

use super::ota::{model, push};

const AGENTS: usize = 3;

fn device(i: usize) -> String {
    format!("store-{i}")
}

/// `sensor_port`: store-0 also takes readings over HTTP through a
/// transform that traps on a negative value (its dead letters, with
/// their reasons, are on its page).
fn config(hub: &Hub, i: usize, dir: &std::path::Path, sensor_port: u16) -> AgentConfig {
    let mut c = AgentConfig::for_device(&device(i))
        .data_dir(format!("state-{i}"))
        .uplink(&hub.mqtt_url())
        // The broker gives up on a silent agent after 1.5 keep-alives.
        .uplink_with(|u| {
            u.heartbeat_secs = 0.5;
            u.keep_alive_secs = 2;
        })
        .source(ReplayConfig {
            rate: Some(300.0),
            looping: true,
            ..ReplayConfig::new("motion", data_file("BasicMotions/BasicMotions_TEST.ts"))
        })
        .stage(InferenceConfig {
            name: Some("classify".into()),
            forward_readings: true,
            ..InferenceConfig::new(model("basicmotions/edge.int8.json"))
        });
    if i == 0 {
        c = c
            .source(HttpSourceConfig::new(
                "sensor",
                ([127, 0, 0, 1], sensor_port).into(),
                &["t"],
            ))
            .stage(TransformStageConfig {
                name: Some("sensor-check".into()),
                batch_size: 1,
                ..TransformStageConfig::new(
                    "sensor",
                    vec![ChainEntry::new(super::wasm_transforms::trap_on_negative(
                        dir,
                    ))],
                )
            });
    }
    c.tags.insert("store".into(), format!("{}", 7 + i % 2));
    c.ota = Some(OtaConfig::new(
        vec![hub.signing_key().parse().unwrap()],
        format!("http://{}", hub.http),
    ));
    c
}

fn number(text: &str) -> f64 {
    text.chars()
        .filter(|c| c.is_ascii_digit() || *c == '.')
        .collect::<String>()
        .parse()
        .unwrap_or(-1.0)
}

#[test]
fn the_dashboard_shows_the_fleet_live_in_a_real_browser() {
    let dir = tempfile::tempdir().unwrap();
    let Some(browser) = Browser::start(dir.path(), 1280, 900) else {
        return;
    };
    let shots = std::env::var_os("CONVEYOR_SCREENSHOTS").map(std::path::PathBuf::from);
    let shot = |name: &str| {
        if let Some(d) = &shots {
            std::fs::create_dir_all(d).unwrap();
            // Let the charts draw their latest points.
            std::thread::sleep(std::time::Duration::from_millis(1500));
            browser.screenshot(&d.join(format!("{name}.png")));
        }
    };
    let hub = Hub::start_serving(dir.path(), &hub_models_toml());
    push(&hub, &model("basicmotions/v2/edge.int8.json"));
    let sensor_port = free_port();
    let mut agents: Vec<Proc> = (0..AGENTS)
        .map(|i| {
            start_agent(
                dir.path(),
                &device(i),
                &config(&hub, i, dir.path(), sensor_port),
            )
        })
        .collect();
    for i in 0..AGENTS {
        wait_for(&format!("{} streaming", device(i)), || {
            (hub.records(&device(i)) > 50 && hub.heartbeat(&device(i)).is_some()).then_some(())
        });
    }
    let origin = format!("http://{}", hub.http);
    // Two readings the sensor check traps on: dead letters, kept with why.
    for t in ["-1", "-2"] {
        let addr = format!("127.0.0.1:{sensor_port}").parse().unwrap();
        let (status, body) = wait_for("the agent's HTTP source", || {
            http(addr, "POST", "/readings", Some(&format!(r#"{{"t": {t}}}"#))).ok()
        });
        assert_eq!(status, 200, "{body}");
    }
    // The heartbeat says how near the log is to its bound (an alert's figure).
    let hb = hub.heartbeat(&device(0)).unwrap();
    assert!(hb["log_bound_bytes"].as_u64().unwrap() > 0, "{hb}");
    // Every URL each page fetched (Resource Timing, read before leaving
    // it: a navigation starts a new list; a stream still open is not in it).
    let mut requested: Vec<String> = Vec::new();
    let mut leave = |b: &Browser| requested.extend(b.requested_urls());

    // The overview: every device online, numbers that move.
    browser.goto(&format!("{origin}/"));
    browser.wait_text("3 devices online on the page", "#devices-online", |t| {
        t == "3"
    });
    assert_eq!(browser.text("#devices-offline").as_deref(), Some("0"));
    let rate = browser.wait_text("a live ingest rate", "#ingest-rate", |t| number(t) > 0.0);
    let live = browser.text("#live").unwrap();
    browser.wait_text("the live stamp moves", "#live", |t| t != live);
    browser.wait_text("the versions table", "#versions", |t| {
        t.contains("classify") && t.contains("basicmotions-edge@1.0.0-int8")
    });
    assert!(
        browser.count("#chart-ingest canvas") > 0,
        "the ingest chart is drawn"
    );
    eprintln!("ingest on the page: {rate} records/s");
    shot("overview");
    leave(&browser);

    // The device list, and its search (filtered on the hub).
    browser.goto(&format!("{origin}/#/devices"));
    browser.wait_text("three rows", "#count", |t| t.ends_with("of 3 devices"));
    assert_eq!(browser.count("#rows tr"), 3);
    browser.type_into("input[name=q]", "store-1");
    browser.wait_text("one row", "#count", |t| t.ends_with("of 1 devices"));
    assert_eq!(browser.count("#rows tr[data-device=store-1]"), 1);
    browser.type_into("input[name=q]", "");
    browser.type_into("input[name=tag]", "store=7");
    browser.wait_text("the store=7 rows", "#count", |t| {
        t.ends_with("of 2 devices")
    });
    shot("devices");
    leave(&browser);

    // A device's page: its chart, its model, its stage counters.
    browser.goto(&format!("{origin}/#/devices/store-0"));
    browser.wait_text("store-0 online", "#device-status", |t| t == "online");
    browser.wait_text("what it runs", "#running", |t| {
        t.contains("classify") && t.contains("basicmotions-edge@1.0.0-int8")
    });
    browser.wait_text("its stage counters", "#stages", |t| t.contains("inference"));
    browser.wait_text("its recent results", "#results", |t| {
        t.contains("basicmotions-edge")
    });
    assert!(
        browser.count("#chart-stream canvas") > 0,
        "the stream chart is drawn"
    );
    // Its dead letters, with their reasons, from its heartbeats.
    browser.wait_text("its dead letters", "#dead-letters", |t| {
        t.contains("sensor-check") && t.contains("fragile@1.0.0") && t.contains("trap")
    });
    // Its heartbeat counters over time (one point per 5 s on the hub).
    wait_for("two heartbeat points", || {
        let v = hub.get("/api/v1/devices/store-0/heartbeats");
        (v["points"].as_array()?.len() >= 2).then_some(())
    });
    assert!(browser.count("#chart-heartbeat canvas") > 0);
    shot("device");
    leave(&browser);

    // A killed agent turns offline on the page.
    browser.goto(&format!("{origin}/"));
    browser.wait_text("3 online again", "#devices-online", |t| t == "3");
    agents[2].signal(libc::SIGKILL);
    agents[2].wait();
    browser.wait_text("one device offline", "#devices-offline", |t| t == "1");
    browser.wait_text("an offline alert", "#alerts", |t| {
        t.contains("store-2") && t.contains("offline")
    });

    // The models page: the hub's models and the edge model with its accuracy.
    browser.goto(&format!("{origin}/#/models"));
    browser.wait_text("the hub's models", "#hub-models", |t| {
        t.contains("basicmotions-hub")
    });
    browser.wait_text("the edge model's accuracy", "#edge-models", |t| {
        t.contains("basicmotions-edge@1.0.0-int8") && t.contains('%')
    });
    shot("models");
    leave(&browser);

    // A rollout started from the CLI, followed and aborted from the page.
    let out = hub_cli_ok(
        &hub,
        &[
            "rollout",
            "start",
            "--stage",
            "classify",
            "--artifact",
            "basicmotions-edge@2.0.0-int8",
            "--device",
            "store-0",
            "--device",
            "store-1",
            "--waves",
            "1,100%",
            "--soak",
            "10m",
        ],
    );
    let id: u64 = out
        .split_whitespace()
        .nth(1)
        .and_then(|w| w.parse().ok())
        .unwrap();
    browser.goto(&format!("{origin}/#/rollouts"));
    browser.wait_text("the rollout listed", "#list", |t| {
        t.contains("running") && t.contains("2.0.0-int8")
    });
    browser.goto(&format!("{origin}/#/rollouts/{id}"));
    browser.wait_text("its state", "#state", |t| t == "running");
    browser.wait_text("its first device soaking", "#devices", |t| {
        t.contains("applied")
    });
    // The gates' figures over time: the soaking device's labelled windows.
    let figures = browser.wait_text("its gate figures", "#figures-now", |t| {
        t.contains("1 soaking") && !t.contains("accuracy – ")
    });
    eprintln!("gate figures on the page: {figures}");
    assert!(browser.count("#chart-figures canvas") > 0);
    // A point per 5 s: wait for a trend of three.
    let points = wait_for("three points of gate figures", || {
        let v = hub.get(&format!("/api/v1/rollouts/{id}"))["figures"]["points"].clone();
        (v.as_array()?.len() >= 3).then_some(v)
    });
    let last = points.as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["soaking"], 1, "{last}");
    assert!(last["labelled"].as_u64().unwrap() > 0, "{last}");
    shot("rollout");
    leave(&browser);
    browser.click("button[data-command=abort]");
    browser.accept_alert();
    browser.wait_text("aborted on the page", "#state", |t| t == "aborted");
    assert_eq!(
        hub.get(&format!("/api/v1/rollouts/{id}"))["state"],
        "aborted"
    );
    let log = browser.wait_text("the step recorded", "#log", |t| t.contains("aborted"));
    assert!(log.contains("dashboard"), "who aborted it: {log}");

    // The device's history: the rollout's desired state (an abort leaves
    // it), and the phases its agent went through.
    browser.goto(&format!("{origin}/#/devices/store-0"));
    browser.wait_text("its history", "#history", |t| {
        t.contains(&format!("rollout {id}"))
            && t.contains("desired")
            && t.contains("downloading")
            && t.contains("runs classify: model basicmotions-edge@2.0.0-int8")
    });
    leave(&browser);

    // The audit log: the push, the start (from the CLI) and the abort
    // (from this page).
    browser.goto(&format!("{origin}/#/rollouts"));
    let audit = browser.wait_text("the audit log", "#audit", |t| {
        t.contains("rollout.abort") && t.contains("rollout.start") && t.contains("artifact.push")
    });
    assert!(audit.contains("dashboard"), "{audit}");
    shot("rollouts");
    leave(&browser);

    browser.goto(&format!("{origin}/#/artifacts"));
    browser.wait_text("the registry", "#list", |t| {
        t.contains("basicmotions-edge") && t.contains("2.0.0-int8")
    });
    shot("artifacts");
    leave(&browser);

    // Nothing but the hub was asked for anything, and the page may not:
    // its Content-Security-Policy allows this hub alone.
    assert!(
        requested
            .iter()
            .any(|u| u.contains("/api/v1/fleet/devices?")),
        "{requested:#?}"
    );
    for u in &requested {
        assert!(
            u.starts_with(&format!("{origin}/")),
            "a request to another host: {u}"
        );
    }
    let head = {
        use std::io::{Read, Write};
        let mut c = std::net::TcpStream::connect(hub.http).unwrap();
        write!(
            c,
            "GET / HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            hub.http
        )
        .unwrap();
        let mut text = String::new();
        c.read_to_string(&mut text).unwrap();
        text.split("\r\n\r\n").next().unwrap().to_string()
    };
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let csp = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-security-policy:")
                .map(str::to_string)
        })
        .unwrap_or_else(|| panic!("no Content-Security-Policy: {head}"));
    for directive in [
        "default-src 'none'",
        "script-src 'self'",
        "connect-src 'self'",
    ] {
        assert!(csp.contains(directive), "{csp}");
    }
    for mut a in agents {
        if a.try_wait().is_none() {
            a.stop();
        }
    }
}

/// A hub that asks for API tokens: the page asks for one, a wrong one is
/// refused, a link with `#token=` signs in and the address forgets it.
#[test]
fn the_dashboard_asks_a_hub_with_tokens_for_one() {
    let dir = tempfile::tempdir().unwrap();
    let Some(browser) = Browser::start(dir.path(), 1024, 768) else {
        return;
    };
    let hub = Hub::start_secure(dir.path(), "");
    let viewer = hub.token("wall-screen", "viewer");
    let origin = format!("http://{}", hub.http);
    browser.goto(&format!("{origin}/"));
    browser.wait_text("the sign-in page", "#view h1", |t| t == "Sign in");
    browser.type_into("input[name=token]", "cvt_wrong");
    browser.click("#login button[type=submit]");
    browser.wait_text("a wrong token refused", "#login-error", |t| {
        t.contains("unknown or revoked")
    });
    browser.goto(&format!("{origin}/#token={viewer}"));
    browser.wait_text("the overview", "#devices-online", |t| t == "0");
    let address = browser.js("return location.href");
    assert!(
        !address.as_str().unwrap().contains(&viewer),
        "the token stays in the address: {address}"
    );
    // The cookie is HttpOnly: the page's own scripts cannot read it.
    assert_eq!(browser.js("return document.cookie"), "");
    browser.wait_text("the live stream", "#live", |t| t.starts_with("live"));
}
