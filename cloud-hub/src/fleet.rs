//! The fleet at a glance, as plain data: what the dashboard's overview
//! and device list show, computed from the registry's entries and the
//! agents' OTA reports. No I/O and no clock (the time is a parameter), so
//! every figure is tested without a hub.
//!
//! The device list is filtered and paged here, on the hub: a page of rows
//! is what travels, so a fleet of thousands stays one small answer.

use std::collections::BTreeMap;

use conveyor_shared::ota::AgentState;
use serde::{Deserialize, Serialize};

use crate::registry::DeviceView;

/// One device, as a row of the list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceRow {
    pub device_id: String,
    pub online: bool,
    pub last_seen_us: i64,
    pub records: u64,
    pub records_per_sec: f64,
    pub agent_version: String,
    /// The agent's tags and the hub's (the hub's win).
    pub tags: BTreeMap<String, String>,
    /// What each stage runs (`name@version`, a chain joined by ` -> `).
    pub running: BTreeMap<String, String>,
    pub rss_bytes: u64,
    pub log_records: u64,
    /// The log's bytes, and the bound it holds them to (0: unknown).
    pub log_bytes: u64,
    pub log_bound_bytes: u64,
    /// Records the agent's log dropped (full, age, unwritable, corrupt).
    pub dropped: u64,
    /// Records its transforms put in the dead-letter store.
    pub dead_letters: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub storage_fault: Option<String>,
    /// It has a desired state it has not applied.
    pub behind: bool,
}

/// What needs an operator's eye.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// `offline`, `storage`, `log_near_bound`, `drops`, `dead_letters`,
    /// `ota_failed`, `hub_model_overloaded`.
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    pub text: String,
}

/// The fleet's overview.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Overview {
    pub ts_us: i64,
    pub devices_known: usize,
    pub devices_online: usize,
    pub ingest_records_per_sec: f64,
    /// Edge predictions received, since the hub began counting.
    pub predictions: u64,
    /// Final predictions, and how many of them a hub model decided.
    pub results: u64,
    pub decided_by_hub: u64,
    pub dropped: u64,
    pub dead_letters: u64,
    /// By stage: how many devices run each version.
    pub versions: BTreeMap<String, BTreeMap<String, usize>>,
    /// The edge models seen in the fleet (`id@version`), over every device.
    pub edge_models: BTreeMap<String, EdgeModel>,
    pub alerts: Vec<Alert>,
}

/// One edge model over the fleet: its predictions, and how it fared on
/// windows that carried a label and on those the hub's teacher scored.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct EdgeModel {
    pub devices: usize,
    pub predictions: u64,
    pub scored: u64,
    pub correct: u64,
    pub teacher_sampled: u64,
    pub teacher_agreed: u64,
}

/// Most alerts of one kind listed one by one (the rest are counted).
pub const MAX_ALERTS_PER_KIND: usize = 20;

/// A log this full (a share of its bound) is near dropping records: the
/// device has been cut off from the hub, or sends faster than it can.
pub const LOG_NEAR_BOUND: f64 = 0.8;

/// What a report says each stage runs.
fn running(report: Option<&AgentState>) -> BTreeMap<String, String> {
    report
        .map(|r| {
            r.stages
                .iter()
                .map(|(name, st)| (name.clone(), st.running.to_string()))
                .collect()
        })
        .unwrap_or_default()
}

/// A device's row, from its registry view, its report and its tags.
pub fn row(
    view: &DeviceView,
    report: Option<&AgentState>,
    tags: BTreeMap<String, String>,
) -> DeviceRow {
    let e = &view.entry;
    let hb = e.last_heartbeat.as_ref();
    DeviceRow {
        device_id: e.device_id.clone(),
        online: e.online,
        last_seen_us: e.last_seen_us,
        records: e.records,
        records_per_sec: view.records_per_sec,
        agent_version: e
            .status
            .as_ref()
            .map(|s| s.agent_version.clone())
            .unwrap_or_default(),
        tags,
        running: running(report),
        rss_bytes: hb.map_or(0, |h| h.rss_bytes),
        log_records: hb.map_or(0, |h| h.log_records),
        log_bytes: hb.map_or(0, |h| h.log_bytes),
        log_bound_bytes: hb.and_then(|h| h.log_bound_bytes).unwrap_or(0),
        dropped: hb.map_or(0, |h| {
            h.log_dropped_full + h.log_dropped_age + h.log_dropped_unwritable + h.log_lost_corrupt
        }),
        dead_letters: hb.map_or(0, |h| {
            h.stages
                .iter()
                .flat_map(|s| &s.transforms)
                .map(|t| t.dead_lettered)
                .sum()
        }),
        storage_fault: hb.and_then(|h| h.storage_fault.clone()),
        behind: view.ota.behind,
    }
}

/// A filter of the device list (every field optional).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct Filter {
    /// Part of the device id (any case).
    #[serde(default)]
    pub q: Option<String>,
    /// `online` or `offline`.
    #[serde(default)]
    pub status: Option<String>,
    /// `KEY=VALUE`.
    #[serde(default)]
    pub tag: Option<String>,
    /// Part of what any stage runs (`2.0.0`, `basicmotions-edge@1`).
    #[serde(default)]
    pub version: Option<String>,
}

impl Filter {
    /// Whether `row` passes; a malformed `tag` (no `=`) is an error.
    pub fn matches(&self, row: &DeviceRow) -> Result<bool, String> {
        if let Some(q) = self.q.as_deref().filter(|q| !q.is_empty()) {
            if !row.device_id.to_lowercase().contains(&q.to_lowercase()) {
                return Ok(false);
            }
        }
        match self.status.as_deref() {
            None | Some("") | Some("all") => {}
            Some("online") if !row.online => return Ok(false),
            Some("offline") if row.online => return Ok(false),
            Some("online" | "offline") => {}
            Some(other) => {
                return Err(format!(
                    "status must be online, offline or all, got {other:?}"
                ))
            }
        }
        if let Some(tag) = self.tag.as_deref().filter(|t| !t.is_empty()) {
            let (k, v) = tag
                .split_once('=')
                .ok_or_else(|| format!("tag must be KEY=VALUE, got {tag:?}"))?;
            if row.tags.get(k).map(String::as_str) != Some(v) {
                return Ok(false);
            }
        }
        if let Some(v) = self.version.as_deref().filter(|v| !v.is_empty()) {
            if !row.running.values().any(|r| r.contains(v)) {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

/// One page of the rows `filter` passes, and how many pass in all.
pub fn page(
    rows: impl IntoIterator<Item = DeviceRow>,
    filter: &Filter,
    offset: usize,
    limit: usize,
) -> Result<(usize, Vec<DeviceRow>), String> {
    let mut total = 0;
    let mut out = Vec::new();
    for r in rows {
        if !filter.matches(&r)? {
            continue;
        }
        if total >= offset && out.len() < limit {
            out.push(r);
        }
        total += 1;
    }
    Ok((total, out))
}

/// Pushes alerts of `kind` for each `(device, text)`, the first
/// [`MAX_ALERTS_PER_KIND`] one by one and the rest as one count.
fn alerts_of(out: &mut Vec<Alert>, kind: &str, found: Vec<(String, String)>) {
    let more = found.len().saturating_sub(MAX_ALERTS_PER_KIND);
    for (device, text) in found.into_iter().take(MAX_ALERTS_PER_KIND) {
        out.push(Alert {
            kind: kind.into(),
            device: Some(device),
            text,
        });
    }
    if more > 0 {
        out.push(Alert {
            kind: kind.into(),
            device: None,
            text: format!("and {more} more devices"),
        });
    }
}

/// The overview of `rows` (with each device's view and report, for what a
/// row does not carry), at `now`.
/// `overloaded` lists the hub models that turned requests away.
pub fn overview(
    devices: &[(DeviceView, Option<AgentState>)],
    rows: &[DeviceRow],
    overloaded: &[(String, u64)],
    now: i64,
) -> Overview {
    let mut o = Overview {
        ts_us: now,
        devices_known: rows.len(),
        ..Overview::default()
    };
    let mut ota = Vec::new();
    for (view, report) in devices {
        let e = &view.entry;
        for (model, t) in &e.predictions {
            o.predictions += t.predictions;
            let m = o.edge_models.entry(model.clone()).or_default();
            m.devices += 1;
            m.predictions += t.predictions;
            m.scored += t.scored;
            m.correct += t.correct;
            m.teacher_sampled += t.teacher_sampled;
            m.teacher_agreed += t.teacher_agreed;
        }
        o.results += e.finals.results;
        o.decided_by_hub += e.finals.by_hub;
        if let Some(c) = report.as_ref().and_then(|r| r.last_change.as_ref()) {
            if c.phase == conveyor_shared::ota::Phase::Failed {
                ota.push((
                    e.device_id.clone(),
                    format!(
                        "update refused: {}",
                        c.reason.as_deref().unwrap_or("no reason given")
                    ),
                ));
            }
        }
    }
    let (mut offline, mut storage, mut near, mut drops, mut dead) =
        (vec![], vec![], vec![], vec![], vec![]);
    for r in rows {
        for (stage, version) in &r.running {
            *o.versions
                .entry(stage.clone())
                .or_default()
                .entry(version.clone())
                .or_default() += 1;
        }
        o.devices_online += usize::from(r.online);
        o.ingest_records_per_sec += r.records_per_sec;
        o.dropped += r.dropped;
        o.dead_letters += r.dead_letters;
        let id = r.device_id.clone();
        if !r.online {
            let ago = (now - r.last_seen_us).max(0) as f64 / 1e6;
            offline.push((id.clone(), format!("offline; last seen {ago:.0} s ago")));
        }
        if let Some(f) = &r.storage_fault {
            storage.push((id.clone(), format!("storage: {f}")));
        }
        if r.log_bound_bytes > 0 && r.log_bytes as f64 >= LOG_NEAR_BOUND * r.log_bound_bytes as f64
        {
            near.push((
                id.clone(),
                format!(
                    "its log is {:.0} % full ({} of {} bytes)",
                    100.0 * r.log_bytes as f64 / r.log_bound_bytes as f64,
                    r.log_bytes,
                    r.log_bound_bytes
                ),
            ));
        }
        if r.dropped > 0 {
            drops.push((id.clone(), format!("its log dropped {} records", r.dropped)));
        }
        if r.dead_letters > 0 {
            dead.push((id.clone(), format!("{} dead letters", r.dead_letters)));
        }
    }
    alerts_of(&mut o.alerts, "offline", offline);
    alerts_of(&mut o.alerts, "storage", storage);
    alerts_of(&mut o.alerts, "log_near_bound", near);
    alerts_of(&mut o.alerts, "drops", drops);
    alerts_of(&mut o.alerts, "dead_letters", dead);
    alerts_of(&mut o.alerts, "ota_failed", ota);
    for (model, n) in overloaded {
        o.alerts.push(Alert {
            kind: "hub_model_overloaded".into(),
            device: None,
            text: format!("hub model {model} turned away {n} requests (overloaded)"),
        });
    }
    o
}

#[cfg(test)]
#[path = "fleet_tests.rs"]
mod tests;
