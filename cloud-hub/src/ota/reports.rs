//! What the hub does with an agent's OTA report (`conveyor/v1/<device>/state`)
//! and with a device coming online: keep the report, log and count each
//! change of phase, and send the desired state again to a device that has
//! not seen it (see `republish`).
//!
//! Reports are persisted when they say something new: a download's
//! progress (the same generation, still downloading) is kept in memory
//! only, so a chatty agent costs no fsync per progress message.

use conveyor_shared::ota::{AgentState, Change, Phase};
use conveyor_shared::DeviceId;

use crate::ingest::HubState;

/// Handles `state`, the report of `device` (already checked to name it).
pub fn on_report(hub: &HubState, device: &DeviceId, state: AgentState, now_us: i64) {
    let for_rollouts = state.clone();
    keep_report(hub, device, state, now_us);
    // After the device store's lock is released (the rollouts' lock comes
    // first).
    crate::rollout::driver::on_report(hub, device.as_str(), &for_rollouts, now_us);
}

fn keep_report(hub: &HubState, device: &DeviceId, state: AgentState, now_us: i64) {
    let mut store = hub.ota.devices();
    let key = |c: &Change| (c.generation, c.phase);
    let previous = store
        .devices
        .get(device.as_str())
        .and_then(|d| d.report())
        .cloned();
    let before = previous
        .as_ref()
        .and_then(|s| s.last_change.as_ref())
        .map(key);
    if let Some(c) = &state.last_change {
        if before != Some(key(c)) {
            log_change(device, c);
            hub.ota
                .history
                .record(device, super::history::reported(&state, c, now_us));
            match c.phase {
                Phase::Applied => hub.metrics.ota_change("applied"),
                Phase::Failed => hub.metrics.ota_change("failed"),
                _ => {}
            }
        }
    }
    let persist = previous.as_ref().is_none_or(|p| says_more(p, &state));
    if let Err(e) = store.report(state, now_us, persist) {
        tracing::error!(device = %device, "cannot persist the agent's OTA state: {e}");
    }
    send_if_due(hub, &mut store, device, now_us);
}

/// A device came online: send it its desired state if it has not seen it.
pub fn on_online(hub: &HubState, device: &DeviceId, now_us: i64) {
    let mut store = hub.ota.devices();
    send_if_due(hub, &mut store, device, now_us);
}

fn send_if_due(
    hub: &HubState,
    store: &mut super::devices::DeviceStore,
    device: &DeviceId,
    now_us: i64,
) {
    let Some(d) = store.devices.get_mut(device.as_str()) else {
        return;
    };
    if !d.republish_due(now_us) {
        return;
    }
    let Some(desired) = &d.desired else {
        return;
    };
    d.published_at_us = Some(now_us);
    match hub.publisher.desired(device, desired.envelope.clone()) {
        Ok(()) => {
            hub.metrics.desired_published.inc();
            tracing::info!(device = %device, generation = desired.doc.generation, "sent the desired state again (the device has not seen it)");
        }
        Err(e) => {
            tracing::warn!(device = %device, "could not send the desired state again: {e}")
        }
    }
}

fn log_change(device: &DeviceId, c: &Change) {
    match c.phase {
        Phase::Failed => tracing::warn!(
            device = %device,
            generation = c.generation,
            reason = c.reason.as_deref().unwrap_or(""),
            "OTA change failed"
        ),
        phase => tracing::info!(device = %device, generation = c.generation, ?phase, "OTA change"),
    }
}

/// Whether `new` says more than `old` beyond a download's progress.
pub fn says_more(old: &AgentState, new: &AgentState) -> bool {
    let progress = |s: &AgentState| {
        let mut s = s.clone();
        s.ts_us = 0;
        if let Some(c) = &mut s.last_change {
            if c.phase == Phase::Downloading {
                c.bytes_done = 0;
                c.since_us = 0;
            }
        }
        s
    };
    progress(old) != progress(new)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn downloading(done: u64) -> AgentState {
        AgentState {
            device_id: "d".into(),
            generation: Some(1),
            stages: Default::default(),
            last_change: Some(Change {
                generation: Some(2),
                phase: Phase::Downloading,
                reason: None,
                bytes_done: done,
                bytes_total: 100,
                since_us: done as i64,
            }),
            tags: Default::default(),
            ts_us: done as i64,
        }
    }

    #[test]
    fn progress_alone_is_not_worth_an_fsync() {
        assert!(!says_more(&downloading(10), &downloading(50)));
        let mut verifying = downloading(100);
        verifying.last_change.as_mut().unwrap().phase = Phase::Verifying;
        assert!(says_more(&downloading(100), &verifying));
        let mut retagged = downloading(10);
        retagged.tags.insert("k".into(), "v".into());
        assert!(says_more(&downloading(10), &retagged));
    }
}
