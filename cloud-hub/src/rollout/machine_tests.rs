//! Every transition of the rollout state machine, without I/O or sleeps:
//! time is a number, reports are values.

use super::*;
use crate::rollout::waves::parse;
use conveyor_shared::ota::{ArtifactId, ArtifactRef, Change};

const S: i64 = 1_000_000;

fn model(v: &str) -> StageTarget {
    StageTarget::Model(ArtifactRef {
        name: "m".into(),
        version: v.into(),
        id: ArtifactId::of_payload(v),
    })
}

fn policy(max_failure_ratio: f64) -> Policy {
    Policy {
        soak_us: 10 * S,
        device_timeout_us: 60 * S,
        max_failure_ratio,
        gates: Default::default(),
        shadow: None,
    }
}

/// A rollout of m@2 to six devices d0..d5 (previously m@1; d5 on its own
/// config) in waves 1, 50%, 100% (ends 1, 3, 6).
fn six(max_failure_ratio: f64) -> (Rollout, Vec<Action>) {
    let devices = (0..6)
        .map(|i| {
            let previous = (i != 5).then(|| model("1"));
            (format!("d{i}"), previous)
        })
        .collect();
    Rollout::start(
        7,
        "classify",
        model("2"),
        devices,
        &parse("1,50%,100%").unwrap(),
        policy(max_failure_ratio),
        "alice",
        0,
    )
}

fn set_devices(actions: &[Action]) -> Vec<String> {
    actions
        .iter()
        .map(|a| match a {
            Action::Set { device, .. } | Action::Shadow { device, .. } => device.clone(),
        })
        .collect()
}

fn report(applied: Option<u64>, change: Option<(u64, Phase, u64)>) -> AgentState {
    AgentState {
        device_id: String::new(),
        generation: applied,
        stages: Default::default(),
        last_change: change.map(|(g, phase, bytes_done)| Change {
            generation: Some(g),
            phase,
            reason: (phase == Phase::Failed).then(|| "bad digest".into()),
            bytes_done,
            bytes_total: 100,
            since_us: 0,
        }),
        tags: Default::default(),
        ts_us: 0,
    }
}

fn ev_report(device: &str, r: AgentState) -> Event {
    Event::Report {
        device: device.into(),
        report: r,
    }
}

/// The driver set `device`'s desired state to generation `g` at `t`.
fn sent(r: &mut Rollout, device: &str, g: u64, t: i64) {
    r.step(
        t,
        Event::Sent {
            device: device.into(),
            generation: g,
        },
    )
    .unwrap();
}

/// `device` is sent generation `g` at `t` and reports it applied at `t`.
fn apply(r: &mut Rollout, device: &str, g: u64, t: i64) -> Vec<Action> {
    sent(r, device, g, t);
    let a = r.step(t, ev_report(device, report(Some(g), None))).unwrap();
    r.step(
        t,
        Event::GatesHeld {
            device: device.into(),
        },
    )
    .unwrap();
    a
}

fn phase(r: &Rollout, device: &str) -> DevicePhase {
    r.devices.iter().find(|d| d.device == device).unwrap().phase
}

#[test]
fn the_first_wave_starts_at_once_and_the_next_only_after_the_soak() {
    let (mut r, actions) = six(0.0);
    assert_eq!(r.waves, vec![1, 3, 6]);
    assert_eq!(set_devices(&actions), ["d0"]);
    assert_eq!(
        actions[0],
        Action::Set {
            device: "d0".into(),
            stage: "classify".into(),
            target: Some(model("2")),
        }
    );
    // Downloading, then applied: soaking, nothing new started.
    sent(&mut r, "d0", 4, S);
    r.step(
        2 * S,
        ev_report("d0", report(Some(3), Some((4, Phase::Downloading, 50)))),
    )
    .unwrap();
    assert_eq!(phase(&r, "d0"), DevicePhase::Downloading);
    let a = r
        .step(3 * S, ev_report("d0", report(Some(4), None)))
        .unwrap();
    assert!(a.is_empty());
    assert_eq!(phase(&r, "d0"), DevicePhase::Applied);
    // Soaked, but its gates have not judged it yet: not healthy.
    assert!(r.step(13 * S, Event::Tick).unwrap().is_empty());
    assert_eq!(phase(&r, "d0"), DevicePhase::Applied);
    r.step(
        3 * S,
        Event::GatesHeld {
            device: "d0".into(),
        },
    )
    .unwrap();
    assert!(r.step(12 * S, Event::Tick).unwrap().is_empty(), "soaking");
    // Soaked: healthy, and wave 2 (d1, d2) starts.
    let a = r.step(13 * S, Event::Tick).unwrap();
    assert_eq!(phase(&r, "d0"), DevicePhase::Healthy);
    assert_eq!(set_devices(&a), ["d1", "d2"]);
    assert_eq!(r.wave, 1);
    assert!(r.log.iter().any(|s| s.what == "wave 2 of 3 started"));
    // Wave 2 soaks, wave 3 starts, then everything is healthy: completed.
    apply(&mut r, "d1", 5, 14 * S);
    apply(&mut r, "d2", 5, 15 * S);
    let a = r.step(25 * S, Event::Tick).unwrap();
    assert_eq!(set_devices(&a), ["d3", "d4", "d5"]);
    for d in ["d3", "d4", "d5"] {
        apply(&mut r, d, 9, 26 * S);
    }
    assert_eq!(r.state, State::Running);
    assert!(r.step(36 * S, Event::Tick).unwrap().is_empty());
    assert_eq!(r.state, State::Completed);
    assert!(r.devices.iter().all(|d| d.phase == DevicePhase::Healthy));
    assert_eq!(r.log.last().unwrap().what, "completed");
    assert_eq!(r.log[0].by, "alice");
}

#[test]
fn failures_within_the_budget_do_not_hold_a_wave_back_and_one_more_rolls_back() {
    // 1 of 6 may fail (0.2 x 6 = 1.2).
    let (mut r, _) = six(0.2);
    sent(&mut r, "d0", 2, 0);
    let a = r
        .step(
            S,
            ev_report("d0", report(Some(1), Some((2, Phase::Failed, 0)))),
        )
        .unwrap();
    assert_eq!(phase(&r, "d0"), DevicePhase::Failed);
    assert_eq!(r.devices[0].reason.as_deref(), Some("bad digest"));
    assert_eq!(set_devices(&a), ["d1", "d2"], "the next wave goes on");
    // A second failure spends the budget: every device given the update
    // goes back, to what the hub wanted for it before.
    sent(&mut r, "d1", 3, 2 * S);
    let a = r
        .step(
            3 * S,
            ev_report("d1", report(Some(2), Some((3, Phase::Failed, 0)))),
        )
        .unwrap();
    assert_eq!(r.state, State::RolledBack);
    assert!(
        r.reason
            .as_deref()
            .unwrap()
            .contains("failure budget spent: 2 of 6"),
        "{:?}",
        r.reason
    );
    assert_eq!(set_devices(&a), ["d0", "d1", "d2"]);
    assert!(a
        .iter()
        .all(|a| matches!(a, Action::Set { target, .. } if *target == Some(model("1")))));
    // Nothing more starts, whatever happens next.
    assert!(r.step(100 * S, Event::Tick).unwrap().is_empty());
}

#[test]
fn a_device_that_makes_no_progress_times_out_and_progress_keeps_it_alive() {
    let (mut r, _) = six(0.0);
    sent(&mut r, "d0", 2, 0);
    // Bytes coming in count as progress.
    for (t, bytes) in [(50, 10), (100, 20), (150, 30)] {
        r.step(
            t * S,
            ev_report("d0", report(None, Some((2, Phase::Downloading, bytes)))),
        )
        .unwrap();
    }
    assert_eq!(phase(&r, "d0"), DevicePhase::Downloading);
    // The same report again is not progress.
    r.step(
        200 * S,
        ev_report("d0", report(None, Some((2, Phase::Downloading, 30)))),
    )
    .unwrap();
    let a = r.step(210 * S, Event::Tick).unwrap();
    assert!(r.log.iter().any(|s| s.what == "d0 timed out"));
    // No budget: the timed-out device is sent back, its reason kept.
    assert_eq!(phase(&r, "d0"), DevicePhase::RollingBack);
    assert!(r.devices[0]
        .reason
        .as_deref()
        .unwrap()
        .contains("no progress for 60 s (last: Downloading)"));
    assert_eq!(r.state, State::RolledBack);
    assert_eq!(set_devices(&a), ["d0"]);
}

#[test]
fn a_device_never_heard_from_times_out_from_when_it_was_sent_the_update() {
    let (mut r, _) = six(1.0);
    assert!(r.step(59 * S, Event::Tick).unwrap().is_empty());
    let a = r.step(60 * S, Event::Tick).unwrap();
    assert_eq!(phase(&r, "d0"), DevicePhase::TimedOut);
    assert_eq!(set_devices(&a), ["d1", "d2"], "within the budget: on");
}

#[test]
fn a_failed_gate_rolls_back_with_its_figures_and_the_rollback_is_confirmed() {
    let (mut r, _) = six(0.5);
    apply(&mut r, "d0", 2, 0);
    let a = r
        .step(
            5 * S,
            Event::GateFailed {
                device: "d0".into(),
                gate: "shadow_agreement".into(),
                figures: "agreement 0.31 < 0.90 over 40 windows".into(),
            },
        )
        .unwrap();
    assert_eq!(r.state, State::RolledBack);
    assert_eq!(set_devices(&a), ["d0"]);
    assert_eq!(phase(&r, "d0"), DevicePhase::RollingBack);
    let why = r.reason.clone().unwrap();
    assert!(
        why.contains("gate shadow_agreement failed on d0: agreement 0.31"),
        "{why}"
    );
    assert!(r.log.last().unwrap().what.contains(&why));
    // The rollback's generation applied: confirmed.
    sent(&mut r, "d0", 3, 6 * S);
    r.step(7 * S, ev_report("d0", report(Some(2), None)))
        .unwrap();
    assert_eq!(
        phase(&r, "d0"),
        DevicePhase::RollingBack,
        "the old generation"
    );
    r.step(8 * S, ev_report("d0", report(Some(3), None)))
        .unwrap();
    assert_eq!(phase(&r, "d0"), DevicePhase::RolledBack);
}

#[test]
fn a_rollback_to_the_agents_own_config_clears_the_stage() {
    let devices = vec![("solo".to_string(), None)];
    let (mut r, a) = Rollout::start(
        1,
        "classify",
        model("2"),
        devices,
        &parse("100%").unwrap(),
        policy(0.0),
        "ops",
        0,
    );
    assert_eq!(set_devices(&a), ["solo"]);
    let a = r
        .step(
            S,
            Event::Rollback {
                by: "ops".into(),
                reason: "wrong model".into(),
            },
        )
        .unwrap();
    assert_eq!(
        a,
        vec![Action::Set {
            device: "solo".into(),
            stage: "classify".into(),
            target: None,
        }]
    );
    assert_eq!(r.log.last().unwrap().by, "ops");
}

#[test]
fn pause_holds_the_next_wave_and_resume_lets_it_go() {
    let (mut r, _) = six(0.0);
    apply(&mut r, "d0", 2, 0);
    r.step(S, Event::Pause { by: "bob".into() }).unwrap();
    assert_eq!(r.state, State::Paused);
    // Soaked while paused: healthy, but wave 2 waits.
    assert!(r.step(20 * S, Event::Tick).unwrap().is_empty());
    assert_eq!(phase(&r, "d0"), DevicePhase::Healthy);
    assert_eq!(
        r.step(21 * S, Event::Pause { by: "bob".into() }),
        Err(Refused {
            id: 7,
            state: State::Paused,
            what: "pause"
        })
    );
    let a = r.step(22 * S, Event::Resume { by: "bob".into() }).unwrap();
    assert_eq!(set_devices(&a), ["d1", "d2"]);
    assert!(r.step(23 * S, Event::Resume { by: "bob".into() }).is_err());
}

#[test]
fn abort_stops_where_it_is_and_devices_keep_what_they_run() {
    let (mut r, _) = six(0.0);
    apply(&mut r, "d0", 2, 0);
    let a = r
        .step(
            S,
            Event::Abort {
                by: "carol".into(),
                reason: "store opening hours".into(),
            },
        )
        .unwrap();
    assert!(a.is_empty());
    assert_eq!(r.state, State::Aborted);
    assert!(r.step(100 * S, Event::Tick).unwrap().is_empty());
    assert!(r
        .step(
            101 * S,
            Event::Abort {
                by: "carol".into(),
                reason: "again".into()
            }
        )
        .is_err());
    // An aborted rollout can still be rolled back by hand.
    let a = r
        .step(
            102 * S,
            Event::Rollback {
                by: "carol".into(),
                reason: "after all".into(),
            },
        )
        .unwrap();
    assert_eq!(set_devices(&a), ["d0"]);
    assert!(r
        .step(
            103 * S,
            Event::Rollback {
                by: "carol".into(),
                reason: "twice".into()
            }
        )
        .is_err());
}

#[test]
fn a_completed_rollout_can_be_rolled_back_by_hand() {
    let (mut r, _) = Rollout::start(
        2,
        "classify",
        model("2"),
        vec![("a".into(), Some(model("1")))],
        &parse("100%").unwrap(),
        policy(0.0),
        "ops",
        0,
    );
    apply(&mut r, "a", 2, 0);
    r.step(10 * S, Event::Tick).unwrap();
    assert_eq!(r.state, State::Completed);
    let a = r
        .step(
            11 * S,
            Event::Rollback {
                by: "ops".into(),
                reason: "complaints".into(),
            },
        )
        .unwrap();
    assert_eq!(set_devices(&a), ["a"]);
    assert_eq!(r.state, State::RolledBack);
}

#[test]
fn a_superseded_rollout_asks_for_nothing_more() {
    let (mut r, _) = six(0.0);
    r.step(S, Event::Superseded { by: 8 }).unwrap();
    assert_eq!(r.state, State::Superseded);
    assert_eq!(r.reason.as_deref(), Some("superseded by rollout 8"));
    apply(&mut r, "d0", 2, 2 * S);
    assert!(r.step(100 * S, Event::Tick).unwrap().is_empty());
    assert!(r
        .step(
            101 * S,
            Event::Rollback {
                by: "x".into(),
                reason: "y".into()
            }
        )
        .is_err());
}

#[test]
fn reports_about_other_generations_or_devices_change_nothing() {
    let (mut r, _) = six(0.0);
    // Not sent yet: a report cannot be about this rollout.
    r.step(0, ev_report("d0", report(Some(9), None))).unwrap();
    assert_eq!(phase(&r, "d0"), DevicePhase::Pending);
    sent(&mut r, "d0", 4, 0);
    // An older generation's failure is not ours.
    r.step(
        S,
        ev_report("d0", report(Some(2), Some((3, Phase::Failed, 0)))),
    )
    .unwrap();
    assert_eq!(phase(&r, "d0"), DevicePhase::Pending);
    // A device outside the target.
    r.step(S, ev_report("zz", report(Some(4), None))).unwrap();
    assert_eq!(r.devices.len(), 6);
}

#[test]
fn a_persisted_rollout_resumes_where_it_was() {
    let (mut r, _) = six(0.2);
    apply(&mut r, "d0", 2, 0);
    let json = serde_json::to_string(&r).unwrap();
    let mut back: Rollout = serde_json::from_str(&json).unwrap();
    assert_eq!(back, r);
    let a1 = r.step(10 * S, Event::Tick).unwrap();
    let a2 = back.step(10 * S, Event::Tick).unwrap();
    assert_eq!(a1, a2);
    assert_eq!(set_devices(&a2), ["d1", "d2"]);
    assert_eq!(back, r);
}

#[test]
fn an_empty_target_completes_at_once() {
    let (r, a) = Rollout::start(
        3,
        "classify",
        model("2"),
        Vec::new(),
        &parse("100%").unwrap(),
        policy(0.0),
        "ops",
        0,
    );
    assert!(a.is_empty());
    assert_eq!(r.state, State::Completed);
}

#[test]
fn a_device_its_gates_cannot_judge_times_out_after_the_soak() {
    let (mut r, _) = six(0.0);
    sent(&mut r, "d0", 2, 0);
    r.step(0, ev_report("d0", report(Some(2), None))).unwrap();
    // Soak 10 s + timeout 60 s.
    assert!(r.step(69 * S, Event::Tick).unwrap().is_empty());
    assert_eq!(phase(&r, "d0"), DevicePhase::Applied);
    r.step(70 * S, Event::Tick).unwrap();
    assert_eq!(r.state, State::RolledBack);
    assert!(r.devices[0]
        .reason
        .as_deref()
        .unwrap()
        .contains("gates could not judge it"));
}

fn artifact(v: &str) -> ArtifactRef {
    match model(v) {
        StageTarget::Model(a) => a,
        StageTarget::Transforms(_) => unreachable!(),
    }
}

/// Six devices, waves 1, 50%, 100%, with a shadow gate first.
fn six_shadowed(only: bool) -> (Rollout, Vec<Action>) {
    let devices = (0..6)
        .map(|i| (format!("d{i}"), Some(model("1"))))
        .collect();
    Rollout::start(
        8,
        "classify",
        model("2"),
        devices,
        &parse("1,50%,100%").unwrap(),
        Policy {
            shadow: Some(crate::rollout::shadow::ShadowGate {
                only,
                ..Default::default()
            }),
            ..policy(0.0)
        },
        "alice",
        0,
    )
}

fn shadow_held(r: &mut Rollout, device: &str, t: i64) -> Vec<Action> {
    r.step(
        t,
        Event::ShadowHeld {
            device: device.into(),
            figures: "agreement 0.950".into(),
        },
    )
    .unwrap()
}

#[test]
fn with_a_shadow_gate_a_device_shadows_first_and_switches_once_it_held() {
    let (mut r, actions) = six_shadowed(false);
    // The stage is left as it is; the candidate runs beside it.
    assert_eq!(
        actions,
        vec![Action::Shadow {
            device: "d0".into(),
            stage: "classify".into(),
            candidate: Some(artifact("2")),
        }]
    );
    sent(&mut r, "d0", 1, S);
    r.step(S, ev_report("d0", report(Some(1), None))).unwrap();
    assert_eq!(phase(&r, "d0"), DevicePhase::Shadowing);
    // Time alone does not switch it, nor do the soak gates.
    assert!(r.step(5 * S, Event::Tick).unwrap().is_empty());
    r.step(
        5 * S,
        Event::GatesHeld {
            device: "d0".into(),
        },
    )
    .unwrap();
    assert_eq!(phase(&r, "d0"), DevicePhase::Shadowing);
    // The shadow gate holds: switched to the candidate (which ends its shadow).
    let a = shadow_held(&mut r, "d0", 6 * S);
    assert_eq!(
        a,
        vec![Action::Set {
            device: "d0".into(),
            stage: "classify".into(),
            target: Some(model("2")),
        }]
    );
    assert_eq!(phase(&r, "d0"), DevicePhase::Pending);
    // The shadow's own generation applied again is not the switch.
    r.step(6 * S, ev_report("d0", report(Some(1), None)))
        .unwrap();
    assert_eq!(phase(&r, "d0"), DevicePhase::Pending);
    apply(&mut r, "d0", 2, 7 * S);
    assert_eq!(phase(&r, "d0"), DevicePhase::Applied);
    // Soaked: healthy, and the next wave starts with shadows.
    let a = r.step(17 * S, Event::Tick).unwrap();
    assert_eq!(phase(&r, "d0"), DevicePhase::Healthy);
    assert!(a.iter().all(|a| matches!(
        a,
        Action::Shadow {
            candidate: Some(_),
            ..
        }
    )));
    assert_eq!(set_devices(&a), ["d1", "d2"]);
    let d0 = &r.devices[0];
    assert!(d0.shadow_passed && d0.shadow_figures.as_deref() == Some("agreement 0.950"));
    assert!(r
        .log
        .iter()
        .any(|s| s.what.contains("d0: shadow held") && s.what.contains("switching it to m@2")));
}

#[test]
fn a_shadow_that_fails_its_gate_rolls_back_and_no_device_ever_switched() {
    let (mut r, _) = six_shadowed(false);
    sent(&mut r, "d0", 1, S);
    r.step(S, ev_report("d0", report(Some(1), None))).unwrap();
    let a = r
        .step(
            3 * S,
            Event::GateFailed {
                device: "d0".into(),
                gate: "shadow_agreement".into(),
                figures: "agreement 0.200 (4 of 20 windows)".into(),
            },
        )
        .unwrap();
    assert_eq!(r.state, State::RolledBack);
    assert_eq!(phase(&r, "d0"), DevicePhase::RollingBack);
    // Back to what it ran, which also ends the shadow run.
    assert_eq!(
        a,
        vec![Action::Set {
            device: "d0".into(),
            stage: "classify".into(),
            target: Some(model("1")),
        }]
    );
    assert!(r
        .reason
        .as_deref()
        .unwrap()
        .contains("gate shadow_agreement failed on d0: agreement 0.200"));
    assert_eq!(
        r.devices[0].shadow_figures.as_deref(),
        Some("agreement 0.200 (4 of 20 windows)")
    );
    assert!(r.devices[1..].iter().all(|d| !d.requested));
}

#[test]
fn a_shadow_only_rollout_judges_every_wave_and_switches_none() {
    let (mut r, _) = six_shadowed(true);
    sent(&mut r, "d0", 1, S);
    r.step(S, ev_report("d0", report(Some(1), None))).unwrap();
    let a = shadow_held(&mut r, "d0", 2 * S);
    // Its shadow run ends; it keeps its model, and the next wave starts.
    assert_eq!(
        a[0],
        Action::Shadow {
            device: "d0".into(),
            stage: "classify".into(),
            candidate: None,
        }
    );
    assert_eq!(phase(&r, "d0"), DevicePhase::Healthy);
    assert_eq!(set_devices(&a[1..]), ["d1", "d2"]);
    let mut g = 2;
    for wave in [vec!["d1", "d2"], vec!["d3", "d4", "d5"]] {
        for d in &wave {
            sent(&mut r, d, g, 3 * S);
            r.step(3 * S, ev_report(d, report(Some(g), None))).unwrap();
            g += 1;
        }
        for d in &wave {
            let a = shadow_held(&mut r, d, 4 * S);
            assert!(a.iter().all(|a| !matches!(a, Action::Set { .. })), "{a:?}");
        }
    }
    assert_eq!(r.state, State::Completed);
    assert!(r
        .devices
        .iter()
        .all(|d| d.phase == DevicePhase::Healthy && d.shadow_passed));
}

#[test]
fn a_shadow_that_cannot_be_judged_times_out_and_its_run_ends() {
    let (mut r, _) = six_shadowed(false);
    sent(&mut r, "d0", 1, S);
    r.step(S, ev_report("d0", report(Some(1), None))).unwrap();
    // Soak + device timeout after the shadow began, no verdict.
    assert!(r.step(60 * S, Event::Tick).unwrap().is_empty());
    let a = r.step(71 * S, Event::Tick).unwrap();
    assert_eq!(phase(&r, "d0"), DevicePhase::RollingBack);
    assert!(r.devices[0]
        .reason
        .as_deref()
        .unwrap()
        .contains("shadow run could not be judged"));
    // Over the budget (none allowed): the stop and the rollback.
    assert_eq!(r.state, State::RolledBack);
    assert!(a.contains(&Action::Shadow {
        device: "d0".into(),
        stage: "classify".into(),
        candidate: None,
    }));
}

#[test]
fn aborting_or_superseding_a_rollout_ends_its_shadow_runs() {
    for event in [
        Event::Abort {
            by: "bob".into(),
            reason: "enough".into(),
        },
        Event::Superseded { by: 9 },
    ] {
        let (mut r, _) = six_shadowed(false);
        sent(&mut r, "d0", 1, S);
        r.step(S, ev_report("d0", report(Some(1), None))).unwrap();
        let a = r.step(2 * S, event).unwrap();
        assert_eq!(
            a,
            vec![Action::Shadow {
                device: "d0".into(),
                stage: "classify".into(),
                candidate: None,
            }]
        );
        assert_eq!(phase(&r, "d0"), DevicePhase::Pending);
        // A late verdict changes nothing.
        assert!(shadow_held(&mut r, "d0", 3 * S).is_empty());
    }
}
