//! The API's inference routes: the hub's models, one-off inference, and
//! the live stream of final predictions (Server-Sent Events).
//!
//! A subscriber that falls more than the broadcast buffer behind gets an
//! `event: lagged` with how many notifications it missed (the results
//! themselves stay in the store: `GET /api/v1/devices/{id}/results`)
//! and the stream goes on.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::stream::{self, Stream};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;

use crate::api::error;
use crate::inference::InferError;
use crate::ingest::HubState;

pub async fn models(State(s): State<Arc<HubState>>) -> Response {
    Json(json!({
        "device": s.inference.device(),
        "models": s.inference.views(),
    }))
    .into_response()
}

/// `POST /api/v1/models/{id}/infer`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InferRequest {
    /// Readings x channels, in sensor units.
    pub window: Vec<Vec<f32>>,
}

pub async fn infer(
    State(s): State<Arc<HubState>>,
    Path(model): Path<String>,
    body: Result<Json<InferRequest>, JsonRejection>,
) -> Response {
    let Json(req) = match body {
        Ok(b) => b,
        Err(e) => {
            s.inference.metrics().request(
                if s.inference.model(&model).is_some() {
                    &model
                } else {
                    "unknown"
                },
                "wrong_shape",
            );
            return error(
                StatusCode::BAD_REQUEST,
                format!("invalid request body: {}", e.body_text()),
            );
        }
    };
    let channels = req.window.first().map_or(0, Vec::len);
    if let Some(i) = req.window.iter().position(|r| r.len() != channels) {
        return error(
            StatusCode::BAD_REQUEST,
            format!(
                "window[{i}] has {} values, window[0] has {channels}: every reading needs the same channels",
                req.window[i].len()
            ),
        );
    }
    let flat: Vec<f32> = req.window.into_iter().flatten().collect();
    match s.inference.infer(&model, channels, &flat).await {
        Ok(p) => Json(p).into_response(),
        Err(e) => {
            let status = match e {
                InferError::UnknownModel { .. } => StatusCode::NOT_FOUND,
                InferError::WrongShape { .. } | InferError::BadValues { .. } => {
                    StatusCode::BAD_REQUEST
                }
                InferError::Overloaded { .. } => StatusCode::SERVICE_UNAVAILABLE,
                InferError::Failed { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            };
            error(status, e.to_string())
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct StreamQuery {
    /// Only this device's results.
    device: Option<String>,
}

pub async fn stream(
    State(s): State<Arc<HubState>>,
    Query(q): Query<StreamQuery>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let rx = s.results.subscribe();
    let events = stream::unfold((rx, q.device), |(mut rx, device)| async move {
        loop {
            let event = match rx.recv().await {
                Ok(batch) => {
                    if device.as_deref().is_some_and(|d| d != batch.device_id) {
                        continue;
                    }
                    Event::default()
                        .event("results")
                        .json_data(&*batch)
                        .unwrap_or_else(|e| Event::default().event("error").data(e.to_string()))
                }
                Err(RecvError::Lagged(n)) => Event::default()
                    .event("lagged")
                    .data(json!({ "missed": n }).to_string()),
                Err(RecvError::Closed) => return None,
            };
            return Some((Ok(event), (rx, device)));
        }
    });
    Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}
