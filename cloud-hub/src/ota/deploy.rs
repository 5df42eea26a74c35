//! Setting a device's desired state: the next generation, signed, stored,
//! and published retained. One path for `deploy`, `PUT .../desired` and
//! the rollouts' actions.

use std::collections::BTreeMap;

use conveyor_shared::ota::{ArtifactRef, StageTarget};
use conveyor_shared::DeviceId;

use super::devices::{Desired, SetError};
use crate::ingest::HubState;

/// Merges `changes` into `device`'s desired state (a target sets a
/// stage, `None` removes it; `shadows` starts or stops shadow runs the
/// same way), stores it and publishes it. A publish that
/// fails now is not an error: the document is stored, and goes out again
/// when the device comes online or reports that it has not seen it.
/// The device's history records it, with `by`.
pub fn set_and_publish(
    s: &HubState,
    device: &DeviceId,
    changes: &BTreeMap<String, Option<StageTarget>>,
    shadows: &BTreeMap<String, Option<ArtifactRef>>,
    by: &str,
    now_us: i64,
) -> Result<Desired, SetError> {
    let desired = {
        let mut store = s.ota.devices();
        let desired = store.set_with_shadows(device, changes, shadows, s.ota.key())?;
        if let Some(entry) = store.devices.get_mut(device.as_str()) {
            entry.published_at_us = Some(now_us);
        }
        desired
    };
    s.ota
        .history
        .record(device, super::history::desired(&desired.doc, by, now_us));
    match s.publisher.desired(device, desired.envelope.clone()) {
        Ok(()) => {
            s.metrics.desired_published.inc();
        }
        Err(e) => {
            tracing::warn!(device = %device, "could not publish the desired state now: {e}")
        }
    }
    tracing::info!(device = %device, generation = desired.doc.generation, stages = ?desired.doc.stages.keys().collect::<Vec<_>>(), by, "desired state set");
    Ok(desired)
}
