//! Device tags set on the hub: the groups deploys and rollouts select by,
//! beside the tags each agent reports from its config.
//!
//! | route | what |
//! |---|---|
//! | `GET /api/v1/devices/{id}/tags` | `{"device_id", "tags", "hub", "reported"}`: the tags in effect (the hub's over the agent's), and each source |
//! | `PUT /api/v1/devices/{id}/tags` | `{"tags": {"k": "v", "old": null}}`: sets or (null) removes hub tags, stored; the same answer as `GET` |

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use conveyor_shared::DeviceId;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::api::{error, ApiError};
use crate::ingest::HubState;
use crate::ota::devices::{DeviceOta, TagError};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TagRequest {
    tags: BTreeMap<String, Option<String>>,
}

fn view(id: &str, d: Option<&DeviceOta>) -> Value {
    json!({
        "device_id": id,
        "tags": d.map(DeviceOta::tags).unwrap_or_default(),
        "hub": d.map(|d| d.hub_tags.clone()).unwrap_or_default(),
        "reported": d.and_then(|d| d.report()).map(|r| r.tags.clone()).unwrap_or_default(),
    })
}

pub async fn get_tags(State(s): State<Arc<HubState>>, Path(id): Path<String>) -> Response {
    let store = s.ota.devices();
    Json(view(&id, store.devices.get(&id))).into_response()
}

pub async fn put_tags(
    State(s): State<Arc<HubState>>,
    caller: Option<axum::Extension<crate::api_auth::Caller>>,
    Path(id): Path<String>,
    parsed: Result<Json<TagRequest>, JsonRejection>,
) -> Response {
    let device = match DeviceId::new(id.clone()) {
        Ok(d) => d,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let body = match parsed {
        Ok(Json(b)) => b,
        Err(e) => {
            return ApiError::new(e.status(), format!("bad request body: {}", e.body_text()))
                .into_response()
        }
    };
    let mut store = s.ota.devices();
    match store.tag(&device, &body.tags) {
        Ok(tags) => {
            s.audit.record(crate::audit::AuditEntry {
                at_us: conveyor_shared::time::now_us(),
                by: crate::api_auth::caller(caller).by(None),
                action: "tags".into(),
                target: device.to_string(),
                detail: format!("tags now {tags:?}"),
            });
            Json(view(&id, store.devices.get(&id))).into_response()
        }
        Err(e @ (TagError::Bad(_) | TagError::TooMany(_))) => {
            error(StatusCode::UNPROCESSABLE_ENTITY, e.to_string())
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}
