//! A shadow run's tally, as plain data: a candidate model is given the
//! same windows as the stage's model (the champion), and how the two
//! compare is counted. Nothing the candidate answers leaves the stage;
//! the tally goes out in heartbeats (`StageStats::shadow`), where a
//! rollout's shadow gate reads it before it lets the candidate take over.
//!
//! Agreement is by label (the models' label lists may be ordered
//! differently). Latency percentiles are over the last [`RECENT`]
//! windows: exact, in bounded memory.

use conveyor_shared::control::ShadowStats;

/// Windows the latency percentiles are taken over.
pub const RECENT: usize = 1024;

/// One model's answer on a window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Answer<'a> {
    pub label: &'a str,
    pub confidence: f32,
    pub micros: u64,
}

#[derive(Debug, Clone, Default)]
struct Recent {
    values: Vec<u32>,
    next: usize,
}

impl Recent {
    fn push(&mut self, v: u64) {
        let v = u32::try_from(v).unwrap_or(u32::MAX);
        if self.values.len() < RECENT {
            self.values.push(v);
        } else {
            self.values[self.next] = v;
        }
        self.next = (self.next + 1) % RECENT;
    }

    /// The p50 and p99 (nearest rank); zeros with nothing recorded.
    fn p50_p99(&self) -> (u64, u64) {
        if self.values.is_empty() {
            return (0, 0);
        }
        let mut sorted = self.values.clone();
        sorted.sort_unstable();
        let rank = |q: f64| {
            let i = (q * sorted.len() as f64).ceil() as usize;
            u64::from(sorted[i.clamp(1, sorted.len()) - 1])
        };
        (rank(0.50), rank(0.99))
    }
}

/// How a candidate compares with the champion since it started.
#[derive(Debug, Clone)]
pub struct ShadowTally {
    model_id: String,
    model_version: String,
    windows: u64,
    agreed: u64,
    errors: u64,
    champion_confidence: f64,
    candidate_confidence: f64,
    champion_us: Recent,
    candidate_us: Recent,
}

impl ShadowTally {
    pub fn new(model_id: &str, model_version: &str) -> Self {
        ShadowTally {
            model_id: model_id.to_string(),
            model_version: model_version.to_string(),
            windows: 0,
            agreed: 0,
            errors: 0,
            champion_confidence: 0.0,
            candidate_confidence: 0.0,
            champion_us: Recent::default(),
            candidate_us: Recent::default(),
        }
    }

    /// One window: the champion's answer and the candidate's (`None`: it
    /// failed to run; the champion's answer stood).
    pub fn record(&mut self, champion: Answer<'_>, candidate: Option<Answer<'_>>) {
        self.windows += 1;
        self.champion_confidence += f64::from(champion.confidence);
        self.champion_us.push(champion.micros);
        match candidate {
            Some(c) => {
                if c.label == champion.label {
                    self.agreed += 1;
                }
                self.candidate_confidence += f64::from(c.confidence);
                self.candidate_us.push(c.micros);
            }
            None => self.errors += 1,
        }
    }

    pub fn stats(&self) -> ShadowStats {
        let mean = |sum: f64, n: u64| if n == 0 { 0.0 } else { sum / n as f64 };
        let (champion_p50_us, champion_p99_us) = self.champion_us.p50_p99();
        let (candidate_p50_us, candidate_p99_us) = self.candidate_us.p50_p99();
        ShadowStats {
            model_id: self.model_id.clone(),
            model_version: self.model_version.clone(),
            windows: self.windows,
            agreed: self.agreed,
            errors: self.errors,
            champion_confidence: mean(self.champion_confidence, self.windows),
            candidate_confidence: mean(self.candidate_confidence, self.windows - self.errors),
            champion_p50_us,
            champion_p99_us,
            candidate_p50_us,
            candidate_p99_us,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(label: &str, confidence: f32, micros: u64) -> Answer<'_> {
        Answer {
            label,
            confidence,
            micros,
        }
    }

    #[test]
    fn counts_agreement_confidence_and_errors() {
        let mut t = ShadowTally::new("m", "2");
        t.record(answer("walk", 0.9, 100), Some(answer("walk", 0.5, 200)));
        t.record(answer("run", 0.7, 100), Some(answer("walk", 0.7, 300)));
        t.record(answer("run", 0.8, 100), None);
        let s = t.stats();
        assert_eq!((s.windows, s.agreed, s.errors), (3, 1, 1));
        assert!((s.agreement() - 1.0 / 3.0).abs() < 1e-9);
        assert!((s.champion_confidence - 0.8).abs() < 1e-6);
        assert!((s.candidate_confidence - 0.6).abs() < 1e-6);
        assert_eq!((s.champion_p50_us, s.candidate_p50_us), (100, 200));
        assert_eq!(s.candidate_p99_us, 300);
        assert_eq!((s.model_id.as_str(), s.model_version.as_str()), ("m", "2"));
    }

    #[test]
    fn nothing_recorded_is_all_zeros() {
        let s = ShadowTally::new("m", "1").stats();
        assert_eq!(
            (s.windows, s.champion_p99_us, s.candidate_confidence),
            (0, 0, 0.0)
        );
        assert_eq!(s.agreement(), 0.0);
    }

    #[test]
    fn percentiles_are_nearest_rank_over_the_recent_windows() {
        let mut t = ShadowTally::new("m", "1");
        // An old slow spell, then RECENT fast windows: only these count.
        for _ in 0..500 {
            t.record(answer("a", 1.0, 9_000), Some(answer("a", 1.0, 9_000)));
        }
        for i in 1..=RECENT as u64 {
            t.record(answer("a", 1.0, i), Some(answer("a", 1.0, 2 * i)));
        }
        let s = t.stats();
        assert_eq!(s.champion_p50_us, RECENT as u64 / 2);
        assert_eq!(s.champion_p99_us, (0.99 * RECENT as f64).ceil() as u64);
        assert_eq!(s.candidate_p50_us, RECENT as u64);
        assert_eq!(s.windows, 500 + RECENT as u64);
    }
}
