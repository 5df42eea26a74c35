//! Devices and API tokens over HTTP, for an admin token (the CLI does the
//! same on the hub's store: `identity_cli.rs`; both go through
//! `identity::change`).
//!
//! | route | what |
//! |---|---|
//! | `GET /api/v1/identities` | `{"devices": [{"device", "created_us", "revoked_us"}], "tokens": [{"name", "role", "created_us", "revoked_us"}]}` (never a secret or a hash) |
//! | `POST /api/v1/identities/devices` | `{"device", "rotate": false}`: 201 `{"device", "secret"}`, the secret shown this once; 409 if it exists (rotate for a new secret) |
//! | `POST /api/v1/identities/devices/{id}/revoke` | refused from its next connect, its live connections cut now |
//! | `POST /api/v1/identities/tokens` | `{"name", "role"}`: 201 `{"name", "role", "token"}`, shown this once |
//! | `POST /api/v1/identities/tokens/{name}/revoke` | refused from now on |

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use conveyor_shared::DeviceId;
use serde::Deserialize;
use serde_json::json;

use crate::api::error;
use crate::api_auth::Caller;
use crate::audit::AuditEntry;
use crate::identity::change::{self, ChangeError};
use crate::identity::Role;
use crate::ingest::HubState;

fn path(s: &HubState) -> std::path::PathBuf {
    s.identities.path().to_path_buf()
}

fn failed(e: ChangeError) -> Response {
    let code = match e {
        ChangeError::DeviceExists(_) | ChangeError::TokenExists(_) => StatusCode::CONFLICT,
        ChangeError::NoDevice(_) | ChangeError::NoToken(_) => StatusCode::NOT_FOUND,
        ChangeError::BadTokenName(_) => StatusCode::UNPROCESSABLE_ENTITY,
        ChangeError::File(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error(code, e.to_string())
}

/// Makes the change visible at once (not at the next second's tick), and
/// records it.
fn done(s: &HubState, caller: &Caller, action: &str, target: &str, detail: String) {
    if let Err(e) = s.identities.read_again() {
        tracing::error!("cannot read the identities just written: {e}");
    }
    s.audit.record(AuditEntry {
        at_us: conveyor_shared::time::now_us(),
        by: caller.by(None),
        action: action.into(),
        target: target.into(),
        detail,
    });
}

pub async fn list(State(s): State<Arc<HubState>>) -> Response {
    // What the hub goes by now (read again within a second of a change).
    let ids = s.identities.current();
    let devices: Vec<_> = ids
        .devices
        .iter()
        .map(
            |(id, d)| json!({"device": id, "created_us": d.created_us, "revoked_us": d.revoked_us}),
        )
        .collect();
    let tokens: Vec<_> = ids
        .tokens
        .iter()
        .map(|(name, t)| json!({"name": name, "role": t.role, "created_us": t.created_us, "revoked_us": t.revoked_us}))
        .collect();
    Json(json!({"devices": devices, "tokens": tokens})).into_response()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddDevice {
    device: String,
    #[serde(default)]
    rotate: bool,
}

pub async fn add_device(
    State(s): State<Arc<HubState>>,
    caller: Option<Extension<Caller>>,
    body: Result<Json<AddDevice>, JsonRejection>,
) -> Response {
    let b = match body {
        Ok(Json(b)) => b,
        Err(e) => {
            return error(
                e.status(),
                format!(
                    "bad request body: {} (give {{\"device\", \"rotate\"}})",
                    e.body_text()
                ),
            )
        }
    };
    let device = match DeviceId::new(b.device.clone()) {
        Ok(d) => d,
        Err(e) => {
            return error(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("device {:?}: {e}", b.device),
            )
        }
    };
    match change::add_device(&path(&s), &device, b.rotate) {
        Ok(secret) => {
            let what = if b.rotate {
                "given a new secret"
            } else {
                "added"
            };
            done(
                &s,
                &crate::api_auth::caller(caller),
                "device.add",
                device.as_str(),
                format!("device {device} {what}"),
            );
            (
                StatusCode::CREATED,
                Json(json!({"device": device, "secret": secret})),
            )
                .into_response()
        }
        Err(e) => failed(e),
    }
}

pub async fn revoke_device(
    State(s): State<Arc<HubState>>,
    caller: Option<Extension<Caller>>,
    Path(id): Path<String>,
) -> Response {
    match change::revoke_device(&path(&s), &id) {
        Ok(()) => {
            done(
                &s,
                &crate::api_auth::caller(caller),
                "device.revoke",
                &id,
                format!("device {id} revoked"),
            );
            let cut = s.gate.as_ref().is_some_and(|g| g.cut_off(&id));
            Json(json!({"device": id, "revoked": true, "was_connected": cut})).into_response()
        }
        Err(e) => failed(e),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    name: String,
    role: Role,
}

pub async fn create_token(
    State(s): State<Arc<HubState>>,
    caller: Option<Extension<Caller>>,
    body: Result<Json<CreateToken>, JsonRejection>,
) -> Response {
    let b = match body {
        Ok(Json(b)) => b,
        Err(e) => return error(e.status(), format!("bad request body: {} (give {{\"name\", \"role\": \"viewer\"|\"operator\"|\"admin\"}})", e.body_text())),
    };
    match change::create_token(&path(&s), &b.name, b.role) {
        Ok(token) => {
            done(
                &s,
                &crate::api_auth::caller(caller),
                "token.create",
                &b.name,
                format!("token {} ({}) made", b.name, b.role),
            );
            (
                StatusCode::CREATED,
                Json(json!({"name": b.name, "role": b.role, "token": token})),
            )
                .into_response()
        }
        Err(e) => failed(e),
    }
}

pub async fn revoke_token(
    State(s): State<Arc<HubState>>,
    caller: Option<Extension<Caller>>,
    Path(name): Path<String>,
) -> Response {
    match change::revoke_token(&path(&s), &name) {
        Ok(()) => {
            done(
                &s,
                &crate::api_auth::caller(caller),
                "token.revoke",
                &name,
                format!("token {name} revoked"),
            );
            Json(json!({"name": name, "revoked": true})).into_response()
        }
        Err(e) => failed(e),
    }
}
