//! A rollout's gate figures over time: what the gates judge, summed over
//! the devices being judged, sampled as the rollout runs, so an operator
//! sees a candidate's agreement and errors trend before a gate breaks.
//!
//! Plain data with the time as a parameter: the driver adds each device's
//! figures to a [`Tally`] on its tick, and [`Series::record`] keeps one
//! point per [`Series::EVERY_US`]. When a series is full, every other
//! point is dropped, so a long rollout is shown whole at a coarser step
//! and a series never grows past [`Series::KEEP`] points. Kept beside the
//! rollout in `<store>/rollouts/figures/<id>.json`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use conveyor_shared::control::ShadowStats;
use serde::{Deserialize, Serialize};

use super::gates::{Sample, Scored};
use crate::ota::files::write_atomic;

/// The gates' counts over a rollout's devices at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    shadowing: u32,
    soaking: u32,
    shadow_windows: u64,
    shadow_agreed: u64,
    shadow_errors: u64,
    candidate_teacher: Scored,
    champion_teacher: Scored,
    candidate_labelled: Scored,
    champion_labelled: Scored,
    errors: u64,
}

impl Tally {
    /// A shadowing device's shadow run (none yet: it counts, with nothing).
    pub fn shadowing(&mut self, stats: Option<&ShadowStats>) {
        self.shadowing += 1;
        if let Some(s) = stats {
            self.shadow_windows += s.windows;
            self.shadow_agreed += s.agreed;
            self.shadow_errors += s.errors;
        }
    }

    /// A soaking device's sample, as the gates judged it.
    pub fn soaking(&mut self, s: &Sample) {
        let add = |a: &mut Scored, b: Scored| {
            a.scored += b.scored;
            a.correct += b.correct;
        };
        self.soaking += 1;
        add(&mut self.candidate_teacher, s.candidate_teacher);
        add(&mut self.champion_teacher, s.champion_teacher);
        add(&mut self.candidate_labelled, s.candidate_scored);
        add(&mut self.champion_labelled, s.champion_scored);
        if let Some(b) = s.baseline {
            self.errors += s.now.errors.saturating_sub(b.errors);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.shadowing == 0 && self.soaking == 0
    }

    pub fn point(&self, at_us: i64) -> Point {
        let ratio = |s: Scored| (s.scored > 0).then(|| s.correct as f64 / s.scored as f64);
        Point {
            at_us,
            shadowing: self.shadowing,
            soaking: self.soaking,
            shadow_windows: self.shadow_windows,
            shadow_agreement: (self.shadow_windows > 0)
                .then(|| self.shadow_agreed as f64 / self.shadow_windows as f64),
            shadow_errors: self.shadow_errors,
            teacher_samples: self.candidate_teacher.scored,
            teacher_agreement: ratio(self.candidate_teacher),
            champion_teacher_agreement: ratio(self.champion_teacher),
            labelled: self.candidate_labelled.scored,
            accuracy: ratio(self.candidate_labelled),
            champion_accuracy: ratio(self.champion_labelled),
            errors: self.errors,
        }
    }
}

/// One moment of a rollout's figures. The ratios are over the devices
/// judged then; `None` where there was nothing to count.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Point {
    pub at_us: i64,
    pub shadowing: u32,
    pub soaking: u32,
    pub shadow_windows: u64,
    pub shadow_agreement: Option<f64>,
    pub shadow_errors: u64,
    /// The candidate's windows sampled for the hub's teacher, and its
    /// agreement with it; the replaced model's on the same devices.
    pub teacher_samples: u64,
    pub teacher_agreement: Option<f64>,
    pub champion_teacher_agreement: Option<f64>,
    /// The candidate's labelled windows and its accuracy; the replaced
    /// model's accuracy on the same devices.
    pub labelled: u64,
    pub accuracy: Option<f64>,
    pub champion_accuracy: Option<f64>,
    /// Failed windows and records in the stage since each soak began.
    pub errors: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Series {
    pub points: Vec<Point>,
    /// The step between points now (doubles each time the series fills).
    #[serde(default = "every")]
    pub every_us: i64,
}

fn every() -> i64 {
    Series::EVERY_US
}

impl Series {
    pub const EVERY_US: i64 = 5_000_000;
    pub const KEEP: usize = 360;

    /// Keeps `point` if the last one is at least a step older; true if
    /// it was kept.
    pub fn record(&mut self, point: Point) -> bool {
        if self.every_us <= 0 {
            self.every_us = Self::EVERY_US;
        }
        if let Some(last) = self.points.last() {
            if point.at_us - last.at_us < self.every_us {
                return false;
            }
        }
        if self.points.len() >= Self::KEEP {
            let mut i = 0;
            self.points.retain(|_| {
                i += 1;
                i % 2 == 1
            });
            self.every_us *= 2;
        }
        self.points.push(point);
        true
    }
}

/// Every rollout's series, in memory and on disk.
#[derive(Debug)]
pub struct FigureStore {
    dir: PathBuf,
    series: BTreeMap<u64, Series>,
}

impl FigureStore {
    /// Reads the stored series; one that does not read is skipped with a
    /// warning (the rollout's figures start again).
    pub fn open(store_dir: &Path) -> std::io::Result<FigureStore> {
        let dir = store_dir.join("rollouts").join("figures");
        std::fs::create_dir_all(&dir)?;
        let mut series = BTreeMap::new();
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            let Some(id) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".json"))
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            match std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<Series>(&b).map_err(|e| e.to_string()))
            {
                Ok(s) => {
                    series.insert(id, s);
                }
                Err(e) => {
                    tracing::warn!(file = %path.display(), "skipping a rollout's figures that do not read: {e}")
                }
            }
        }
        Ok(FigureStore { dir, series })
    }

    /// Records `tally` for rollout `id` at `now` (nothing when no device
    /// was judged), writing the series down when a point was kept.
    pub fn record(&mut self, id: u64, tally: &Tally, now: i64) {
        if tally.is_empty() {
            return;
        }
        let series = self.series.entry(id).or_default();
        if series.record(tally.point(now)) {
            let bytes = serde_json::to_vec(series).expect("a series serialises");
            if let Err(e) = write_atomic(&self.dir.join(format!("{id}.json")), &bytes) {
                tracing::warn!(rollout = id, "cannot store the rollout's figures: {e}");
            }
        }
    }

    pub fn get(&self, id: u64) -> Option<&Series> {
        self.series.get(&id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollout::gates::Baseline;

    fn tally(agreed: u64) -> Tally {
        let mut t = Tally::default();
        t.shadowing(Some(&ShadowStats {
            windows: 100,
            agreed,
            errors: 1,
            ..Default::default()
        }));
        t.shadowing(None);
        t.soaking(&Sample {
            candidate_teacher: Scored {
                scored: 10,
                correct: 9,
            },
            champion_teacher: Scored {
                scored: 20,
                correct: 20,
            },
            now: Baseline {
                errors: 7,
                rss_bytes: 0,
            },
            baseline: Some(Baseline {
                errors: 4,
                rss_bytes: 0,
            }),
            ..Default::default()
        });
        t
    }

    #[test]
    fn a_tally_sums_its_devices_into_ratios() {
        let p = tally(80).point(7);
        assert_eq!((p.shadowing, p.soaking, p.shadow_windows), (2, 1, 100));
        assert_eq!(p.shadow_agreement, Some(0.8));
        assert_eq!(p.teacher_agreement, Some(0.9));
        assert_eq!(p.champion_teacher_agreement, Some(1.0));
        assert_eq!((p.accuracy, p.labelled), (None, 0), "no labels: no figure");
        assert_eq!(p.errors, 3);
        assert!(Tally::default().is_empty());
    }

    #[test]
    fn a_series_keeps_one_point_per_step_and_thins_itself_when_full() {
        let mut s = Series::default();
        let at = |t: i64| tally(50).point(t);
        assert!(s.record(at(0)));
        assert!(!s.record(at(1_000_000)), "within a step");
        for i in 1..Series::KEEP as i64 {
            assert!(s.record(at(i * Series::EVERY_US)));
        }
        assert_eq!(s.points.len(), Series::KEEP);
        // Full: half the points go, the step doubles, the span is whole.
        assert!(s.record(at(Series::KEEP as i64 * Series::EVERY_US)));
        assert_eq!(s.points.len(), Series::KEEP / 2 + 1);
        assert_eq!(s.every_us, 2 * Series::EVERY_US);
        assert_eq!(s.points[0].at_us, 0);
        assert!(!s.record(at((Series::KEEP as i64 + 1) * Series::EVERY_US)));
    }

    #[test]
    fn series_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = FigureStore::open(dir.path()).unwrap();
        store.record(3, &Tally::default(), 0);
        assert!(store.get(3).is_none(), "nothing judged: nothing kept");
        store.record(3, &tally(90), 0);
        store.record(3, &tally(95), Series::EVERY_US);
        std::fs::write(dir.path().join("rollouts/figures/4.json"), b"{no").unwrap();
        let again = FigureStore::open(dir.path()).unwrap();
        assert_eq!(again.get(3), store.get(3));
        assert_eq!(again.get(3).unwrap().points.len(), 2);
        assert!(again.get(4).is_none());
    }
}
