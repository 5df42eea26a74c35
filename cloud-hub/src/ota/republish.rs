//! When the hub sends a device its desired state again, as plain data
//! (times are parameters; tested without a clock).
//!
//! The desired state is published retained, so an agent that connects
//! later gets it from the broker. It can still miss it: the embedded
//! broker forgets retained messages when the hub restarts (the hub
//! republishes everything at start for that), a third party may publish
//! over it, a publish may not have been queued. So when a device's report,
//! or its coming online, shows it has not seen its desired generation, the
//! hub sends it again, at most once per [`REPUBLISH_EVERY_US`].
//!
//! A device that has seen the desired generation (applied it, is working
//! on it, or refused it) is not sent it again: the same document would
//! only be refused again. A refusal of a document whose generation could
//! not be trusted (a bad signature: `generation` is `None`) that arrived
//! after the last send counts as having seen it, for the same reason.

use conveyor_shared::ota::{AgentState, Phase};

/// The least time between two sends of a desired state to one device, µs.
pub const REPUBLISH_EVERY_US: i64 = 10_000_000;

/// What the hub knows when it decides.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    /// The device's desired generation.
    pub desired: u64,
    /// Its latest report, and when the hub received it (hub clock).
    pub report: Option<(&'a AgentState, i64)>,
    /// When the hub last sent the desired state (hub clock).
    pub last_sent_us: Option<i64>,
}

/// Whether to send the desired state again at `now_us`.
pub fn due(f: Facts<'_>, now_us: i64) -> bool {
    if f.last_sent_us
        .is_some_and(|t| now_us - t < REPUBLISH_EVERY_US)
    {
        return false;
    }
    let Some((state, received_us)) = f.report else {
        return true;
    };
    if state.generation.is_some_and(|g| g >= f.desired) {
        return false;
    }
    match &state.last_change {
        Some(c) if c.generation.is_some_and(|g| g >= f.desired) => false,
        Some(c) if c.generation.is_none() && c.phase == Phase::Failed => {
            f.last_sent_us.is_some_and(|t| received_us < t)
        }
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use conveyor_shared::ota::Change;

    fn state(applied: Option<u64>, change: Option<(Option<u64>, Phase)>) -> AgentState {
        AgentState {
            device_id: "d".into(),
            generation: applied,
            stages: Default::default(),
            last_change: change.map(|(generation, phase)| Change {
                generation,
                phase,
                reason: None,
                bytes_done: 0,
                bytes_total: 0,
                since_us: 0,
            }),
            tags: Default::default(),
            ts_us: 0,
        }
    }

    fn facts(report: Option<&AgentState>, received: i64, sent: Option<i64>) -> Facts<'_> {
        Facts {
            desired: 3,
            report: report.map(|s| (s, received)),
            last_sent_us: sent,
        }
    }

    #[test]
    fn a_device_that_has_not_seen_its_generation_is_sent_it_but_not_too_often() {
        let t = REPUBLISH_EVERY_US;
        assert!(due(facts(None, 0, None), 0), "never sent, never reported");
        assert!(!due(facts(None, 0, Some(0)), t - 1), "sent lately");
        assert!(due(facts(None, 0, Some(0)), t));
        let behind = state(Some(2), Some((Some(2), Phase::Applied)));
        assert!(due(facts(Some(&behind), 5, Some(0)), t));
        assert!(!due(facts(Some(&behind), 5, Some(0)), t / 2));
        // A replayed older document it refused: it has not seen ours.
        let replayed = state(Some(2), Some((Some(1), Phase::Failed)));
        assert!(due(facts(Some(&replayed), 5, Some(0)), t));
    }

    #[test]
    fn a_device_that_has_seen_it_is_left_alone() {
        let late = 100 * REPUBLISH_EVERY_US;
        for seen in [
            state(Some(3), Some((Some(3), Phase::Applied))),
            state(Some(4), None),
            state(Some(2), Some((Some(3), Phase::Downloading))),
            state(Some(2), Some((Some(3), Phase::Failed))),
        ] {
            assert!(!due(facts(Some(&seen), 5, Some(0)), late), "{seen:?}");
        }
        // A refusal it could not date: after our send it saw ours; before,
        // it may not have.
        let unsigned = state(Some(2), Some((None, Phase::Failed)));
        assert!(!due(facts(Some(&unsigned), 10, Some(5)), late));
        assert!(due(facts(Some(&unsigned), 1, Some(5)), late));
    }
}
