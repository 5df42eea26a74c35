//! The HTTP routes of desired states (OTA): what each device should run,
//! and what it reports it runs.
//!
//! | route | what |
//! |---|---|
//! | `PUT /api/v1/devices/{id}/desired` | `{"stages": {"<stage>": {"model": "name@version"} \| {"transforms": [{"artifact": "name@version", "config": {...}}]} \| null}}`, merged into the device's desired state (null removes a stage): the next generation, signed, stored, published retained. `{"device_id", "generation", "desired"}` |
//! | `POST /api/v1/deploy` | the same for several devices: `{"devices": [...], "tags": {"k": "v"}, "stages": {...}}` (a device matches when each tag equals the one it last reported); 422 if none. `{"deployed": [{"device_id", "generation", "desired"}]}` |
//! | `GET /api/v1/devices/{id}/desired` | `{"generation", "desired", "envelope"}` (the envelope as published) |
//! | `GET /api/v1/devices/{id}/state` | the agent's last report: what it runs, the last change's phase (and why it failed) |
//! | `GET /api/v1/devices/{id}/history?limit=N` | the device's history of changes, newest last: each desired state set (`by` whom) and each phase its agent reported (`ota/history.rs`) |
//!
//! Both writes take an optional `"by"` (who asks; default `api`), which
//! the audit log and the device's history record.
//!
//! Artifacts are named by `name@version` (or id) and resolved to the
//! registry's ids here; the document agents get names ids, which they
//! check.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use conveyor_shared::ota::desired::MAX_CHAIN;
use conveyor_shared::ota::{ArtifactKind, ArtifactRef, ChainLink, StageTarget};
use conveyor_shared::DeviceId;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::api::{error, ApiError};
use crate::ingest::HubState;
use crate::ota::devices::SetError;

/// What a request asks one stage to run.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum TargetRequest {
    Model(String),
    Transforms(Vec<LinkRequest>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkRequest {
    artifact: String,
    #[serde(default)]
    config: serde_json::Map<String, Value>,
}

pub(crate) type StageRequests = BTreeMap<String, Option<TargetRequest>>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DesiredRequest {
    stages: StageRequests,
    /// Who asks (the audit log and the device's history say it).
    #[serde(default)]
    by: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeployRequest {
    #[serde(default)]
    devices: Vec<String>,
    #[serde(default)]
    tags: BTreeMap<String, String>,
    stages: StageRequests,
    #[serde(default)]
    by: Option<String>,
}

fn unprocessable(message: String) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, message)
}

fn body<T>(parsed: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    parsed
        .map(|Json(b)| b)
        .map_err(|e| ApiError::new(e.status(), format!("bad request body: {}", e.body_text())))
}

/// A stage name as the agent's `[[stages]]` may have it.
fn check_stage_name(stage: &str) -> Result<(), ApiError> {
    if stage.is_empty() || stage.len() > 128 || stage.chars().any(char::is_control) {
        return Err(unprocessable(format!(
            "stage name {:?}: 1-128 characters, no control characters",
            stage.chars().take(140).collect::<String>()
        )));
    }
    Ok(())
}

/// Resolves each stage's `name@version`s to registry ids, checking kinds.
pub(crate) fn resolve(
    s: &HubState,
    stages: StageRequests,
) -> Result<BTreeMap<String, Option<StageTarget>>, ApiError> {
    if stages.is_empty() {
        return Err(unprocessable(
            "`stages` is empty: name at least one stage to change".into(),
        ));
    }
    let registry = s.ota.registry();
    let find = |r: &str, kind: ArtifactKind, stage: &str| {
        let m = registry.find(r).ok_or_else(|| {
            unprocessable(format!(
                "stage {stage:?}: no artifact {r:?} in the registry (push it first)"
            ))
        })?;
        if m.manifest.kind != kind {
            let found = format!("{:?}", m.manifest.kind).to_lowercase();
            let want = format!("{kind:?}").to_lowercase();
            return Err(unprocessable(format!(
                "stage {stage:?}: {r} is a {found}, and a {} needs a {want}",
                if kind == ArtifactKind::Model {
                    "`model`"
                } else {
                    "`transforms` chain"
                }
            )));
        }
        Ok(ArtifactRef {
            name: m.manifest.name.clone(),
            version: m.manifest.version.clone(),
            id: m.id.clone(),
        })
    };
    let mut out = BTreeMap::new();
    for (stage, target) in stages {
        check_stage_name(&stage)?;
        let t = match target {
            None => None,
            Some(TargetRequest::Model(r)) => {
                Some(StageTarget::Model(find(&r, ArtifactKind::Model, &stage)?))
            }
            Some(TargetRequest::Transforms(links)) => {
                if links.is_empty() || links.len() > MAX_CHAIN {
                    return Err(unprocessable(format!(
                        "stage {stage:?}: a transform chain has 1 to {MAX_CHAIN} transforms, got {}",
                        links.len()
                    )));
                }
                let mut chain = Vec::with_capacity(links.len());
                for l in links {
                    chain.push(ChainLink {
                        artifact: find(&l.artifact, ArtifactKind::Transform, &stage)?,
                        config: l.config,
                    });
                }
                Some(StageTarget::Transforms(chain))
            }
        };
        out.insert(stage, t);
    }
    Ok(out)
}

/// Sets, stores and publishes the desired state of each of `devices`,
/// for `by`, and writes each in the audit log.
fn deploy_to(
    s: &HubState,
    devices: &[DeviceId],
    changes: &BTreeMap<String, Option<StageTarget>>,
    by: Option<String>,
) -> Result<Vec<Value>, ApiError> {
    let mut out = Vec::new();
    let now = conveyor_shared::time::now_us();
    let by = by.unwrap_or_else(|| "api".into());
    for device in devices {
        let desired = match crate::ota::deploy::set_and_publish(
            s,
            device,
            changes,
            &BTreeMap::new(),
            &by,
            now,
        ) {
            Ok(d) => d,
            Err(e) => {
                let done: Vec<_> = out.iter().map(|d: &Value| d["device_id"].clone()).collect();
                return Err(set_error(
                    &e,
                    format!("device {device}: {e} (deployed before it: {done:?})"),
                ));
            }
        };
        s.audit.record(crate::audit::AuditEntry {
            at_us: now,
            by: by.clone(),
            action: "deploy".into(),
            target: device.to_string(),
            detail: format!(
                "generation {}: {}",
                desired.doc.generation,
                crate::ota::history::desired(&desired.doc, &by, now).what
            ),
        });
        out.push(json!({
            "device_id": device,
            "generation": desired.doc.generation,
            "desired": desired.doc,
        }));
    }
    Ok(out)
}

/// The status for a desired state that could not be set.
pub(crate) fn set_error(e: &SetError, message: String) -> ApiError {
    let code = match e {
        SetError::TooManyStages(_) => StatusCode::UNPROCESSABLE_ENTITY,
        SetError::Io(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    ApiError::new(code, message)
}

pub async fn put_desired(
    State(s): State<Arc<HubState>>,
    caller: Option<axum::Extension<crate::api_auth::Caller>>,
    Path(id): Path<String>,
    parsed: Result<Json<DesiredRequest>, JsonRejection>,
) -> Response {
    let device = match DeviceId::new(id) {
        Ok(d) => d,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let done = body(parsed).and_then(|b| {
        let changes = resolve(&s, b.stages)?;
        deploy_to(
            &s,
            std::slice::from_ref(&device),
            &changes,
            Some(crate::api_auth::caller(caller).by(b.by)),
        )
    });
    match done {
        Ok(mut done) => Json(done.remove(0)).into_response(),
        Err(e) => e.into_response(),
    }
}

/// The devices a deploy names: by id, and those carrying every one of
/// `tags` (reported by their agent or set on the hub).
pub(crate) fn select(
    s: &HubState,
    ids: &[String],
    tags: &BTreeMap<String, String>,
) -> Result<Vec<DeviceId>, ApiError> {
    let mut devices = Vec::new();
    for id in ids {
        let d = DeviceId::new(id.clone())
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("device {id:?}: {e}")))?;
        if !devices.contains(&d) {
            devices.push(d);
        }
    }
    if !tags.is_empty() {
        let store = s.ota.devices();
        for (id, d) in &store.devices {
            let has = d.tags();
            let matches = tags.iter().all(|(k, v)| has.get(k) == Some(v));
            if let (true, Ok(d)) = (matches, DeviceId::new(id.clone())) {
                if !devices.contains(&d) {
                    devices.push(d);
                }
            }
        }
    }
    if devices.is_empty() {
        return Err(unprocessable(format!(
            "no device selected: give `devices`, or `tags` that devices carry (reported by \
             their agent, or set with `cloud-hub device tag`; asked for tags {tags:?})"
        )));
    }
    Ok(devices)
}

pub async fn deploy(
    State(s): State<Arc<HubState>>,
    caller: Option<axum::Extension<crate::api_auth::Caller>>,
    parsed: Result<Json<DeployRequest>, JsonRejection>,
) -> Response {
    let done = body(parsed).and_then(|b| {
        let devices = select(&s, &b.devices, &b.tags)?;
        let changes = resolve(&s, b.stages)?;
        deploy_to(
            &s,
            &devices,
            &changes,
            Some(crate::api_auth::caller(caller).by(b.by)),
        )
    });
    match done {
        Ok(done) => Json(json!({"deployed": done})).into_response(),
        Err(e) => e.into_response(),
    }
}

pub async fn get_desired(State(s): State<Arc<HubState>>, Path(id): Path<String>) -> Response {
    let store = s.ota.devices();
    match store.devices.get(&id).and_then(|d| d.desired.as_ref()) {
        Some(d) => Json(json!({
            "generation": d.doc.generation,
            "desired": d.doc,
            "envelope": serde_json::from_slice::<Value>(&d.envelope).unwrap_or(Value::Null),
        }))
        .into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            format!("no desired state for device {id:?}"),
        ),
    }
}

pub async fn get_state(State(s): State<Arc<HubState>>, Path(id): Path<String>) -> Response {
    let store = s.ota.devices();
    match store.devices.get(&id).and_then(|d| d.report()) {
        Some(st) => Json(st).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            format!("device {id:?} has reported no OTA state"),
        ),
    }
}

#[derive(Debug, Deserialize)]
pub struct HistoryQuery {
    limit: Option<usize>,
}

/// Most history entries one request returns.
const MAX_HISTORY: usize = 500;

pub async fn get_history(
    State(s): State<Arc<HubState>>,
    Path(id): Path<String>,
    axum::extract::Query(q): axum::extract::Query<HistoryQuery>,
) -> Response {
    let device = match DeviceId::new(id) {
        Ok(d) => d,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let limit = q.limit.unwrap_or(100).min(MAX_HISTORY);
    let journal = s.ota.history.journal(&device);
    let read = tokio::task::spawn_blocking(move || {
        journal.last::<crate::ota::history::HistoryEntry>(limit)
    });
    match read.await {
        Ok(Ok(entries)) => Json(json!({"device_id": device, "history": entries})).into_response(),
        Ok(Err(e)) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot read the history of {device}: {e}"),
        ),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}
