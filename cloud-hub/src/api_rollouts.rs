//! The HTTP routes of rollouts.
//!
//! | route | what |
//! |---|---|
//! | `POST /api/v1/rollouts` | `{"stage", "target": {"model": "name@version"} \| {"transforms": [...]}, "devices": [...], "tags": {"k": "v"}, "waves": "1,10%,50%,100%", "soak_s", "device_timeout_s", "max_failures": "10%" \| 2, "gates": {"accuracy_margin", "teacher_margin", "min_windows", "max_silence_s", "allow_restarts", "max_errors", "max_rss_growth_mb"}, "shadow": {"windows", "min_agreement", "max_errors", "only"}, "by"}`: starts it (a running rollout for the same stage on any of the devices is superseded); 201 with the rollout |
//! | `GET /api/v1/rollouts` | `{"rollouts": [summary]}`, newest first |
//! | `GET /api/v1/rollouts/{id}` | the rollout: summary, each device's phase and reason, waves, the log of steps (who, when, what), and `figures`: the gates' figures over time (`rollout/figures.rs`) |
//! | `POST /api/v1/rollouts/{id}/{pause,resume,abort,rollback}` | `{"by", "reason"}`; 409 when the rollout's state does not allow it |

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::api::ApiError;
use crate::api_desired::{resolve, select, TargetRequest};
use crate::ingest::HubState;
use crate::rollout::driver::{self, DriveError, Start};
use crate::rollout::gates::Gates;
use crate::rollout::machine::{DevicePhase, Event, Policy, Rollout};
use crate::rollout::shadow::ShadowGate;
use crate::rollout::waves;
use conveyor_shared::ota::StageTarget;

const DEFAULT_WAVES: &str = "1,10%,50%,100%";
const DEFAULT_SOAK_S: f64 = 60.0;
const DEFAULT_TIMEOUT_S: f64 = 300.0;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartRequest {
    stage: String,
    target: TargetRequest,
    #[serde(default)]
    devices: Vec<String>,
    #[serde(default)]
    tags: BTreeMap<String, String>,
    #[serde(default)]
    waves: Option<String>,
    #[serde(default)]
    soak_s: Option<f64>,
    #[serde(default)]
    device_timeout_s: Option<f64>,
    /// A count of devices (`2`) or a share of the target (`"10%"`).
    #[serde(default)]
    max_failures: Option<Value>,
    /// The gates (see `rollout::gates`); omitted: restarts only.
    #[serde(default)]
    gates: Option<GatesRequest>,
    /// Run the candidate in shadow first (see `rollout::shadow`).
    #[serde(default)]
    shadow: Option<ShadowRequest>,
    #[serde(default)]
    by: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShadowRequest {
    /// Windows run beside the device's model before it is judged.
    #[serde(default)]
    windows: Option<u64>,
    /// Share of them on which it must agree with the device's model.
    #[serde(default)]
    min_agreement: Option<f64>,
    #[serde(default)]
    max_errors: Option<u64>,
    /// Judge the candidate on live data, never switch to it.
    #[serde(default)]
    only: bool,
}

fn shadow_gate(
    r: Option<ShadowRequest>,
    target: &StageTarget,
) -> Result<Option<ShadowGate>, ApiError> {
    let Some(r) = r else {
        return Ok(None);
    };
    if !matches!(target, StageTarget::Model(_)) {
        return Err(unprocessable(
            "`shadow` needs a model target: only an inference stage runs a candidate beside its model",
        ));
    }
    let d = ShadowGate::default();
    let min_agreement = r.min_agreement.unwrap_or(d.min_agreement);
    if !(min_agreement.is_finite() && (0.0..=1.0).contains(&min_agreement)) {
        return Err(unprocessable(format!(
            "`shadow.min_agreement` must be from 0 to 1 (a share of windows), got {min_agreement}"
        )));
    }
    Ok(Some(ShadowGate {
        windows: r.windows.unwrap_or(d.windows).max(1),
        min_agreement,
        max_errors: r.max_errors.unwrap_or(d.max_errors),
        only: r.only,
    }))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatesRequest {
    /// Accuracy on labelled windows at most this far below the replaced model's.
    #[serde(default)]
    accuracy_margin: Option<f64>,
    /// Agreement with the hub's teacher at most this far below the replaced model's.
    #[serde(default)]
    teacher_margin: Option<f64>,
    #[serde(default)]
    min_windows: Option<u64>,
    /// Longest silence (no message) tolerated while soaking, seconds.
    #[serde(default)]
    max_silence_s: Option<f64>,
    #[serde(default)]
    allow_restarts: bool,
    /// Failed windows or records in the stage while soaking, at most.
    #[serde(default)]
    max_errors: Option<u64>,
    /// Resident memory growth while soaking, at most, MB.
    #[serde(default)]
    max_rss_growth_mb: Option<f64>,
}

fn gates(g: Option<GatesRequest>) -> Result<Gates, ApiError> {
    let g = g.unwrap_or_default();
    for (name, margin) in [
        ("accuracy_margin", g.accuracy_margin),
        ("teacher_margin", g.teacher_margin),
    ] {
        if let Some(m) = margin {
            if !(m.is_finite() && (0.0..=1.0).contains(&m)) {
                return Err(unprocessable(format!(
                    "`gates.{name}` must be from 0 to 1 (a share of windows), got {m}"
                )));
            }
        }
    }
    let defaults = Gates::default();
    Ok(Gates {
        accuracy_margin: g.accuracy_margin,
        teacher_margin: g.teacher_margin,
        min_windows: g.min_windows.unwrap_or(defaults.min_windows).max(1),
        max_silence_us: match g.max_silence_s {
            Some(v) => Some(seconds(Some(v), 0.0, "gates.max_silence_s")?),
            None => None,
        },
        no_restarts: !g.allow_restarts,
        max_errors: g.max_errors,
        max_rss_growth_bytes: match g.max_rss_growth_mb {
            Some(mb) if mb.is_finite() && mb >= 0.0 => Some((mb * 1e6) as u64),
            Some(mb) => {
                return Err(unprocessable(format!(
                    "`gates.max_rss_growth_mb` must be 0 or more, got {mb}"
                )))
            }
            None => None,
        },
    })
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandRequest {
    #[serde(default)]
    by: Option<String>,
    #[serde(default)]
    reason: Option<String>,
}

fn unprocessable(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, message)
}

fn seconds(v: Option<f64>, default: f64, field: &str) -> Result<i64, ApiError> {
    let v = v.unwrap_or(default);
    if !(v.is_finite() && (0.0..=30.0 * 86_400.0).contains(&v)) {
        return Err(unprocessable(format!(
            "`{field}` must be seconds from 0 to 30 days, got {v}"
        )));
    }
    Ok((v * 1e6) as i64)
}

/// `max_failures` as a share of `devices`.
fn failure_ratio(v: Option<&Value>, devices: usize) -> Result<f64, ApiError> {
    let bad = || {
        unprocessable(format!(
            "`max_failures` must be a count of devices (e.g. 2) or a percentage (e.g. \"10%\"), got {}",
            v.map_or("?".into(), Value::to_string)
        ))
    };
    match v {
        None => Ok(0.0),
        Some(Value::Number(n)) => {
            let n = n.as_u64().ok_or_else(bad)?;
            // floor(ratio x devices) must be n: a hair above n/devices.
            Ok(if devices == 0 {
                0.0
            } else {
                (n as f64 + 0.5) / devices as f64
            })
        }
        Some(Value::String(s)) => {
            let p: f64 = s
                .trim()
                .strip_suffix('%')
                .and_then(|p| p.trim().parse().ok())
                .ok_or_else(bad)?;
            if !(0.0..=100.0).contains(&p) {
                return Err(bad());
            }
            Ok(p / 100.0)
        }
        Some(_) => Err(bad()),
    }
}

fn drive_error(e: DriveError) -> Response {
    let status = match e {
        DriveError::NotFound(_) => StatusCode::NOT_FOUND,
        DriveError::Refused(_) => StatusCode::CONFLICT,
        DriveError::Io { .. } => StatusCode::INTERNAL_SERVER_ERROR,
    };
    ApiError::new(status, e.to_string()).into_response()
}

/// The rollout with a summary: wave k of n, devices per phase.
pub fn view(r: &Rollout) -> Value {
    let mut phases: BTreeMap<String, usize> = BTreeMap::new();
    for d in &r.devices {
        *phases.entry(phase_name(d.phase)).or_default() += 1;
    }
    let waves: Vec<Value> = (0..r.waves.len())
        .map(|w| {
            let mut counts: BTreeMap<String, usize> = BTreeMap::new();
            for d in r.wave_devices(w) {
                *counts.entry(phase_name(d.phase)).or_default() += 1;
            }
            json!({"wave": w + 1, "devices": r.wave_devices(w).len(), "phases": counts})
        })
        .collect();
    let mut v = serde_json::to_value(r).expect("a rollout serialises");
    v["summary"] = json!({
        "wave": (r.wave + 1).min(r.waves.len()),
        "waves": r.waves.len(),
        "devices": r.devices.len(),
        "phases": phases,
        "per_wave": waves,
    });
    v
}

fn phase_name(p: DevicePhase) -> String {
    serde_json::to_value(p)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

pub async fn start(
    State(s): State<Arc<HubState>>,
    caller: Option<axum::Extension<crate::api_auth::Caller>>,
    parsed: Result<Json<StartRequest>, JsonRejection>,
) -> Response {
    let b = match parsed {
        Ok(Json(b)) => b,
        Err(e) => {
            return ApiError::new(e.status(), format!("bad request body: {}", e.body_text()))
                .into_response()
        }
    };
    let prepared = (|| {
        let devices = select(&s, &b.devices, &b.tags)?;
        let mut resolved = resolve(&s, BTreeMap::from([(b.stage.clone(), Some(b.target))]))?;
        let target = resolved
            .remove(&b.stage)
            .flatten()
            .ok_or_else(|| unprocessable("`target` names nothing"))?;
        let waves = waves::parse(b.waves.as_deref().unwrap_or(DEFAULT_WAVES))
            .map_err(|e| unprocessable(e.to_string()))?;
        let policy = Policy {
            soak_us: seconds(b.soak_s, DEFAULT_SOAK_S, "soak_s")?,
            device_timeout_us: match seconds(
                b.device_timeout_s,
                DEFAULT_TIMEOUT_S,
                "device_timeout_s",
            )? {
                t if t >= 1_000_000 => t,
                _ => return Err(unprocessable(
                    "`device_timeout_s` must be at least 1 s: a device needs time to make progress",
                )),
            },
            max_failure_ratio: failure_ratio(b.max_failures.as_ref(), devices.len())?,
            gates: gates(b.gates)?,
            shadow: shadow_gate(b.shadow, &target)?,
        };
        Ok::<_, ApiError>(Start {
            stage: b.stage.clone(),
            target,
            devices,
            waves,
            policy,
            by: crate::api_auth::caller(caller.clone()).by(b.by.clone()),
        })
    })();
    let start = match prepared {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let now = conveyor_shared::time::now_us();
    let by = start.by.clone();
    match driver::start(&s, start, now) {
        Ok(r) => {
            s.audit.record(crate::audit::AuditEntry {
                at_us: now,
                by,
                action: "rollout.start".into(),
                target: format!("rollout {}", r.id),
                detail: format!(
                    "stage {} to {} on {} devices in waves {:?}",
                    r.stage,
                    crate::ota::history::target_text(&r.target),
                    r.devices.len(),
                    r.waves
                ),
            });
            (StatusCode::CREATED, Json(view(&r))).into_response()
        }
        Err(e) => drive_error(e),
    }
}

pub async fn list(State(s): State<Arc<HubState>>) -> Json<Value> {
    let store = s.ota.rollouts();
    let all: Vec<Value> = store
        .rollouts
        .values()
        .rev()
        .map(|r| {
            let mut v = view(r);
            // The list is a summary: devices and steps are in the rollout's own view.
            if let Some(o) = v.as_object_mut() {
                o.remove("devices");
                o.remove("log");
            }
            v
        })
        .collect();
    Json(json!({ "rollouts": all }))
}

pub async fn show(State(s): State<Arc<HubState>>, Path(id): Path<u64>) -> Response {
    let mut v = match s.ota.rollouts().rollouts.get(&id) {
        Some(r) => view(r),
        None => return drive_error(DriveError::NotFound(id)),
    };
    let figures = s.ota.figures().get(id).cloned().unwrap_or_default();
    v["figures"] = json!(figures);
    Json(v).into_response()
}

pub async fn command(
    State(s): State<Arc<HubState>>,
    caller: Option<axum::Extension<crate::api_auth::Caller>>,
    Path((id, verb)): Path<(u64, String)>,
    body: axum::body::Bytes,
) -> Response {
    // An empty body is a command without `by` or `reason`; a body that
    // is not one is refused, not ignored.
    let b: CommandRequest = if body.iter().all(u8::is_ascii_whitespace) {
        CommandRequest::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(b) => b,
            Err(e) => {
                return ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format!("bad request body: {e} (give {{\"by\", \"reason\"}} or nothing)"),
                )
                .into_response()
            }
        }
    };
    let by = crate::api_auth::caller(caller).by(b.by);
    let reason = b.reason.unwrap_or_else(|| format!("{verb} by {by}"));
    let audit = crate::audit::AuditEntry {
        at_us: conveyor_shared::time::now_us(),
        by: by.clone(),
        action: format!("rollout.{verb}"),
        target: format!("rollout {id}"),
        detail: reason.clone(),
    };
    let event = match verb.as_str() {
        "pause" => Event::Pause { by },
        "resume" => Event::Resume { by },
        "abort" => Event::Abort { by, reason },
        "rollback" => Event::Rollback { by, reason },
        other => {
            return ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no rollout command {other:?}: pause, resume, abort or rollback"),
            )
            .into_response()
        }
    };
    match driver::command(&s, id, event, audit.at_us) {
        Ok(r) => {
            s.audit.record(audit);
            Json(view(&r)).into_response()
        }
        Err(e) => drive_error(e),
    }
}
