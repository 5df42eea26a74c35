//! The audit log over HTTP.
//!
//! | route | what |
//! |---|---|
//! | `GET /api/v1/audit?limit=N` | `{"entries": [{"at_us", "by", "action", "target", "detail"}, ...]}`, the newest N (default 200, at most 2000), oldest first (the whole log is `<store>/audit.jsonl`) |

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use crate::api::error;
use crate::ingest::HubState;

const MAX_ENTRIES: usize = 2000;

#[derive(Debug, Deserialize)]
pub struct AuditQuery {
    limit: Option<usize>,
}

pub async fn list(State(s): State<Arc<HubState>>, Query(q): Query<AuditQuery>) -> Response {
    let limit = q.limit.unwrap_or(200).min(MAX_ENTRIES);
    let read = tokio::task::spawn_blocking(move || s.audit.last(limit)).await;
    match read {
        Ok(Ok(entries)) => Json(json!({ "entries": entries })).into_response(),
        Ok(Err(e)) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot read the audit log: {e}"),
        ),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}
