//! The rollouts' driver: the only place that touches the machines. It
//! feeds them what happens (agents' reports, the clock, operators'
//! commands), does what they ask (sets desired states), answers with the
//! generations, and writes each rollout down after any step that changed
//! it.
//!
//! Locks: the rollouts, then (inside `set_and_publish`) the device
//! store; never the other way round (reports are handed over after the
//! device store's lock is released).

use std::collections::{BTreeMap, VecDeque};

use conveyor_shared::ota::{AgentState, ArtifactRef, StageRunning, StageTarget};
use conveyor_shared::DeviceId;

use super::figures::Tally;
use super::gates::{judge, Baseline, Gates, Sample, Scored, Verdict};
use super::machine::{Action, DevicePhase, Event, Policy, Refused, Rollout, State};
use super::shadow::{self, ShadowGate};
use super::store::RolloutStore;
use super::waves::WaveSize;
use crate::ingest::HubState;

#[derive(Debug, thiserror::Error)]
pub enum DriveError {
    #[error("no rollout {0}")]
    NotFound(u64),
    #[error(transparent)]
    Refused(#[from] Refused),
    #[error("cannot store rollout {id}: {source}")]
    Io {
        id: u64,
        #[source]
        source: std::io::Error,
    },
}

/// What a rollout is started with.
pub struct Start {
    pub stage: String,
    pub target: StageTarget,
    pub devices: Vec<DeviceId>,
    pub waves: Vec<WaveSize>,
    pub policy: Policy,
    pub by: String,
}

/// Does what `actions` ask for `r`, feeding back each generation, until
/// the machine asks nothing more.
fn run(s: &HubState, r: &mut Rollout, actions: Vec<Action>, now: i64) {
    let mut queue: VecDeque<Action> = actions.into();
    while let Some(action) = queue.pop_front() {
        let (device, changes, shadows) = match action {
            Action::Set {
                device,
                stage,
                target,
            } => (device, BTreeMap::from([(stage, target)]), BTreeMap::new()),
            Action::Shadow {
                device,
                stage,
                candidate,
            } => (
                device,
                BTreeMap::new(),
                BTreeMap::from([(stage, candidate)]),
            ),
        };
        let Ok(id) = DeviceId::new(device.clone()) else {
            continue;
        };
        let by = format!("rollout {}", r.id);
        match crate::ota::deploy::set_and_publish(s, &id, &changes, &shadows, &by, now) {
            Ok(desired) => {
                let event = Event::Sent {
                    device,
                    generation: desired.doc.generation,
                };
                // Sent is never refused.
                if let Ok(more) = r.step(now, event) {
                    queue.extend(more);
                }
            }
            // The device times out and counts as failed.
            Err(e) => {
                tracing::error!(rollout = r.id, device = %id, "cannot set the desired state: {e}")
            }
        }
    }
}

fn save(store: &mut RolloutStore, r: Rollout) -> Result<(), DriveError> {
    let id = r.id;
    store
        .save(r)
        .map_err(|source| DriveError::Io { id, source })
}

/// Starts a rollout; a rollout still running for the same stage on any
/// of the same devices is superseded by it.
pub fn start(s: &HubState, start: Start, now: i64) -> Result<Rollout, DriveError> {
    let mut store = s.ota.rollouts();
    let id = store.next_id();
    let names: Vec<String> = start.devices.iter().map(|d| d.to_string()).collect();
    let superseded: Vec<u64> = store
        .rollouts
        .values()
        .filter(|r| !r.state.is_final() && r.stage == start.stage)
        .filter(|r| r.devices.iter().any(|d| names.contains(&d.device)))
        .map(|r| r.id)
        .collect();
    // What each device ran before any of the superseded rollouts changed
    // it: where a rollback of the new one goes.
    let mut before_superseded = BTreeMap::new();
    for old in superseded {
        let mut r = store.rollouts[&old].clone();
        before_superseded.extend(changed_from(&r));
        // Its shadow runs end (superseding is never refused).
        let stops = r
            .step(now, Event::Superseded { by: id })
            .unwrap_or_default();
        run(s, &mut r, stops, now);
        tracing::info!(rollout = old, by = id, "rollout superseded");
        save(&mut store, r)?;
    }
    let devices = {
        let ota = s.ota.devices();
        names
            .iter()
            .map(|d| {
                let previous = before_superseded.remove(d).unwrap_or_else(|| {
                    ota.devices
                        .get(d)
                        .and_then(|e| e.desired.as_ref())
                        .and_then(|desired| desired.doc.stages.get(&start.stage).cloned())
                });
                (d.clone(), previous)
            })
            .collect()
    };
    let (mut r, actions) = Rollout::start(
        id,
        &start.stage,
        start.target,
        devices,
        &start.waves,
        start.policy,
        &start.by,
        now,
    );
    run(s, &mut r, actions, now);
    tracing::info!(rollout = id, stage = %r.stage, devices = r.devices.len(), waves = ?r.waves, by = %start.by, "rollout started");
    save(&mut store, r.clone())?;
    Ok(r)
}

/// The devices rollout `r` gave its target, each with what it ran before.
fn changed_from(r: &Rollout) -> Vec<(String, Option<StageTarget>)> {
    r.devices
        .iter()
        .filter(|d| d.requested)
        .map(|d| (d.device.clone(), d.previous.clone()))
        .collect()
}

/// An operator's command (pause, resume, abort, rollback).
pub fn command(s: &HubState, id: u64, event: Event, now: i64) -> Result<Rollout, DriveError> {
    let mut store = s.ota.rollouts();
    let mut r = store
        .rollouts
        .get(&id)
        .cloned()
        .ok_or(DriveError::NotFound(id))?;
    let actions = r.step(now, event)?;
    run(s, &mut r, actions, now);
    if let Some(step) = r.log.last() {
        tracing::info!(rollout = id, by = %step.by, "{}", step.what);
    }
    save(&mut store, r.clone())?;
    Ok(r)
}

/// Steps every rollout that `pick` selects with `event`, saving those it
/// changed.
fn step_all(s: &HubState, now: i64, pick: impl Fn(&Rollout) -> bool, event: impl Fn() -> Event) {
    let mut store = s.ota.rollouts();
    let ids: Vec<u64> = store
        .rollouts
        .values()
        .filter(|r| pick(r))
        .map(|r| r.id)
        .collect();
    for id in ids {
        let before = store.rollouts[&id].clone();
        let mut r = before.clone();
        let Ok(actions) = r.step(now, event()) else {
            continue;
        };
        run(s, &mut r, actions, now);
        if r != before {
            for step in &r.log[before.log.len()..] {
                tracing::info!(rollout = id, by = %step.by, "{}", step.what);
            }
            if let Err(e) = save(&mut store, r) {
                tracing::error!("{e}");
            }
        }
    }
}

/// An agent's report, for every rollout that has given it something.
pub fn on_report(s: &HubState, device: &str, state: &AgentState, now: i64) {
    step_all(
        s,
        now,
        |r| {
            r.state != State::Superseded
                && r.devices
                    .iter()
                    .any(|d| d.device == device && d.generation.is_some())
        },
        || Event::Report {
            device: device.to_string(),
            report: state.clone(),
        },
    );
}

/// The clock: soaks end, devices time out, waves start; and every
/// soaking device's gates, and every shadowing device's shadow gate, are
/// judged.
pub fn tick(s: &HubState, now: i64) {
    step_all(s, now, |r| !r.state.is_final(), || Event::Tick);
    let mut tallies = BTreeMap::new();
    for (id, event) in judge_shadowing(s, now, &mut tallies) {
        step_all(s, now, |r| r.id == id, || event.clone());
    }
    let (verdicts, baselines) = judge_soaking(s, now, &mut tallies);
    {
        let mut figures = s.ota.figures();
        for (id, tally) in &tallies {
            figures.record(*id, tally, now);
        }
    }
    for (id, device, baseline) in baselines {
        step_all(
            s,
            now,
            |r| r.id == id,
            || Event::Baseline {
                device: device.clone(),
                baseline,
            },
        );
    }
    for (id, device, verdict) in verdicts {
        let event = match verdict {
            Verdict::Broken(b) => Event::GateFailed {
                device,
                gate: b.gate.to_string(),
                figures: b.figures,
            },
            Verdict::Held => Event::GatesHeld { device },
            Verdict::Waiting => continue,
        };
        step_all(s, now, |r| r.id == id, || event.clone());
    }
}

/// The shadow gate's verdict on each shadowing device that has one: a
/// [`Event::ShadowHeld`] or [`Event::GateFailed`] for its rollout. Each
/// device's figures go into its rollout's tally.
fn judge_shadowing(
    s: &HubState,
    now: i64,
    tallies: &mut BTreeMap<u64, Tally>,
) -> Vec<(u64, Event)> {
    let shadowing: Vec<(u64, String, String, ArtifactRef, ShadowGate)> = {
        let store = s.ota.rollouts();
        store
            .rollouts
            .values()
            .filter(|r| !r.state.is_final())
            .filter_map(|r| Some((r, r.policy.shadow?, r.candidate()?)))
            .flat_map(|(r, gate, candidate)| {
                r.devices
                    .iter()
                    .filter(|d| d.phase == DevicePhase::Shadowing)
                    .map(move |d| {
                        (
                            r.id,
                            d.device.clone(),
                            r.stage.clone(),
                            candidate.clone(),
                            gate,
                        )
                    })
            })
            .collect()
    };
    let registry = s.registry();
    let mut events = Vec::new();
    for (rollout, device, stage, candidate, gate) in shadowing {
        let view = registry.get(&device, now);
        let stats = view
            .as_ref()
            .and_then(|v| v.entry.last_heartbeat.as_ref())
            .and_then(|h| h.stages.iter().find(|st| st.name == stage))
            .and_then(|st| st.shadow.as_ref());
        tallies.entry(rollout).or_default().shadowing(stats);
        let event = match shadow::judge(&gate, &candidate, stats) {
            (Verdict::Held, figures) => Event::ShadowHeld { device, figures },
            (Verdict::Broken(b), _) => Event::GateFailed {
                device,
                gate: b.gate.to_string(),
                figures: b.figures,
            },
            (Verdict::Waiting, _) => continue,
        };
        events.push((rollout, event));
    }
    events
}

/// One soaking device of a rollout, to sample.
struct Soaking {
    rollout: u64,
    device: String,
    stage: String,
    candidate: String,
    gates: Gates,
    applied_us: i64,
    held: bool,
    baseline: Option<Baseline>,
}

/// The gates' verdict on each soaking device that changes something (a
/// gate broken, or held for the first time), and the baselines of those
/// whose soak just began. The rollouts' lock is not held while the
/// registry and the reports are read. Each sample goes into its
/// rollout's tally.
#[allow(clippy::type_complexity)]
fn judge_soaking(
    s: &HubState,
    now: i64,
    tallies: &mut BTreeMap<u64, Tally>,
) -> (Vec<(u64, String, Verdict)>, Vec<(u64, String, Baseline)>) {
    let soaking: Vec<Soaking> = {
        let store = s.ota.rollouts();
        store
            .rollouts
            .values()
            .filter(|r| !r.state.is_final())
            .flat_map(|r| {
                let candidate = match &r.target {
                    StageTarget::Model(a) => a.to_string(),
                    StageTarget::Transforms(_) => String::new(),
                };
                r.devices
                    .iter()
                    .filter(|d| d.phase == DevicePhase::Applied)
                    .map(move |d| Soaking {
                        rollout: r.id,
                        device: d.device.clone(),
                        stage: r.stage.clone(),
                        candidate: candidate.clone(),
                        gates: r.policy.gates,
                        applied_us: d.applied_us.unwrap_or(now),
                        held: d.gates_held,
                        baseline: d.baseline,
                    })
            })
            .collect()
    };
    let mut verdicts = Vec::new();
    let mut baselines = Vec::new();
    for d in soaking {
        let champion = {
            let ota = s.ota.devices();
            ota.devices
                .get(&d.device)
                .and_then(|e| e.report())
                .and_then(|st| st.stages.get(&d.stage))
                .and_then(|st| match &st.previous {
                    Some(StageRunning::Model(a)) => Some(a.to_string()),
                    _ => None,
                })
        };
        let sample = {
            let registry = s.registry();
            let Some(view) = registry.get(&d.device, now) else {
                continue;
            };
            let entry = &view.entry;
            let tally = |key: Option<&str>| key.and_then(|k| entry.predictions.get(k));
            let scored = |key: Option<&str>| {
                tally(key).map_or(Scored::default(), |t| Scored {
                    scored: t.scored,
                    correct: t.correct,
                })
            };
            let teacher = |key: Option<&str>| {
                tally(key).map_or(Scored::default(), |t| Scored {
                    scored: t.teacher_sampled,
                    correct: t.teacher_agreed,
                })
            };
            let now_counters = entry
                .last_heartbeat
                .as_ref()
                .map(|h| stage_counters(h, &d.stage))
                .unwrap_or_default();
            if d.baseline.is_none() {
                baselines.push((d.rollout, d.device.clone(), now_counters));
            }
            Sample {
                now: now_counters,
                baseline: d.baseline,
                candidate_scored: scored(Some(&d.candidate)),
                champion_scored: scored(champion.as_deref()),
                candidate_teacher: teacher(Some(&d.candidate)),
                champion_teacher: teacher(champion.as_deref()),
                candidate: d.candidate.clone(),
                champion,
                silent_us: now - entry.last_seen_us,
                agent_started_us: entry
                    .last_heartbeat
                    .as_ref()
                    .map(|h| h.ts_us - (h.uptime_s * 1e6) as i64),
                applied_us: d.applied_us,
            }
        };
        tallies.entry(d.rollout).or_default().soaking(&sample);
        match judge(&d.gates, &sample) {
            Verdict::Held if d.held => {}
            v => verdicts.push((d.rollout, d.device, v)),
        }
    }
    (verdicts, baselines)
}

/// The stage's error counters (failed windows; failed and dead-lettered
/// records of its transforms) and the agent's memory, from a heartbeat.
fn stage_counters(h: &conveyor_shared::control::Heartbeat, stage: &str) -> Baseline {
    let errors = h
        .stages
        .iter()
        .filter(|st| st.name == stage)
        .map(|st| {
            st.dropped.get("inference_failed").copied().unwrap_or(0)
                + st.transforms
                    .iter()
                    .map(|t| t.dead_lettered + t.failures.values().sum::<u64>())
                    .sum::<u64>()
        })
        .sum();
    Baseline {
        errors,
        rss_bytes: h.rss_bytes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollout::waves::parse;
    use conveyor_shared::ota::{ArtifactId, ArtifactRef};

    fn model(v: &str) -> StageTarget {
        StageTarget::Model(ArtifactRef {
            name: "m".into(),
            version: v.into(),
            id: ArtifactId::of_payload(v),
        })
    }

    /// A rollout superseded half-way hands on, for the devices it
    /// changed, what they ran before it (not its own candidate).
    #[test]
    fn a_superseded_rollout_hands_on_what_its_devices_ran_before() {
        let policy = Policy {
            soak_us: 1,
            device_timeout_us: 1_000_000,
            max_failure_ratio: 0.0,
            gates: Default::default(),
            shadow: None,
        };
        let (r, _) = Rollout::start(
            1,
            "classify",
            model("bad"),
            vec![("a".into(), Some(model("1"))), ("b".into(), None)],
            &parse("1,100%").unwrap(),
            policy,
            "ops",
            0,
        );
        assert_eq!(changed_from(&r), vec![("a".to_string(), Some(model("1")))]);
    }
}
