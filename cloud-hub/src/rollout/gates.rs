//! The gates a soaking device must hold, as plain data: what the hub
//! knows about the device at one moment ([`Sample`]) in, a verdict out.
//! The driver samples every soaking device each second and tells the
//! machine when a gate fails ([`super::machine::Event::GateFailed`]).
//!
//! Each gate is judged from what the hub holds anyway, without a
//! baseline to keep: the candidate is a new version, so its prediction
//! tally is all from after the switch; the agent's uptime says whether
//! it restarted since; the hub's last-seen time says how long it has been
//! silent.
//!
//! - **accuracy** (labelled windows, e.g. the replayed test splits): the
//!   candidate's accuracy may be at most `accuracy_margin` below the
//!   model it replaced on the same device, once it has `min_windows`
//!   labelled windows. A device whose data carries no labels never
//!   judges it (the gate holds).
//! - **teacher**: on windows the agent sampled for the hub's larger
//!   model (`teacher_every`), the candidate's agreement with the teacher
//!   may be at most `teacher_margin` below the replaced model's agreement
//!   on the same device, once it has `min_windows` samples. It needs no
//!   labels: it judges devices in the field.
//! - **heartbeat**: silent for longer than `max_silence_us`.
//! - **errors**: more than `max_errors` failed windows, failed or
//!   dead-lettered records in the stage since the soak began (against a
//!   [`Baseline`] of its counters taken then).
//! - **memory**: resident memory grown by more than `max_rss_growth_bytes`
//!   since the soak began.
//! - **restarts**: the agent process started again after the update was
//!   applied (a crash loop shows as this).

use serde::{Deserialize, Serialize};

/// Thresholds; `None` turns a gate off.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Gates {
    #[serde(default)]
    pub accuracy_margin: Option<f64>,
    #[serde(default)]
    pub teacher_margin: Option<f64>,
    #[serde(default = "default_min_windows")]
    pub min_windows: u64,
    #[serde(default)]
    pub max_silence_us: Option<i64>,
    #[serde(default)]
    pub max_errors: Option<u64>,
    #[serde(default)]
    pub max_rss_growth_bytes: Option<u64>,
    #[serde(default = "yes")]
    pub no_restarts: bool,
}

fn default_min_windows() -> u64 {
    10
}
fn yes() -> bool {
    true
}

impl Default for Gates {
    fn default() -> Self {
        Gates {
            accuracy_margin: None,
            teacher_margin: None,
            min_windows: default_min_windows(),
            max_silence_us: None,
            max_errors: None,
            max_rss_growth_bytes: None,
            no_restarts: true,
        }
    }
}

/// A soaking device's counters when its soak began.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Baseline {
    /// Failed windows, failed and dead-lettered records of the stage.
    pub errors: u64,
    pub rss_bytes: u64,
}

/// Labelled windows a model was scored on, and how many it got right.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Scored {
    pub scored: u64,
    pub correct: u64,
}

impl Scored {
    fn accuracy(self) -> Option<f64> {
        (self.scored > 0).then(|| self.correct as f64 / self.scored as f64)
    }
}

/// What the hub knows about a soaking device now.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Sample {
    /// `name@version` of the candidate and of the model it replaced.
    pub candidate: String,
    pub champion: Option<String>,
    /// Their tallies on this device.
    pub candidate_scored: Scored,
    pub champion_scored: Scored,
    /// Their windows sampled for the teacher, and how many agreed.
    pub candidate_teacher: Scored,
    pub champion_teacher: Scored,
    /// µs since the hub last heard from the device.
    pub silent_us: i64,
    /// The stage's counters now (from the last heartbeat), and when the
    /// soak began.
    pub now: Baseline,
    pub baseline: Option<Baseline>,
    /// When the agent process started (its heartbeat's time less its
    /// uptime), and when the update was applied, µs since the epoch.
    pub agent_started_us: Option<i64>,
    pub applied_us: i64,
}

/// A gate that did not hold: its name and the figures that broke it.
#[derive(Debug, Clone, PartialEq)]
pub struct Broken {
    pub gate: &'static str,
    pub figures: String,
}

/// What the gates say of a soaking device now.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Every gate had what it needs, and held.
    Held,
    /// A gate still needs evidence (labelled windows from the candidate).
    Waiting,
    Broken(Broken),
}

/// The verdict on `s`: the first gate it breaks, or whether every gate
/// could judge it.
pub fn judge(g: &Gates, s: &Sample) -> Verdict {
    match broken(g, s) {
        Some(b) => Verdict::Broken(b),
        None if waiting(g, s) => Verdict::Waiting,
        None => Verdict::Held,
    }
}

/// The accuracy gate is on, the data carries labels (the replaced model
/// was scored on this device), and the candidate has too few yet.
fn waiting(g: &Gates, s: &Sample) -> bool {
    let needs = |on: bool, champion: Scored, candidate: Scored| {
        on && s.champion.is_some() && champion.scored > 0 && candidate.scored < g.min_windows
    };
    needs(
        g.accuracy_margin.is_some(),
        s.champion_scored,
        s.candidate_scored,
    ) || needs(
        g.teacher_margin.is_some(),
        s.champion_teacher,
        s.candidate_teacher,
    )
}

fn broken(g: &Gates, s: &Sample) -> Option<Broken> {
    if let Some(limit) = g.max_silence_us {
        if s.silent_us > limit {
            return Some(Broken {
                gate: "heartbeat",
                figures: format!(
                    "silent for {:.1} s (at most {:.1} s)",
                    s.silent_us as f64 / 1e6,
                    limit as f64 / 1e6
                ),
            });
        }
    }
    if let (Some(limit), Some(b)) = (g.max_errors, s.baseline) {
        let errors = s.now.errors.saturating_sub(b.errors);
        if errors > limit {
            return Some(Broken {
                gate: "errors",
                figures: format!(
                    "{errors} failed windows or records in the stage since the soak began (at most {limit})"
                ),
            });
        }
    }
    if let (Some(limit), Some(b)) = (g.max_rss_growth_bytes, s.baseline) {
        let grown = s.now.rss_bytes.saturating_sub(b.rss_bytes);
        if grown > limit {
            return Some(Broken {
                gate: "memory",
                figures: format!(
                    "resident memory grew {:.1} MB since the soak began ({:.1} -> {:.1} MB; at most {:.1} MB)",
                    grown as f64 / 1e6,
                    b.rss_bytes as f64 / 1e6,
                    s.now.rss_bytes as f64 / 1e6,
                    limit as f64 / 1e6
                ),
            });
        }
    }
    if g.no_restarts {
        // A second of slack: the two times come from different clocks.
        if let Some(started) = s.agent_started_us.filter(|t| *t > s.applied_us + 1_000_000) {
            return Some(Broken {
                gate: "restarts",
                figures: format!(
                    "the agent restarted {:.1} s after the update was applied",
                    (started - s.applied_us) as f64 / 1e6
                ),
            });
        }
    }
    if let (Some(margin), Some(champion)) = (g.accuracy_margin, &s.champion) {
        let (c, r) = (s.candidate_scored, s.champion_scored);
        if let (true, Some(ca), Some(ra)) = (c.scored >= g.min_windows, c.accuracy(), r.accuracy())
        {
            if ca < ra - margin {
                return Some(Broken {
                    gate: "accuracy",
                    figures: format!(
                        "{} right on {:.3} of {} labelled windows, {} on {:.3} of {} (at most {margin} below)",
                        s.candidate, ca, c.scored, champion, ra, r.scored
                    ),
                });
            }
        }
    }
    if let (Some(margin), Some(champion)) = (g.teacher_margin, &s.champion) {
        let (c, r) = (s.candidate_teacher, s.champion_teacher);
        if let (true, Some(ca), Some(ra)) = (c.scored >= g.min_windows, c.accuracy(), r.accuracy())
        {
            if ca < ra - margin {
                return Some(Broken {
                    gate: "teacher",
                    figures: format!(
                        "{} agrees with the hub's teacher on {:.3} of {} sampled windows, {} on {:.3} of {} (at most {margin} below)",
                        s.candidate, ca, c.scored, champion, ra, r.scored
                    ),
                });
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Sample {
        Sample {
            candidate: "m@2".into(),
            champion: Some("m@1".into()),
            candidate_scored: Scored {
                scored: 10,
                correct: 9,
            },
            champion_scored: Scored {
                scored: 100,
                correct: 95,
            },
            candidate_teacher: Scored {
                scored: 10,
                correct: 10,
            },
            champion_teacher: Scored {
                scored: 50,
                correct: 49,
            },
            silent_us: 500_000,
            now: Baseline {
                errors: 12,
                rss_bytes: 24_000_000,
            },
            baseline: Some(Baseline {
                errors: 10,
                rss_bytes: 22_000_000,
            }),
            agent_started_us: Some(0),
            applied_us: 10_000_000,
        }
    }

    fn gates() -> Gates {
        Gates {
            accuracy_margin: Some(0.1),
            teacher_margin: Some(0.1),
            min_windows: 10,
            max_silence_us: Some(5_000_000),
            max_errors: Some(2),
            max_rss_growth_bytes: Some(5_000_000),
            no_restarts: true,
        }
    }

    #[test]
    fn a_healthy_device_holds_every_gate() {
        assert_eq!(judge(&gates(), &sample()), Verdict::Held);
        // Off by default, but restarts.
        assert_eq!(judge(&Gates::default(), &sample()), Verdict::Held);
    }

    #[test]
    fn a_candidate_worse_than_the_model_it_replaced_breaks_accuracy() {
        let mut s = sample();
        s.candidate_scored = Scored {
            scored: 10,
            correct: 2,
        };
        let Verdict::Broken(b) = judge(&gates(), &s) else {
            panic!("accuracy holds")
        };
        assert_eq!(b.gate, "accuracy");
        assert_eq!(
            b.figures,
            "m@2 right on 0.200 of 10 labelled windows, m@1 on 0.950 of 100 (at most 0.1 below)"
        );
        // Within the margin it holds; with too few windows it waits.
        s.candidate_scored = Scored {
            scored: 10,
            correct: 9,
        };
        assert_eq!(judge(&gates(), &s), Verdict::Held);
        s.candidate_scored = Scored {
            scored: 9,
            correct: 0,
        };
        assert_eq!(judge(&gates(), &s), Verdict::Waiting);
        // No labels at all: nothing to wait for.
        s.candidate_scored = Scored::default();
        s.champion_scored = Scored::default();
        assert_eq!(judge(&gates(), &s), Verdict::Held);
    }

    #[test]
    fn a_candidate_that_disagrees_with_the_teacher_breaks_its_gate_without_labels() {
        let mut s = sample();
        // No labels in the field.
        s.candidate_scored = Scored::default();
        s.champion_scored = Scored::default();
        s.candidate_teacher = Scored {
            scored: 12,
            correct: 3,
        };
        let Verdict::Broken(b) = judge(&gates(), &s) else {
            panic!("the teacher gate holds")
        };
        assert_eq!(b.gate, "teacher");
        assert_eq!(
            b.figures,
            "m@2 agrees with the hub's teacher on 0.250 of 12 sampled windows, m@1 on 0.980 of 50 (at most 0.1 below)"
        );
        s.candidate_teacher.scored = 5;
        assert_eq!(judge(&gates(), &s), Verdict::Waiting, "too few samples yet");
    }

    #[test]
    fn errors_and_memory_growth_since_the_soak_began_break_their_gates() {
        let mut s = sample();
        s.now.errors = 13;
        let Verdict::Broken(b) = judge(&gates(), &s) else {
            panic!("errors hold")
        };
        assert_eq!(
            b.figures,
            "3 failed windows or records in the stage since the soak began (at most 2)"
        );
        let mut s = sample();
        s.now.rss_bytes = 28_000_000;
        let Verdict::Broken(b) = judge(&gates(), &s) else {
            panic!("memory holds")
        };
        assert_eq!(b.gate, "memory");
        assert!(b.figures.contains("grew 6.0 MB"), "{}", b.figures);
        // No baseline yet: nothing to compare with.
        s.baseline = None;
        assert_eq!(judge(&gates(), &s), Verdict::Held);
    }

    #[test]
    fn silence_and_a_restart_after_the_update_break_their_gates() {
        let mut s = sample();
        s.silent_us = 6_000_000;
        assert!(matches!(judge(&gates(), &s), Verdict::Broken(b) if b.gate == "heartbeat"));
        let mut s = sample();
        s.agent_started_us = Some(s.applied_us + 3_000_000);
        let Verdict::Broken(b) = judge(&gates(), &s) else {
            panic!("no restart seen")
        };
        assert_eq!(b.gate, "restarts");
        assert!(b.figures.contains("3.0 s after"), "{}", b.figures);
        // Within the clocks' slack: the same start.
        s.agent_started_us = Some(s.applied_us + 500_000);
        assert_eq!(judge(&gates(), &s), Verdict::Held);
    }
}
