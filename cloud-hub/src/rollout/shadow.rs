//! The shadow gate, as plain data: before a candidate model takes over a
//! device's stage, the device runs it beside the model it has (the
//! champion) on the same live windows, acting only on the champion, and
//! reports how the two compare in its heartbeats
//! ([`ShadowStats`](conveyor_shared::control::ShadowStats)). The gate
//! judges that report: enough windows, agreement with the champion at
//! least `min_agreement`, at most `max_errors` windows the candidate
//! failed on. It needs no labels and no hub model, and the device's
//! answers never depend on the candidate while it is judged.
//!
//! A shadow-only rollout (`only`) stops there: it evaluates a candidate on
//! live data with no risk, and no device switches.

use conveyor_shared::control::ShadowStats;
use conveyor_shared::ota::ArtifactRef;
use serde::{Deserialize, Serialize};

use super::gates::{Broken, Verdict};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ShadowGate {
    /// Windows the candidate must have run beside the champion before it
    /// is judged.
    pub windows: u64,
    /// Share of those windows on which it must give the champion's label.
    pub min_agreement: f64,
    /// Windows it may fail to run.
    #[serde(default)]
    pub max_errors: u64,
    /// Shadow only: judge the candidate, never switch to it.
    #[serde(default)]
    pub only: bool,
}

impl Default for ShadowGate {
    fn default() -> Self {
        ShadowGate {
            windows: 20,
            min_agreement: 0.9,
            max_errors: 0,
            only: false,
        }
    }
}

/// The figures of a shadow run, for the rollout's record.
pub fn figures(s: &ShadowStats) -> String {
    format!(
        "agreement {:.3} ({} of {} windows), {} errors; mean confidence {:.3} (champion {:.3}); p50/p99 {}/{} µs (champion {}/{} µs)",
        s.agreement(),
        s.agreed,
        s.windows,
        s.errors,
        s.candidate_confidence,
        s.champion_confidence,
        s.candidate_p50_us,
        s.candidate_p99_us,
        s.champion_p50_us,
        s.champion_p99_us,
    )
}

/// The verdict on a device's shadow run of `candidate` (`stats`: the
/// stage's shadow in its last heartbeat), and the figures it rests on.
pub fn judge(
    g: &ShadowGate,
    candidate: &ArtifactRef,
    stats: Option<&ShadowStats>,
) -> (Verdict, String) {
    let Some(s) =
        stats.filter(|s| s.model_id == candidate.name && s.model_version == candidate.version)
    else {
        // Not started yet (or still the last candidate's tally).
        return (Verdict::Waiting, String::new());
    };
    let figures = figures(s);
    if s.errors > g.max_errors {
        let why = format!("{figures} (at most {} errors)", g.max_errors);
        return (
            Verdict::Broken(Broken {
                gate: "shadow_errors",
                figures: why.clone(),
            }),
            why,
        );
    }
    if s.windows < g.windows {
        return (Verdict::Waiting, figures);
    }
    if s.agreement() < g.min_agreement {
        let why = format!("{figures} (at least {} needed)", g.min_agreement);
        return (
            Verdict::Broken(Broken {
                gate: "shadow_agreement",
                figures: why.clone(),
            }),
            why,
        );
    }
    (Verdict::Held, figures)
}

#[cfg(test)]
mod tests {
    use super::*;
    use conveyor_shared::ota::ArtifactId;

    fn candidate() -> ArtifactRef {
        ArtifactRef {
            name: "m".into(),
            version: "2".into(),
            id: ArtifactId::of_payload("2"),
        }
    }

    fn stats(windows: u64, agreed: u64, errors: u64) -> ShadowStats {
        ShadowStats {
            model_id: "m".into(),
            model_version: "2".into(),
            windows,
            agreed,
            errors,
            ..ShadowStats::default()
        }
    }

    #[test]
    fn waits_for_its_windows_then_judges_agreement() {
        let g = ShadowGate::default();
        let c = candidate();
        assert_eq!(judge(&g, &c, None).0, Verdict::Waiting);
        assert_eq!(judge(&g, &c, Some(&stats(19, 0, 0))).0, Verdict::Waiting);
        assert_eq!(judge(&g, &c, Some(&stats(20, 18, 0))).0, Verdict::Held);
        let (v, why) = judge(&g, &c, Some(&stats(20, 17, 0)));
        assert!(matches!(v, Verdict::Broken(b) if b.gate == "shadow_agreement"));
        assert!(why.contains("agreement 0.850 (17 of 20 windows)"), "{why}");
    }

    #[test]
    fn errors_break_it_at_once() {
        let g = ShadowGate {
            max_errors: 1,
            ..ShadowGate::default()
        };
        let (v, _) = judge(&g, &candidate(), Some(&stats(3, 3, 2)));
        assert!(matches!(v, Verdict::Broken(b) if b.gate == "shadow_errors"));
        assert_eq!(
            judge(&g, &candidate(), Some(&stats(3, 3, 1))).0,
            Verdict::Waiting
        );
    }

    #[test]
    fn another_candidates_tally_is_not_evidence() {
        let old = ShadowStats {
            model_version: "1".into(),
            ..stats(100, 100, 0)
        };
        assert_eq!(
            judge(&ShadowGate::default(), &candidate(), Some(&old)).0,
            Verdict::Waiting
        );
    }
}
