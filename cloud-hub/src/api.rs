//! The HTTP API (axum).
//!
//! | route | what |
//! |---|---|
//! | `GET /healthz` | readiness: 200 `{"status":"ok", "store": {...}, ...}`; 503 `{"status":"degraded", "store": {...}}` while the store cannot write (the hub stays up, acknowledges nothing it could not store, and recovers by itself once the storage takes writes: take it out of a load balancer's rotation, do not restart it) |
//! | `GET /metrics` | Prometheus text format |
//! | `GET /api/v1/stats` | hub-wide counters, latency quantiles and the store's health (`store`: healthy, error, since_us, write_failures, recoveries, free_bytes) |
//! | `GET /api/v1/devices` | every device the hub knows |
//! | `GET /api/v1/devices/{id}` | one device |
//! | `GET /api/v1/devices/{id}/heartbeats` | the device's heartbeat counters over the last 10 minutes (one point per 5 s, memory only: `trend.rs`) |
//! | `GET /api/v1/audit?limit=N` | who changed what the fleet runs, newest last (`audit.rs`, `api_audit.rs`) |
//! | `GET /api/v1/devices/{id}/records?from=SEQ&limit=N` | records in seq order: with `from`, the first N with seq >= SEQ (page on with the last seq + 1); without, the latest N; a prediction record carries its final `result` |
//! | `GET /api/v1/devices/{id}/results?from=SEQ&limit=N` | final predictions (after the cascade), paged like records |
//! | `GET /api/v1/results/stream[?device=ID]` | live final predictions, Server-Sent Events (`event: results`, data: `{"device_id", "results": [...]}`) |
//! | `GET /api/v1/models` | the hub's models: batching limits, counters, latency |
//! | `POST /api/v1/models/{id}/infer` | classify one window: `{"window": [[v, ...], ...]}` (readings x channels, sensor units) |
//!
//! The OTA routes (keys, artifacts, desired states, agents' reports) are
//! listed in `api_artifacts.rs` and `api_desired.rs`, the rollouts' in
//! `api_rollouts.rs`, the fleet's (the dashboard's data) in `api_fleet.rs`;
//! `GET /` is the dashboard (`dashboard.rs`); devices and tokens (admin)
//! are in `api_identities.rs`.
//!
//! Every route but `/healthz`, `/metrics` and the dashboard's files asks
//! for an API token (`api_auth.rs`) unless `[http] auth = "none"`.
//!
//! Errors are JSON `{"error": "..."}` with a 4xx status (5xx when the hub
//! itself fails; 503 when a model is overloaded).

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use conveyor_shared::time::now_us;
use conveyor_shared::DeviceId;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::ingest::HubState;
use crate::metrics::LatencySummary;
use crate::registry::DeviceView;
use crate::store::StoreHealth;

/// Most records one request returns.
pub const MAX_RECORDS_PER_REQUEST: usize = 10_000;

pub fn router(state: Arc<HubState>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/api/v1/stats", get(stats))
        .route("/api/v1/fleet", get(crate::api_fleet::overview))
        .route("/api/v1/fleet/devices", get(crate::api_fleet::devices))
        .route("/api/v1/fleet/stream", get(crate::api_fleet::stream))
        .route("/api/v1/devices", get(devices))
        .route("/api/v1/devices/{id}", get(device))
        .route("/api/v1/devices/{id}/heartbeats", get(heartbeats))
        .route("/api/v1/devices/{id}/records", get(records))
        .route("/api/v1/devices/{id}/results", get(results))
        .route("/api/v1/results/stream", get(crate::api_results::stream))
        .route("/api/v1/models", get(crate::api_results::models))
        .route("/api/v1/models/{id}/infer", post(crate::api_results::infer))
        .route("/api/v1/keys", get(crate::api_artifacts::keys))
        .route(
            "/api/v1/artifacts",
            get(crate::api_artifacts::list)
                .post(crate::api_artifacts::push)
                // The files plus the form's own bytes; the handler counts
                // the files' bytes itself and answers 413 with the bound.
                .layer(axum::extract::DefaultBodyLimit::max(
                    usize::try_from(state.ota.max_artifact_bytes)
                        .unwrap_or(usize::MAX)
                        .saturating_add(1 << 20),
                )),
        )
        .route(
            "/api/v1/artifacts/{reference}",
            get(crate::api_artifacts::show),
        )
        .route(
            "/api/v1/artifacts/{id}/manifest",
            get(crate::api_artifacts::manifest),
        )
        .route(
            "/api/v1/artifacts/{id}/files/{name}",
            get(crate::api_artifacts::file),
        )
        .route(
            "/api/v1/devices/{id}/desired",
            get(crate::api_desired::get_desired).put(crate::api_desired::put_desired),
        )
        .route(
            "/api/v1/devices/{id}/state",
            get(crate::api_desired::get_state),
        )
        .route(
            "/api/v1/devices/{id}/history",
            get(crate::api_desired::get_history),
        )
        .route("/api/v1/deploy", post(crate::api_desired::deploy))
        .route("/api/v1/audit", get(crate::api_audit::list))
        .route(
            "/api/v1/devices/{id}/tags",
            get(crate::api_tags::get_tags).put(crate::api_tags::put_tags),
        )
        .route(
            "/api/v1/rollouts",
            get(crate::api_rollouts::list).post(crate::api_rollouts::start),
        )
        .route("/api/v1/rollouts/{id}", get(crate::api_rollouts::show))
        .route(
            "/api/v1/rollouts/{id}/{verb}",
            post(crate::api_rollouts::command),
        )
        .route("/api/v1/identities", get(crate::api_identities::list))
        .route(
            "/api/v1/identities/devices",
            post(crate::api_identities::add_device),
        )
        .route(
            "/api/v1/identities/devices/{id}/revoke",
            post(crate::api_identities::revoke_device),
        )
        .route(
            "/api/v1/identities/tokens",
            post(crate::api_identities::create_token),
        )
        .route(
            "/api/v1/identities/tokens/{name}/revoke",
            post(crate::api_identities::revoke_token),
        )
        .route(
            "/api/v1/session",
            post(crate::api_auth::session).delete(crate::api_auth::end_session),
        )
        .merge(crate::dashboard::routes())
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::api_auth::check,
        ))
        .with_state(state)
}

pub(crate) fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({"error": message.into()}))).into_response()
}

/// An error answer not yet rendered (small, for `Result`s inside handlers).
#[derive(Debug)]
pub(crate) struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        error(self.status, self.message)
    }
}

async fn healthz(State(s): State<Arc<HubState>>) -> Response {
    let store = s.store.health();
    let (code, status) = if store.healthy {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "degraded")
    };
    let body = json!({
        "status": status,
        "broker": s.broker_mode,
        "mqtt": s.device_url,
        "store": store,
    });
    (code, Json(body)).into_response()
}

async fn metrics(State(s): State<Arc<HubState>>) -> Response {
    s.metrics.observe_store(&s.store.health());
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.metrics.render(),
    )
        .into_response()
}

/// `GET /api/v1/stats`.
#[derive(Debug, Serialize, Deserialize)]
pub struct Stats {
    pub records_received: u64,
    pub records_duplicate: u64,
    pub batches_received: u64,
    pub payloads_rejected: u64,
    pub devices_online: usize,
    pub devices_known: usize,
    /// Online devices whose last heartbeat reports a storage fault.
    #[serde(default)]
    pub devices_storage_fault: usize,
    /// Online devices whose log's disk is full.
    #[serde(default)]
    pub devices_log_disk_full: usize,
    pub ingest_records_per_sec: f64,
    pub latency: LatencySummary,
    pub store: StoreHealth,
}

pub fn stats_of(s: &HubState) -> Stats {
    let now = now_us();
    let (online, known, rate, (faulted, full)) = {
        let r = s.registry();
        (r.online(), r.known(), r.total_rate(now), r.storage_faults())
    };
    Stats {
        records_received: s.metrics.records_received.get(),
        records_duplicate: s.metrics.records_duplicate.get(),
        batches_received: s.metrics.batches_received.get(),
        payloads_rejected: s.metrics.rejected_total(),
        devices_online: online,
        devices_known: known,
        devices_storage_fault: faulted,
        devices_log_disk_full: full,
        ingest_records_per_sec: rate,
        latency: s.metrics.latency(),
        store: s.store.health(),
    }
}

async fn stats(State(s): State<Arc<HubState>>) -> Json<Stats> {
    Json(stats_of(&s))
}

/// Fills in a device view's OTA standing.
fn with_ota(s: &HubState, mut view: DeviceView) -> DeviceView {
    if let Some(d) = s.ota.devices().devices.get(&view.entry.device_id) {
        view.ota = d.view();
    }
    view
}

async fn devices(State(s): State<Arc<HubState>>) -> Response {
    let list = s.registry().list(now_us());
    let list: Vec<_> = list.into_iter().map(|v| with_ota(&s, v)).collect();
    Json(json!({ "devices": list })).into_response()
}

async fn device(State(s): State<Arc<HubState>>, Path(id): Path<String>) -> Response {
    let view = s.registry().get(&id, now_us());
    match view {
        Some(view) => Json(with_ota(&s, view)).into_response(),
        None => error(StatusCode::NOT_FOUND, format!("no device {id:?}")),
    }
}

async fn heartbeats(State(s): State<Arc<HubState>>, Path(id): Path<String>) -> Response {
    let r = s.registry();
    if r.get(&id, now_us()).is_none() {
        return error(StatusCode::NOT_FOUND, format!("no device {id:?}"));
    }
    Json(json!({"device_id": id, "every_s": crate::trend::Trend::EVERY_US / 1_000_000, "points": r.trend(&id)}))
        .into_response()
}

#[derive(Debug, Deserialize)]
struct RecordsQuery {
    from: Option<u64>,
    limit: Option<usize>,
}

async fn records(
    State(s): State<Arc<HubState>>,
    Path(id): Path<String>,
    Query(q): Query<RecordsQuery>,
) -> Response {
    paged(id, q, "records", move |id, from, limit| match from {
        Some(from) => s.store.records_from(id, from, limit),
        None => s.store.latest_records(id, limit),
    })
    .await
}

async fn results(
    State(s): State<Arc<HubState>>,
    Path(id): Path<String>,
    Query(q): Query<RecordsQuery>,
) -> Response {
    paged(id, q, "results", move |id, from, limit| match from {
        Some(from) => s.store.results_from(id, from, limit),
        None => s.store.latest_results(id, limit),
    })
    .await
}

/// A page of a device's records or results, read off the async threads.
async fn paged<T: Serialize + Send + 'static>(
    id: String,
    q: RecordsQuery,
    what: &'static str,
    read: impl FnOnce(&str, Option<u64>, usize) -> Result<Vec<T>, crate::store::StoreError>
        + Send
        + 'static,
) -> Response {
    if let Err(e) = DeviceId::new(id.clone()) {
        return error(StatusCode::BAD_REQUEST, e.to_string());
    }
    let limit = q.limit.unwrap_or(100);
    if limit == 0 || limit > MAX_RECORDS_PER_REQUEST {
        return error(
            StatusCode::BAD_REQUEST,
            format!("limit must be between 1 and {MAX_RECORDS_PER_REQUEST}, got {limit}"),
        );
    }
    let result =
        tokio::task::spawn_blocking(move || read(&id, q.from, limit).map(|r| (id, r))).await;
    match result {
        Ok(Ok((id, items))) => Json(json!({"device_id": id, what: items})).into_response(),
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}
