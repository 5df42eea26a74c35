//! The demo's over-the-air update: after `--update-after` seconds the hub
//! is given a better smart-watch model (`models/basicmotions/v2`), and
//! every watch switches to it while it streams.
//!
//! It goes through the hub's public HTTP API, exactly as an operator's
//! `cloud-hub artifact push` and `cloud-hub deploy --tag` would: the push
//! is checked and signed by the hub, the desired state is published to the
//! agents, and each agent downloads, verifies and hot-swaps the model
//! between two windows. What each agent runs comes from its own retained
//! state report, not from what the demo asked for.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use cloud_hub::ingest::HubState;
use cloud_hub::ota_cli::artifact::artifact_files;
use cloud_hub::ota_cli::http::{check, multipart, request, Body};
use serde::Serialize;
use serde_json::json;

/// The tag the watches carry, and the deploy selects them by.
pub const TAG: (&str, &str) = ("dataset", "basicmotions");

/// The stage that runs the watches' model.
pub const STAGE: &str = "motion-classifier";

/// The new model, relative to the models folder.
pub fn model_file(models: &Path) -> PathBuf {
    models.join("basicmotions/v2/edge.int8.json")
}

/// What the update did, for the summary.
#[derive(Debug, Clone, Serialize)]
pub struct UpdateSummary {
    /// `name@version` pushed and deployed.
    pub artifact: String,
    pub artifact_id: String,
    /// Seconds after the agents started.
    pub deployed_after_s: f64,
    /// The desired-state generation per device.
    pub generations: BTreeMap<String, u64>,
    /// Devices that report running it, and those that failed (with the
    /// reason).
    pub applied: usize,
    pub failed: BTreeMap<String, String>,
}

impl UpdateSummary {
    /// An update that never reached the agents (the push or deploy failed).
    pub fn failed_to_start(after_s: f64, reason: String) -> UpdateSummary {
        UpdateSummary {
            artifact: String::new(),
            artifact_id: String::new(),
            deployed_after_s: after_s,
            generations: BTreeMap::new(),
            applied: 0,
            failed: BTreeMap::from([("hub".to_string(), reason)]),
        }
    }
}

/// Pushes the model to the hub at `hub` and deploys it to every device
/// tagged [`TAG`].
pub async fn push_and_deploy(hub: &str, model: &Path, after_s: f64) -> Result<UpdateSummary> {
    let files = artifact_files(model)?;
    let (status, a) = request(hub, "POST", "/api/v1/artifacts", Some(multipart(&files)?)).await?;
    check(status, &a, &format!("pushing {}", model.display()))?;
    let artifact = format!(
        "{}@{}",
        a["name"].as_str().unwrap_or("?"),
        a["version"].as_str().unwrap_or("?")
    );
    let body = json!({
        "tags": {TAG.0: TAG.1},
        "stages": {STAGE: {"model": artifact}},
    });
    let (status, v) = request(hub, "POST", "/api/v1/deploy", Some(Body::json(&body))).await?;
    check(status, &v, "deploying")?;
    let generations = v["deployed"]
        .as_array()
        .context("the hub's deploy answer has no `deployed` list")?
        .iter()
        .map(|d| {
            (
                d["device_id"].as_str().unwrap_or_default().to_string(),
                d["generation"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    Ok(UpdateSummary {
        artifact,
        artifact_id: a["id"].as_str().unwrap_or_default().to_string(),
        deployed_after_s: after_s,
        generations,
        applied: 0,
        failed: BTreeMap::new(),
    })
}

/// Where one device is with the update, from its last report.
#[derive(Debug, Clone, PartialEq)]
pub enum DeviceUpdate {
    Pending,
    Applied,
    Failed(String),
}

/// What `device`'s `stage` runs as it reports it (`name@version`), and
/// where it is with generation `g`.
pub fn report(
    state: &HubState,
    device: &str,
    stage: &str,
    g: Option<u64>,
) -> (Option<String>, DeviceUpdate) {
    let store = state.ota.devices();
    let Some(report) = store.devices.get(device).and_then(|d| d.report()) else {
        return (None, DeviceUpdate::Pending);
    };
    let running = report.stages.get(stage).map(|s| s.running.to_string());
    let Some(g) = g else {
        return (running, DeviceUpdate::Pending);
    };
    let phase = if report.generation.is_some_and(|a| a >= g) {
        DeviceUpdate::Applied
    } else {
        match &report.last_change {
            Some(c)
                if c.generation == Some(g) && c.phase == conveyor_shared::ota::Phase::Failed =>
            {
                DeviceUpdate::Failed(c.reason.clone().unwrap_or_default())
            }
            _ => DeviceUpdate::Pending,
        }
    };
    (running, phase)
}

/// `a x2, b x1`: how many devices run each version.
pub fn distribution<'a>(running: impl Iterator<Item = &'a str>) -> String {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for r in running {
        *counts.entry(r).or_default() += 1;
    }
    counts
        .iter()
        .map(|(r, n)| format!("{r} x{n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distribution_counts_each_version_once() {
        let r = ["m@2", "m@1", "m@2"];
        assert_eq!(distribution(r.into_iter()), "m@1 x1, m@2 x2");
        assert_eq!(distribution(std::iter::empty()), "");
    }
}
