//! The fleet dashboard, served by the hub itself at `/`.
//!
//! The page is built ahead of time (`cloud-hub/dashboard/`: plain ES
//! modules and uPlot, bundled by esbuild into `dashboard/dist/`) and the
//! built files are compiled into the binary, so a hub needs nothing else
//! to show it, also offline. It uses only the public HTTP API and its
//! live streams; the Content-Security-Policy lets it talk to this hub and
//! nothing else.

use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

const INDEX: &str = include_str!("../dashboard/dist/index.html");
const APP_JS: &str = include_str!("../dashboard/dist/app.js");
const APP_CSS: &str = include_str!("../dashboard/dist/app.css");

/// Only this hub: scripts, styles, data and connections.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
                   connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
                   frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

/// The routes: the page and its two assets.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", INDEX) }),
        )
        .route(
            "/dashboard/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }),
        )
        .route(
            "/dashboard/app.css",
            get(|| async { asset("text/css; charset=utf-8", APP_CSS) }),
        )
}
