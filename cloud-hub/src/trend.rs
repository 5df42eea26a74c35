//! A device's heartbeat counters over time, for the dashboard's device
//! page: a short ring of points, one per [`Trend::EVERY_US`] at most,
//! kept in memory only (a restarted hub starts the chart afresh; the
//! device's totals are in its persisted entry).
//!
//! Plain data with the time as a parameter. Each point is 64 bytes, so
//! 1,000 devices cost about 7.7 MB at [`Trend::KEEP`] points each.

use std::collections::VecDeque;

use conveyor_shared::control::Heartbeat;
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Point {
    /// The heartbeat's own time, µs.
    pub ts_us: i64,
    pub log_records: u64,
    pub log_bytes: u64,
    /// Readings the log dropped (full, age, unwritable), since it began.
    pub dropped: u64,
    pub rss_bytes: u64,
    /// Over every stage: windows inferred, escalated to the hub, and
    /// records dead-lettered by transforms.
    pub windows: u64,
    pub escalated: u64,
    pub dead_lettered: u64,
}

impl Point {
    pub fn of(h: &Heartbeat) -> Point {
        Point {
            ts_us: h.ts_us,
            log_records: h.log_records,
            log_bytes: h.log_bytes,
            dropped: h.log_dropped_full + h.log_dropped_age + h.log_dropped_unwritable,
            rss_bytes: h.rss_bytes,
            windows: h.stages.iter().map(|s| s.windows).sum(),
            escalated: h.stages.iter().map(|s| s.escalated).sum(),
            dead_lettered: h
                .stages
                .iter()
                .flat_map(|s| &s.transforms)
                .map(|t| t.dead_lettered)
                .sum(),
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct Trend {
    points: VecDeque<Point>,
}

impl Trend {
    /// At most one point per this many µs (heartbeats may come faster).
    pub const EVERY_US: i64 = 5_000_000;
    /// Points kept: 10 minutes at one per 5 s.
    pub const KEEP: usize = 120;

    /// Adds `h` unless the last point is less than [`Self::EVERY_US`]
    /// older; a heartbeat from before the last point (the agent's clock
    /// stepped back, or it restarted) starts the trend again.
    pub fn add(&mut self, h: &Heartbeat) {
        if let Some(last) = self.points.back() {
            if h.ts_us < last.ts_us {
                self.points.clear();
            } else if h.ts_us - last.ts_us < Self::EVERY_US {
                return;
            }
        }
        if self.points.len() == Self::KEEP {
            self.points.pop_front();
        }
        self.points.push_back(Point::of(h));
    }

    pub fn points(&self) -> Vec<Point> {
        self.points.iter().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hb(ts_s: i64, log: u64) -> Heartbeat {
        Heartbeat {
            ts_us: ts_s * 1_000_000,
            log_records: log,
            log_dropped_full: 2,
            log_dropped_age: 1,
            ..Default::default()
        }
    }

    #[test]
    fn keeps_one_point_per_interval_up_to_its_bound() {
        let mut t = Trend::default();
        for s in 0..2000 {
            t.add(&hb(s, s as u64));
        }
        let p = t.points();
        assert_eq!(p.len(), Trend::KEEP);
        assert!(p.windows(2).all(|w| w[1].ts_us - w[0].ts_us == 5_000_000));
        assert_eq!(p.last().unwrap().log_records, 1995);
        assert_eq!(p[0].dropped, 3);
    }

    #[test]
    fn a_heartbeat_from_the_past_starts_it_again() {
        let mut t = Trend::default();
        t.add(&hb(100, 1));
        t.add(&hb(110, 2));
        t.add(&hb(50, 3));
        assert_eq!(
            t.points().iter().map(|p| p.log_records).collect::<Vec<_>>(),
            vec![3]
        );
    }
}
