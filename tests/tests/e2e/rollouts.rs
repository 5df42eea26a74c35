//! Fleet rollouts with real processes: six agents replaying the labelled
//! BasicMotions test split through their int8 model, a hub that rolls a
//! candidate out to them in waves, soaked and gated.

use conveyor_e2e::*;
use edge_agent::ota::OtaConfig;
use serde_json::Value;

use super::ota::{model, push};

const FLEET: usize = 6;
const BAD: &str = "basicmotions-edge@2.1.0-int8";
const GOOD: &str = "basicmotions-edge@2.0.0-int8";

fn device(i: usize) -> String {
    format!("fleet-{i}")
}

/// With `teacher`, every second window also goes to the hub's
/// basicmotions-hub model as a sample (the teacher gate's evidence).
fn fleet_config(hub: &Hub, i: usize, teacher: bool) -> AgentConfig {
    let mut c = AgentConfig::for_device(&device(i))
        .data_dir(format!("state-{i}"))
        .uplink(&hub.mqtt_url())
        .uplink_with(|u| u.heartbeat_secs = 0.5)
        .source(ReplayConfig {
            // Four windows a second, looping over the 40 test windows.
            rate: Some(400.0),
            looping: true,
            ..ReplayConfig::new("motion", data_file("BasicMotions/BasicMotions_TEST.ts"))
        })
        .stage(InferenceConfig {
            name: Some("classify".into()),
            escalate_to: teacher.then(|| "basicmotions-hub".into()),
            teacher_every: teacher.then_some(2),
            ..InferenceConfig::new(model("basicmotions/edge.int8.json"))
        });
    c.tags.insert("fleet".into(), "t".into());
    c.ota = Some(OtaConfig::new(
        vec![hub.signing_key().parse().unwrap()],
        format!("http://{}", hub.http),
    ));
    c
}

fn start_fleet(dir: &std::path::Path, hub: &Hub, teacher: bool) -> Vec<Proc> {
    let agents = (0..FLEET)
        .map(|i| start_agent(dir, &device(i), &fleet_config(hub, i, teacher)))
        .collect();
    // Every device reported its state (the tag selects it) and has
    // labelled predictions from the model it runs (the accuracy gate's
    // baseline).
    for i in 0..FLEET {
        wait_for(&format!("{} scored and reporting", device(i)), || {
            let d = hub.device(&device(i))?;
            let tally = &d["predictions"]["basicmotions-edge@1.0.0-int8"];
            let scored = tally["scored"].as_u64()?;
            let sampled = tally["teacher_sampled"].as_u64().unwrap_or(0);
            let state = hub.get(&format!("/api/v1/devices/{}/state", device(i)));
            (scored >= 10 && (!teacher || sampled >= 5) && state["tags"]["fleet"] == "t")
                .then_some(())
        });
    }
    agents
}

fn rollout(hub: &Hub, id: u64) -> Value {
    hub.get(&format!("/api/v1/rollouts/{id}"))
}

fn wait_for_rollout(hub: &Hub, id: u64, state: &str) -> Value {
    wait_for(&format!("rollout {id} {state}"), || {
        let r = rollout(hub, id);
        (r["state"] == state).then_some(r)
    })
}

/// What the rollout's recorded steps say, in order.
fn steps(r: &Value) -> Vec<&str> {
    r["log"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["what"].as_str().unwrap())
        .collect()
}

fn running_version(hub: &Hub, i: usize) -> String {
    hub.get(&format!("/api/v1/devices/{}/state", device(i)))["stages"]["classify"]["running"]
        ["model"]["version"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn start_rollout(hub: &Hub, artifact: &str, extra: &[&str]) -> u64 {
    let mut args = vec![
        "rollout",
        "start",
        "--stage",
        "classify",
        "--artifact",
        artifact,
        "--tag",
        "fleet=t",
        "--waves",
        "1,50%,100%",
        "--min-windows",
        "6",
    ];
    if !extra.contains(&"--soak") {
        args.extend_from_slice(&["--soak", "3s"]);
    }
    args.extend_from_slice(extra);
    let out = hub_cli_ok(hub, &args);
    let id = out
        .split_whitespace()
        .nth(1)
        .and_then(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("no rollout id in {out}"));
    assert!(
        out.contains(&format!("{FLEET} devices in 3 waves")),
        "{out}"
    );
    id
}

/// Stops every agent (they flush), then checks that each device's records
/// reached the hub exactly once, none missing.
fn stop_and_check_nothing_lost(hub: &Hub, agents: Vec<Proc>) {
    for mut a in agents {
        if a.try_wait().is_none() {
            assert!(a.stop().success(), "{}", a.log());
        }
    }
    for i in 0..FLEET {
        let d = device(i);
        let used = hub.heartbeat(&d).unwrap()["next_seq"].as_u64().unwrap();
        hub.wait_for_records(&d, used);
        assert_eq!(
            hub.seqs(&d),
            (0..used).collect::<Vec<_>>(),
            "{d}: every record exactly once"
        );
    }
}

/// A candidate that loads and passes every static check but predicts
/// wrong (trained on shuffled labels) is stopped at the first wave by the
/// teacher gate (agreement with the hub's larger model on sampled
/// windows: no labels needed) and rolled back by itself, with the gate's
/// figures in `rollout status`; no other device ever gets it. Again with
/// the accuracy gate (labelled windows) alone: stopped the same way. The
/// good candidate (basicmotions-edge 2.0.0, retrained) then goes through
/// every wave with both gates and ends healthy on all six devices, and
/// nothing is lost.
#[test]
fn a_bad_candidate_is_rolled_back_at_the_first_wave_and_a_good_one_reaches_every_device() {
    let dir = tempfile::tempdir().unwrap();
    let hub = Hub::start_serving(dir.path(), &hub_models_toml());
    push(&hub, &model("basicmotions/bad-shuffled/edge.int8.json"));
    push(&hub, &model("basicmotions/v2/edge.int8.json"));
    let agents = start_fleet(dir.path(), &hub, true);

    let bad = start_rollout(&hub, BAD, &["--teacher-margin", "0.2"]);
    let r = wait_for_rollout(&hub, bad, "rolled_back");
    let why = r["reason"].as_str().unwrap();
    assert!(
        why.contains("gate teacher failed on fleet-0")
            && why.contains(&format!("{BAD} agrees with the hub's teacher on 0."))
            && why.contains("basicmotions-edge@1.0.0-int8 on 1.000"),
        "{why}"
    );
    let devices = r["devices"].as_array().unwrap();
    assert!(
        devices[1..]
            .iter()
            .all(|d| d["phase"] == "pending" && d["requested"] == false),
        "only the first wave got it: {r}"
    );
    let status = hub_cli_ok(&hub, &["rollout", "status", &bad.to_string()]);
    assert!(
        status.contains("rolled_back")
            && status.contains("gate teacher failed")
            && status.contains("wave 2 [......"),
        "{status}"
    );
    // Back on the model it ran: its own config's, from its cache.
    let back_on_v1 = |id: u64| {
        wait_for("fleet-0 back on 1.0.0", || {
            (rollout(&hub, id)["devices"][0]["phase"] == "rolled_back"
                && running_version(&hub, 0) == "1.0.0-int8")
                .then_some(())
        })
    };
    back_on_v1(bad);

    // The accuracy gate alone catches it too (the replayed split is labelled).
    let bad2 = start_rollout(&hub, BAD, &["--accuracy-margin", "0.1"]);
    let r = wait_for_rollout(&hub, bad2, "rolled_back");
    let why = r["reason"].as_str().unwrap();
    assert!(
        why.contains("gate accuracy failed on fleet-0")
            && why.contains(&format!("{BAD} right on 0."))
            && why.contains("basicmotions-edge@1.0.0-int8 on 1.000"),
        "{why}"
    );
    back_on_v1(bad2);

    let good = start_rollout(
        &hub,
        GOOD,
        &["--accuracy-margin", "0.1", "--teacher-margin", "0.2"],
    );
    let r = wait_for_rollout(&hub, good, "completed");
    assert!(
        r["devices"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["phase"] == "healthy"),
        "{r}"
    );
    let steps = steps(&r);
    for step in ["wave 2 of 3 started", "wave 3 of 3 started", "completed"] {
        assert!(steps.contains(&step), "{steps:#?}");
    }
    for i in 0..FLEET {
        assert_eq!(running_version(&hub, i), "2.0.0-int8", "{}", device(i));
    }
    let list = hub_cli_ok(&hub, &["rollout", "list"]);
    assert!(
        list.contains("completed") && list.contains("rolled_back"),
        "{list}"
    );
    stop_and_check_nothing_lost(&hub, agents);
}

/// Shadow runs at the edge, before any device switches. A shadow-only
/// rollout of the good candidate runs it beside each device's model on
/// live windows, wave by wave, and ends with every device judged (its
/// agreement, confidence and latency in the rollout) and none switched. A
/// rollout of the bad candidate that shadows first is stopped by the
/// shadow gate at the first wave: no device ever acted on it (the hub
/// holds no prediction of it), and its shadow run ends. The good one,
/// shadowed first, then switches wave by wave and ends healthy everywhere;
/// nothing is lost.
#[test]
fn shadow_runs_judge_a_candidate_on_live_windows_before_any_device_switches() {
    let dir = tempfile::tempdir().unwrap();
    let hub = Hub::start_serving(dir.path(), &hub_models_toml());
    push(&hub, &model("basicmotions/bad-shuffled/edge.int8.json"));
    push(&hub, &model("basicmotions/v2/edge.int8.json"));
    let agents = start_fleet(dir.path(), &hub, false);
    let shadow_state = |i: usize| {
        hub.get(&format!("/api/v1/devices/{}/state", device(i)))["stages"]["classify"]["shadow"]
            .clone()
    };

    let only = start_rollout(
        &hub,
        GOOD,
        &[
            "--shadow-only",
            "--shadow-windows",
            "8",
            "--shadow-agreement",
            "0.8",
        ],
    );
    let r = wait_for_rollout(&hub, only, "completed");
    for d in r["devices"].as_array().unwrap() {
        assert_eq!(d["phase"], "healthy", "{r}");
        let figures = d["shadow_figures"].as_str().unwrap();
        assert!(
            figures.contains("agreement ")
                && figures.contains("mean confidence")
                && figures.contains("p50/p99"),
            "{figures}"
        );
    }
    let status = hub_cli_ok(&hub, &["rollout", "status", &only.to_string()]);
    assert!(
        status.contains("fleet-5 healthy: shadow agreement "),
        "{status}"
    );
    for i in 0..FLEET {
        assert_eq!(
            running_version(&hub, i),
            "1.0.0-int8",
            "{}: shadow only",
            device(i)
        );
        wait_for(&format!("{}'s shadow run ended", device(i)), || {
            shadow_state(i).is_null().then_some(())
        });
    }

    let bad = start_rollout(
        &hub,
        BAD,
        &["--shadow-windows", "8", "--shadow-agreement", "0.8"],
    );
    let r = wait_for_rollout(&hub, bad, "rolled_back");
    let why = r["reason"].as_str().unwrap();
    assert!(
        why.contains("gate shadow_agreement failed on fleet-0: agreement 0.")
            && why.contains("(at least 0.8 needed)"),
        "{why}"
    );
    assert!(
        r["devices"].as_array().unwrap()[1..]
            .iter()
            .all(|d| d["requested"] == false),
        "{r}"
    );
    wait_for("fleet-0's bad shadow ended", || {
        (rollout(&hub, bad)["devices"][0]["phase"] == "rolled_back" && shadow_state(0).is_null())
            .then_some(())
    });
    for i in 0..FLEET {
        let d = hub.device(&device(i)).unwrap();
        assert!(
            d["predictions"][BAD].is_null(),
            "{}: no prediction of the shadowed candidate ever left the device: {}",
            device(i),
            d["predictions"]
        );
    }

    let good = start_rollout(
        &hub,
        GOOD,
        &["--shadow-windows", "8", "--shadow-agreement", "0.8"],
    );
    let r = wait_for_rollout(&hub, good, "completed");
    assert!(
        r["devices"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["phase"] == "healthy" && d["shadow_passed"] == true),
        "{r}"
    );
    let steps = steps(&r);
    assert!(
        steps
            .iter()
            .any(|s| s.starts_with("fleet-0: shadow held (agreement ")
                && s.contains(&format!("switching it to {GOOD}"))),
        "{steps:#?}"
    );
    for i in 0..FLEET {
        assert_eq!(running_version(&hub, i), "2.0.0-int8", "{}", device(i));
        assert!(shadow_state(i).is_null());
    }
    stop_and_check_nothing_lost(&hub, agents);
}

/// A device that is offline during its wave times out, and the failure
/// budget (one device) lets the rollout complete; a hub restarted in the
/// middle resumes it; an operator rolls it back by hand, and every device
/// goes back to its own model. A second rollout for the stage supersedes
/// a running one, and abort stops one where it is.
#[test]
fn timeouts_the_budget_a_hub_restart_and_the_operators_commands() {
    let dir = tempfile::tempdir().unwrap();
    let mut hub = Hub::start(dir.path());
    push(&hub, &model("basicmotions/v2/edge.int8.json"));
    let mut agents = start_fleet(dir.path(), &hub, false);
    // fleet-5 (in the last wave) goes away.
    assert!(agents[5].stop().success(), "{}", agents[5].log());

    let id = start_rollout(
        &hub,
        GOOD,
        &[
            "--device-timeout",
            "5s",
            "--max-failures",
            "1",
            "--accuracy-margin",
            "0.1",
            // fleet-4 is killed and started again during its update.
            "--allow-restarts",
        ],
    );
    wait_for("wave 2 under way", || {
        (rollout(&hub, id)["wave"].as_u64() >= Some(1)).then_some(())
    });
    hub = hub.restart();
    // fleet-4 is SIGKILLed the moment its wave is given the update
    // (mid-download, mid-apply or just after), and started again.
    wait_for("wave 3 under way", || {
        (rollout(&hub, id)["wave"].as_u64() >= Some(2)).then_some(())
    });
    agents[4].signal(libc::SIGKILL);
    let _ = agents[4].wait();
    agents[4] = start_agent(dir.path(), "fleet-4-again", &fleet_config(&hub, 4, false));
    let r = wait_for_rollout(&hub, id, "completed");
    // It came back on one consistent version: the generation it reports
    // applied is the desired one, and its stage runs that generation's
    // model.
    let desired = hub.get("/api/v1/devices/fleet-4/desired")["generation"].clone();
    let state = hub.get("/api/v1/devices/fleet-4/state");
    assert_eq!(state["generation"], desired, "{state}");
    assert_eq!(running_version(&hub, 4), "2.0.0-int8");
    let phases: Vec<&str> = r["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["phase"].as_str().unwrap())
        .collect();
    assert_eq!(
        phases,
        [
            "healthy",
            "healthy",
            "healthy",
            "healthy",
            "healthy",
            "timed_out"
        ],
        "{r}"
    );
    assert!(
        r["devices"][5]["reason"]
            .as_str()
            .unwrap()
            .contains("no progress for 5 s"),
        "{r}"
    );

    // Back by hand: every device the rollout changed.
    let out = hub_cli_ok(
        &hub,
        &["rollout", "rollback", &id.to_string(), "--reason", "drill"],
    );
    assert!(out.contains("rolled_back"), "{out}");
    for i in 0..5 {
        wait_for(&format!("{} back on 1.0.0", device(i)), || {
            (running_version(&hub, i) == "1.0.0-int8").then_some(())
        });
    }
    let r = rollout(&hub, id);
    assert_eq!(r["reason"], "drill");
    assert!(r["log"].as_array().unwrap().iter().any(|s| s["what"]
        .as_str()
        .unwrap()
        .contains("rolling back 6 devices")
        && s["by"].as_str().unwrap() != "hub"));
    // Bad rollouts are refused with the reason, and start nothing.
    for (bad, says) in [
        (["--waves", "10%,5%"], "each wave must reach further"),
        (["--device-timeout", "0s"], "at least 1 s"),
        (["--tag", "ring=nowhere"], "no device selected"),
    ] {
        let mut args = vec![
            "rollout",
            "start",
            "--stage",
            "classify",
            "--artifact",
            GOOD,
        ];
        if bad[0] != "--tag" {
            args.extend(["--tag", "fleet=t"]);
        }
        args.extend(bad);
        let (code, _, err) = hub_cli(&hub, &args);
        assert_eq!(code, Some(1), "{bad:?}: {err}");
        assert!(err.contains("422") && err.contains(says), "{bad:?}: {err}");
    }
    // A command body that is not one is refused, not ignored.
    let (code, body) = http(
        hub.http,
        "POST",
        &format!("/api/v1/rollouts/{id}/abort"),
        Some("{\"reasn\": \"typo\"}"),
    )
    .unwrap();
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("unknown field"), "{body}");
    // A command that does not fit the state is refused with the reason.
    let (code, _, err) = hub_cli(&hub, &["rollout", "pause", &id.to_string()]);
    assert_eq!(code, Some(1));
    assert!(err.contains("409") && err.contains("cannot pause"), "{err}");

    // Supersede and abort: a long soak keeps the first one running.
    let long = ["--soak", "10m"];
    let first = start_rollout(&hub, GOOD, &long);
    let second = start_rollout(&hub, GOOD, &long);
    let r = rollout(&hub, first);
    assert_eq!(r["state"], "superseded", "{r}");
    assert_eq!(r["reason"], format!("superseded by rollout {second}"));
    let out = hub_cli_ok(&hub, &["rollout", "abort", &second.to_string()]);
    assert!(out.contains("aborted"), "{out}");

    // Groups set on the hub: a canary ring of two devices, selected by
    // the hub's tag beside the agents' own.
    for i in [1, 3] {
        let out = hub_cli_ok(&hub, &["device", "tag", &device(i), "ring=canary"]);
        assert!(out.contains("fleet=t ring=canary"), "{out}");
    }
    let out = hub_cli_ok(
        &hub,
        &[
            "rollout",
            "start",
            "--stage",
            "classify",
            "--artifact",
            GOOD,
            "--tag",
            "ring=canary",
            "--tag",
            "fleet=t",
            "--waves",
            "100%",
            "--soak",
            "1s",
        ],
    );
    assert!(out.contains("2 devices in 1 waves"), "{out}");
    let canary: u64 = out.split_whitespace().nth(1).unwrap().parse().unwrap();
    let r = wait_for_rollout(&hub, canary, "completed");
    let names: Vec<&str> = r["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["device"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["fleet-1", "fleet-3"]);
    let (code, _, err) = hub_cli(&hub, &["device", "tag", "fleet-1", "bad"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("KEY=VALUE"), "{err}");

    agents.remove(5);
    for mut a in agents {
        assert!(a.stop().success(), "{}", a.log());
    }
}
