//! The fleet routes the dashboard is built on (and anyone can script).
//!
//! | route | what |
//! |---|---|
//! | `GET /api/v1/fleet` | the overview: devices known and online, ingest rate, predictions, results and how many a hub model decided, drops, dead letters, versions per stage, alerts |
//! | `GET /api/v1/fleet/devices?q=&status=&tag=K=V&version=&offset=&limit=` | one page of device rows (default 50, at most 500), filtered on the hub, with `total` |
//! | `GET /api/v1/fleet/stream` | Server-Sent Events: `event: fleet` every second, data `{"overview", "stats"}` (the hub-wide `/api/v1/stats`) |

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use conveyor_shared::time::now_us;
use futures_util::stream::{self, Stream};
use serde::Deserialize;
use serde_json::json;

use crate::api::{error, stats_of};
use crate::fleet::{self, DeviceRow, Filter, Overview};
use crate::ingest::HubState;

/// Most rows one page holds.
pub const MAX_PAGE: usize = 500;

/// Every device's row, and (with `keep`) the views and reports the
/// overview needs. The registry's lock, then the OTA store's (each held
/// briefly, never both).
#[allow(clippy::type_complexity)]
fn gather(
    s: &HubState,
    now: i64,
    keep: bool,
) -> (
    Vec<(
        crate::registry::DeviceView,
        Option<conveyor_shared::ota::AgentState>,
    )>,
    Vec<DeviceRow>,
) {
    let views = s.registry().list(now);
    let ota = s.ota.devices();
    let mut devices = Vec::with_capacity(if keep { views.len() } else { 0 });
    let mut rows = Vec::with_capacity(views.len());
    for mut view in views {
        let entry = ota.devices.get(&view.entry.device_id);
        if let Some(e) = entry {
            view.ota = e.view();
        }
        let report = entry.and_then(|e| e.report());
        let tags = entry.map(|e| e.tags()).unwrap_or_default();
        rows.push(fleet::row(&view, report, tags));
        if keep {
            devices.push((view, report.cloned()));
        }
    }
    (devices, rows)
}

pub fn overview_of(s: &HubState) -> Overview {
    let now = now_us();
    let (devices, rows) = gather(s, now, true);
    let overloaded: Vec<(String, u64)> = s
        .inference
        .views()
        .into_iter()
        .map(|m| {
            let n = s.inference.metrics().requests(&m.id, "overloaded");
            (m.id, n)
        })
        .filter(|(_, n)| *n > 0)
        .collect();
    fleet::overview(&devices, &rows, &overloaded, now)
}

pub async fn overview(State(s): State<Arc<HubState>>) -> Json<Overview> {
    Json(overview_of(&s))
}

#[derive(Debug, Deserialize)]
pub struct PageQuery {
    #[serde(flatten)]
    filter: Filter,
    #[serde(default)]
    offset: Option<usize>,
    #[serde(default)]
    limit: Option<usize>,
}

pub async fn devices(State(s): State<Arc<HubState>>, Query(q): Query<PageQuery>) -> Response {
    let limit = q.limit.unwrap_or(50);
    if limit == 0 || limit > MAX_PAGE {
        return error(
            StatusCode::BAD_REQUEST,
            format!("limit must be between 1 and {MAX_PAGE}, got {limit}"),
        );
    }
    let offset = q.offset.unwrap_or(0);
    let (_, rows) = gather(&s, now_us(), false);
    match fleet::page(rows, &q.filter, offset, limit) {
        Ok((total, page)) => Json(json!({
            "total": total,
            "offset": offset,
            "limit": limit,
            "devices": page,
        }))
        .into_response(),
        Err(e) => error(StatusCode::BAD_REQUEST, e),
    }
}

pub async fn stream(
    State(s): State<Arc<HubState>>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let events = stream::unfold((s, true), |(s, first)| async move {
        if !first {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let data = json!({"overview": overview_of(&s), "stats": stats_of(&s)});
        let event = Event::default()
            .event("fleet")
            .json_data(&data)
            .unwrap_or_else(|e| Event::default().event("error").data(e.to_string()));
        Some((Ok(event), (s, false)))
    });
    Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}
