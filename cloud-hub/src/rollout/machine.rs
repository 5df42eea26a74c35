//! The rollout state machine, as plain data: no I/O, no clock, no tasks.
//!
//! A [`Rollout`] takes [`Event`]s (time passing, the devices' reports, the
//! gates' verdicts, operators' commands) with the time as a parameter,
//! and answers with [`Action`]s (set a device's stage in its desired
//! state). The driver in the hub does the I/O: it signs and publishes the
//! desired states an action asks for, feeds the generations back as
//! [`Event::Sent`], and persists the rollout after every step, so a hub
//! restarted mid-rollout resumes where it was. Every test of the policy
//! runs without a broker, an agent or a sleep.
//!
//! Invariants:
//! - A wave starts only when every device of the waves before it is
//!   healthy (applied, soaked, and its gates judged it and held) or
//!   counted as failed; failures within the budget do not hold a wave
//!   back.
//! - A device given the update that makes no progress for
//!   `device_timeout_us` is timed out, and counts as failed: no rollout
//!   waits forever.
//! - A gate that fails, or failures over the budget, roll back every
//!   device the rollout changed to what the hub wanted for it before
//!   (`previous`), and nothing more is started.
//! - With a shadow gate, a device runs the candidate beside its model
//!   first (`shadowing`), and is switched to it only once the gate held
//!   on it; a shadow-only rollout never switches. A shadow run ends when
//!   its device is judged, timed out, rolled back, or its rollout ends.
//! - Every change of the rollout's state is in [`Rollout::log`]: when,
//!   who, what and why.

use serde::{Deserialize, Serialize};

use conveyor_shared::ota::{AgentState, ArtifactRef, Phase, StageTarget};

use super::waves::{resolve, WaveSize};

/// The timing and tolerance of one rollout.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Policy {
    /// How long an applied device runs, every gate holding, before it
    /// counts as healthy.
    pub soak_us: i64,
    /// A device given the update that shows no progress for this long is
    /// timed out (counted as failed).
    pub device_timeout_us: i64,
    /// Failed and timed-out devices tolerated, as a share of the target
    /// (0.0: none). One more and the rollout rolls back.
    pub max_failure_ratio: f64,
    /// What a soaking device must hold (judged by the driver, see
    /// [`super::gates`]).
    #[serde(default)]
    pub gates: super::gates::Gates,
    /// Run the candidate beside each device's model first, and switch
    /// only if this gate holds (a model target only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<super::shadow::ShadowGate>,
}

/// Where one device is in the rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DevicePhase {
    /// Not given the update yet, or given it and not yet heard from.
    Pending,
    Downloading,
    Verifying,
    Applying,
    /// Runs the candidate in shadow beside its model, to be judged.
    Shadowing,
    /// Runs it; soaking.
    Applied,
    /// Soaked with every gate held.
    Healthy,
    Failed,
    TimedOut,
    /// Sent back to its previous target; not yet confirmed.
    RollingBack,
    RolledBack,
}

impl DevicePhase {
    /// Done with, for a wave's progress.
    fn settled(self) -> bool {
        matches!(
            self,
            DevicePhase::Healthy | DevicePhase::Failed | DevicePhase::TimedOut
        )
    }

    fn failed(self) -> bool {
        matches!(self, DevicePhase::Failed | DevicePhase::TimedOut)
    }
}

/// One device of the target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceRun {
    pub device: String,
    /// What the hub wanted this stage to run on it before the rollout
    /// (`None`: the agent's own config): where a rollback goes.
    pub previous: Option<StageTarget>,
    pub phase: DevicePhase,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Asked of the driver (an [`Action::Set`] is out).
    #[serde(default)]
    pub requested: bool,
    /// The desired-state generation that carries the update (or, rolling
    /// back, the rollback).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
    /// When it was last seen to make progress (or was given the update).
    #[serde(default)]
    pub progress_us: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_us: Option<i64>,
    #[serde(default)]
    bytes_done: u64,
    /// Its gates had what they need to judge it and held (a soaking
    /// device is healthy only with this).
    #[serde(default)]
    pub gates_held: bool,
    /// Its counters when it was first seen soaking, for the gates that
    /// judge growth (errors, memory). Kept here so a restarted hub
    /// judges against the same ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<super::gates::Baseline>,
    /// When its shadow run was seen to start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow_us: Option<i64>,
    /// Its shadow gate held (it may switch to the candidate).
    #[serde(default)]
    pub shadow_passed: bool,
    /// The shadow run's figures when it was judged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow_figures: Option<String>,
}

/// The rollout as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Running,
    Paused,
    Completed,
    /// Stopped by an operator: devices keep what they run.
    Aborted,
    /// Every changed device sent back to its previous target.
    RolledBack,
    /// A later rollout for the same stage took over.
    Superseded,
}

impl State {
    pub fn is_final(self) -> bool {
        !matches!(self, State::Running | State::Paused)
    }
}

/// One recorded step: when, who, what and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    pub at_us: i64,
    pub by: String,
    pub what: String,
}

/// What the machine is told.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Time passed.
    Tick,
    /// The driver set `device`'s desired state as an [`Action::Set`]
    /// asked: its generation.
    Sent {
        device: String,
        generation: u64,
    },
    /// `device`'s latest report.
    Report {
        device: String,
        report: AgentState,
    },
    /// Every gate of soaking `device` had what it needs to judge, and held.
    GatesHeld {
        device: String,
    },
    /// Soaking `device`'s counters, taken when its soak began.
    Baseline {
        device: String,
        baseline: super::gates::Baseline,
    },
    /// The shadow gate held for shadowing `device`, on these figures.
    ShadowHeld {
        device: String,
        figures: String,
    },
    /// A gate did not hold for `device` during its soak (or its shadow
    /// run).
    GateFailed {
        device: String,
        gate: String,
        figures: String,
    },
    Pause {
        by: String,
    },
    Resume {
        by: String,
    },
    Abort {
        by: String,
        reason: String,
    },
    Rollback {
        by: String,
        reason: String,
    },
    /// Rollout `by` now owns this stage on these devices.
    Superseded {
        by: u64,
    },
}

/// What the machine asks the driver to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Set `stage` on `device` to `target` (`None`: back to the agent's
    /// own config) in its desired state, and answer with [`Event::Sent`].
    Set {
        device: String,
        stage: String,
        target: Option<StageTarget>,
    },
    /// Start (`Some`) or stop (`None`) a shadow run of `candidate` beside
    /// `stage` on `device`, the stage itself untouched; answer with
    /// [`Event::Sent`].
    Shadow {
        device: String,
        stage: String,
        candidate: Option<ArtifactRef>,
    },
}

/// An operator's command that does not fit the rollout's state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("rollout {id} is {state:?}: cannot {what}")]
pub struct Refused {
    pub id: u64,
    pub state: State,
    pub what: &'static str,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rollout {
    pub id: u64,
    pub stage: String,
    pub target: StageTarget,
    pub policy: Policy,
    /// Where each wave ends (a count of devices, growing).
    pub waves: Vec<usize>,
    /// The wave under way (an index into `waves`).
    pub wave: usize,
    /// The target, in the order the waves take it.
    pub devices: Vec<DeviceRun>,
    pub state: State,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub log: Vec<Step>,
}

impl Rollout {
    /// A rollout of `target` to `stage` on `devices` (each with what the
    /// hub wanted for the stage before), started by `by` at `now`. The
    /// first wave's actions come with it.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        id: u64,
        stage: &str,
        target: StageTarget,
        devices: Vec<(String, Option<StageTarget>)>,
        waves: &[WaveSize],
        policy: Policy,
        by: &str,
        now: i64,
    ) -> (Rollout, Vec<Action>) {
        let waves = resolve(waves, devices.len());
        let mut r = Rollout {
            id,
            stage: stage.to_string(),
            target,
            policy,
            waves,
            wave: 0,
            devices: devices
                .into_iter()
                .map(|(device, previous)| DeviceRun {
                    device,
                    previous,
                    phase: DevicePhase::Pending,
                    reason: None,
                    requested: false,
                    generation: None,
                    progress_us: now,
                    applied_us: None,
                    bytes_done: 0,
                    gates_held: false,
                    baseline: None,
                    shadow_us: None,
                    shadow_passed: false,
                    shadow_figures: None,
                })
                .collect(),
            state: State::Running,
            reason: None,
            log: Vec::new(),
        };
        let ends: Vec<String> = r.waves.iter().map(usize::to_string).collect();
        r.record(
            now,
            by,
            format!(
                "started: {} devices in {} waves (ending at {})",
                r.devices.len(),
                r.waves.len(),
                ends.join(", ")
            ),
        );
        let mut actions = Vec::new();
        r.advance(now, &mut actions);
        (r, actions)
    }

    fn record(&mut self, at_us: i64, by: &str, what: String) {
        self.log.push(Step {
            at_us,
            by: by.to_string(),
            what,
        });
    }

    fn refuse(&self, what: &'static str) -> Refused {
        Refused {
            id: self.id,
            state: self.state,
            what,
        }
    }

    /// Takes one event at `now`; the actions it leads to.
    pub fn step(&mut self, now: i64, event: Event) -> Result<Vec<Action>, Refused> {
        let mut actions = Vec::new();
        match event {
            Event::Tick => {}
            Event::Sent { device, generation } => {
                if let Some(d) = self.device_mut(&device) {
                    d.generation = Some(generation);
                    d.progress_us = now;
                }
            }
            Event::Report { device, report } => self.report(now, &device, &report),
            Event::Baseline { device, baseline } => {
                if let Some(d) = self.device_mut(&device) {
                    if d.phase == DevicePhase::Applied && d.baseline.is_none() {
                        d.baseline = Some(baseline);
                    }
                }
            }
            Event::GatesHeld { device } => {
                if let Some(d) = self.device_mut(&device) {
                    if d.phase == DevicePhase::Applied {
                        d.gates_held = true;
                    }
                }
            }
            Event::ShadowHeld { device, figures } => {
                let (only, candidate) = (self.shadow_only(), self.candidate());
                let stage = self.stage.clone();
                let target = self.target.clone();
                let Some(d) = self.device_mut(&device) else {
                    return Ok(actions);
                };
                if d.phase != DevicePhase::Shadowing {
                    return Ok(actions);
                }
                d.shadow_passed = true;
                d.shadow_figures = Some(figures.clone());
                d.progress_us = now;
                if only {
                    d.phase = DevicePhase::Healthy;
                    actions.push(Action::Shadow {
                        device: device.clone(),
                        stage,
                        candidate: None,
                    });
                    self.record(
                        now,
                        "hub",
                        format!(
                            "{device}: shadow held ({figures}); shadow only, so it keeps its model"
                        ),
                    );
                } else {
                    d.phase = DevicePhase::Pending;
                    d.generation = None;
                    actions.push(Action::Set {
                        device: device.clone(),
                        stage,
                        target: Some(target),
                    });
                    self.record(
                        now,
                        "hub",
                        format!(
                            "{device}: shadow held ({figures}); switching it to {}",
                            candidate.map_or_else(String::new, |c| c.to_string())
                        ),
                    );
                }
            }
            Event::GateFailed {
                device,
                gate,
                figures,
            } => {
                if self.state.is_final() {
                    return Ok(actions);
                }
                let why = format!("gate {gate} failed on {device}: {figures}");
                if let Some(d) = self.device_mut(&device) {
                    if !d.phase.failed() {
                        if d.phase == DevicePhase::Shadowing {
                            d.shadow_figures = Some(figures.clone());
                        }
                        d.phase = DevicePhase::Failed;
                        d.reason = Some(why.clone());
                    }
                }
                self.roll_back(now, "hub", why, &mut actions);
                return Ok(actions);
            }
            Event::Pause { by } => {
                if self.state != State::Running {
                    return Err(self.refuse("pause"));
                }
                self.state = State::Paused;
                self.record(now, &by, format!("paused in wave {}", self.wave + 1));
                return Ok(actions);
            }
            Event::Resume { by } => {
                if self.state != State::Paused {
                    return Err(self.refuse("resume"));
                }
                self.state = State::Running;
                self.record(now, &by, format!("resumed in wave {}", self.wave + 1));
            }
            Event::Abort { by, reason } => {
                if self.state.is_final() {
                    return Err(self.refuse("abort"));
                }
                self.state = State::Aborted;
                self.reason = Some(reason.clone());
                self.stop_shadows(&mut actions);
                self.record(
                    now,
                    &by,
                    format!("aborted: {reason}; devices keep what they run"),
                );
                return Ok(actions);
            }
            Event::Rollback { by, reason } => {
                if matches!(self.state, State::RolledBack | State::Superseded) {
                    return Err(self.refuse("roll back"));
                }
                self.roll_back(now, &by, reason, &mut actions);
                return Ok(actions);
            }
            Event::Superseded { by } => {
                if !self.state.is_final() {
                    self.state = State::Superseded;
                    self.stop_shadows(&mut actions);
                    self.reason = Some(format!("superseded by rollout {by}"));
                    self.record(now, "hub", format!("superseded by rollout {by}"));
                }
                return Ok(actions);
            }
        }
        self.advance(now, &mut actions);
        Ok(actions)
    }

    /// The candidate model (a model target).
    pub fn candidate(&self) -> Option<ArtifactRef> {
        match &self.target {
            StageTarget::Model(a) => Some(a.clone()),
            StageTarget::Transforms(_) => None,
        }
    }

    fn shadow_only(&self) -> bool {
        self.policy.shadow.is_some_and(|g| g.only)
    }

    /// Ends the shadow run of every device still in one.
    fn stop_shadows(&mut self, actions: &mut Vec<Action>) {
        for d in self.devices.iter_mut() {
            if d.phase == DevicePhase::Shadowing {
                d.phase = DevicePhase::Pending;
                actions.push(Action::Shadow {
                    device: d.device.clone(),
                    stage: self.stage.clone(),
                    candidate: None,
                });
            }
        }
    }

    fn device_mut(&mut self, device: &str) -> Option<&mut DeviceRun> {
        self.devices.iter_mut().find(|d| d.device == device)
    }

    /// A device's report against the generation that carries its update.
    fn report(&mut self, now: i64, device: &str, report: &AgentState) {
        let shadowing = self.policy.shadow.is_some();
        let Some(d) = self.device_mut(device) else {
            return;
        };
        let Some(g) = d.generation else {
            return;
        };
        let applied = report.generation.is_some_and(|a| a >= g);
        if d.phase == DevicePhase::RollingBack {
            if applied {
                d.phase = DevicePhase::RolledBack;
                d.progress_us = now;
            }
            return;
        }
        if d.phase.settled()
            || d.phase == DevicePhase::RolledBack
            || d.phase == DevicePhase::Shadowing
        {
            return;
        }
        if applied {
            if shadowing && !d.shadow_passed {
                if d.phase != DevicePhase::Shadowing {
                    d.phase = DevicePhase::Shadowing;
                    d.shadow_us = Some(now);
                    d.progress_us = now;
                }
            } else if d.phase != DevicePhase::Applied {
                d.phase = DevicePhase::Applied;
                d.applied_us = Some(now);
                d.progress_us = now;
            }
            return;
        }
        let Some(c) = report
            .last_change
            .as_ref()
            .filter(|c| c.generation == Some(g))
        else {
            return;
        };
        let phase = match c.phase {
            Phase::Downloading => DevicePhase::Downloading,
            Phase::Verifying => DevicePhase::Verifying,
            Phase::Applying => DevicePhase::Applying,
            // Applied without the report's generation: the next report has it.
            Phase::Applied => return,
            Phase::Failed => {
                d.phase = DevicePhase::Failed;
                d.reason = Some(c.reason.clone().unwrap_or_else(|| "failed".into()));
                return;
            }
        };
        if phase != d.phase || c.bytes_done != d.bytes_done {
            d.phase = phase;
            d.bytes_done = c.bytes_done;
            d.progress_us = now;
        }
    }

    /// Sends every device the rollout changed back to its previous target.
    fn roll_back(&mut self, now: i64, by: &str, reason: String, actions: &mut Vec<Action>) {
        let stage = self.stage.clone();
        for d in self.devices.iter_mut().filter(|d| d.requested) {
            if matches!(d.phase, DevicePhase::RollingBack | DevicePhase::RolledBack) {
                continue;
            }
            d.phase = DevicePhase::RollingBack;
            d.generation = None;
            d.progress_us = now;
            actions.push(Action::Set {
                device: d.device.clone(),
                stage: stage.clone(),
                target: d.previous.clone(),
            });
        }
        self.state = State::RolledBack;
        self.reason = Some(reason.clone());
        let n = actions.len();
        self.record(
            now,
            by,
            format!("rolling back {n} devices to their previous target: {reason}"),
        );
    }

    /// Timeouts, soaks, the failure budget and the waves, at `now`.
    fn advance(&mut self, now: i64, actions: &mut Vec<Action>) {
        if self.state.is_final() {
            return;
        }
        let policy = self.policy;
        let mut log = Vec::new();
        for d in self.devices.iter_mut().filter(|d| d.requested) {
            let soaked = d.applied_us.map_or(0, |t| now - t);
            match d.phase {
                DevicePhase::Applied if soaked >= policy.soak_us && d.gates_held => {
                    d.phase = DevicePhase::Healthy;
                    log.push(format!("{} healthy", d.device));
                }
                // Soaked, but its gates never had what they need (no
                // labelled windows, no heartbeat): it cannot be called
                // healthy, and the rollout does not wait for ever.
                DevicePhase::Applied if soaked >= policy.soak_us + policy.device_timeout_us => {
                    d.phase = DevicePhase::TimedOut;
                    d.reason = Some(format!(
                        "its gates could not judge it within {} s of the soak's end",
                        policy.device_timeout_us / 1_000_000
                    ));
                    log.push(format!("{} timed out", d.device));
                }
                // A shadow run that its gate could not judge in time (too
                // few windows, no heartbeat): it ends, and counts as failed.
                DevicePhase::Shadowing
                    if now - d.shadow_us.unwrap_or(now)
                        >= policy.soak_us + policy.device_timeout_us =>
                {
                    d.phase = DevicePhase::TimedOut;
                    d.reason = Some(format!(
                        "its shadow run could not be judged within {} s",
                        (policy.soak_us + policy.device_timeout_us) / 1_000_000
                    ));
                    actions.push(Action::Shadow {
                        device: d.device.clone(),
                        stage: self.stage.clone(),
                        candidate: None,
                    });
                    log.push(format!("{} timed out", d.device));
                }
                DevicePhase::Pending
                | DevicePhase::Downloading
                | DevicePhase::Verifying
                | DevicePhase::Applying
                    if now - d.progress_us >= policy.device_timeout_us =>
                {
                    d.reason = Some(format!(
                        "no progress for {} s (last: {:?})",
                        policy.device_timeout_us / 1_000_000,
                        d.phase
                    ));
                    d.phase = DevicePhase::TimedOut;
                    log.push(format!("{} timed out", d.device));
                }
                _ => {}
            }
        }
        for what in log {
            self.record(now, "hub", what);
        }
        let failed = self.devices.iter().filter(|d| d.phase.failed()).count();
        let allowed = (policy.max_failure_ratio * self.devices.len() as f64).floor() as usize;
        if failed > allowed {
            let why = format!(
                "failure budget spent: {failed} of {} devices failed or timed out (at most {allowed} allowed)",
                self.devices.len()
            );
            self.roll_back(now, "hub", why, actions);
            return;
        }
        if self.state == State::Paused {
            return;
        }
        loop {
            let Some(&end) = self.waves.get(self.wave) else {
                self.state = State::Completed;
                self.record(now, "hub", "completed".into());
                return;
            };
            let stage = self.stage.clone();
            let target = self.target.clone();
            let shadow = self.policy.shadow.and(self.candidate());
            for d in self.devices[..end].iter_mut().filter(|d| !d.requested) {
                d.requested = true;
                d.progress_us = now;
                actions.push(match &shadow {
                    Some(candidate) => Action::Shadow {
                        device: d.device.clone(),
                        stage: stage.clone(),
                        candidate: Some(candidate.clone()),
                    },
                    None => Action::Set {
                        device: d.device.clone(),
                        stage: stage.clone(),
                        target: Some(target.clone()),
                    },
                });
            }
            if !self.devices[..end].iter().all(|d| d.phase.settled()) {
                return;
            }
            self.wave += 1;
            if self.wave < self.waves.len() {
                let what = format!("wave {} of {} started", self.wave + 1, self.waves.len());
                self.record(now, "hub", what);
            }
        }
    }

    /// Devices per phase in wave `w` (0-based).
    pub fn wave_devices(&self, w: usize) -> &[DeviceRun] {
        let start = if w == 0 { 0 } else { self.waves[w - 1] };
        let end = self.waves.get(w).copied().unwrap_or(start);
        &self.devices[start..end]
    }
}

#[cfg(test)]
#[path = "machine_tests.rs"]
mod tests;
