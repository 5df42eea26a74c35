//! `type = "http"`: accepts JSON readings POSTed to `http://<listen><path>`.
//!
//! The body is one reading object or an array of them. Good readings are
//! accepted even when others in the same request are not; the response
//! says which were refused and why:
//!
//! ```text
//! 200 {"accepted": 2, "rejected": []}
//! 400 {"accepted": 0, "rejected": [{"index": 0, "error": "field \"t\" is missing"}]}
//! ```

use std::net::SocketAddr;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use conveyor_shared::time::now_us;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::watch;

use super::json_reading::{JsonReadingSpec, ReadingError};
use super::{Source, SourceContext, SourceError, SourceFuture, SourceOutput};
use crate::config::ConfigError;

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSourceConfig {
    pub name: String,
    /// Stream name of the records; defaults to `name`.
    pub stream: Option<String>,
    /// Address to listen on, e.g. `127.0.0.1:8181`.
    pub listen: SocketAddr,
    /// URL path readings are POSTed to.
    #[serde(default = "default_path")]
    pub path: String,
    /// JSON fields to read, in order (may be empty with `keep_payload`).
    #[serde(default)]
    pub fields: Vec<String>,
    /// JSON field holding the reading's time (ms since the epoch), if any.
    pub timestamp_field: Option<String>,
    /// Keep the whole JSON document as the record's payload (e.g. a
    /// point-of-sale receipt for a redaction transform).
    #[serde(default)]
    pub keep_payload: bool,
}

fn default_path() -> String {
    "/readings".into()
}

impl HttpSourceConfig {
    /// An HTTP source `name` on `listen` reading `fields`, every other
    /// setting at its default.
    pub fn new(name: &str, listen: SocketAddr, fields: &[&str]) -> Self {
        HttpSourceConfig {
            name: name.into(),
            stream: None,
            listen,
            path: default_path(),
            fields: fields.iter().map(|f| f.to_string()).collect(),
            timestamp_field: None,
            keep_payload: false,
        }
    }

    fn spec(&self) -> JsonReadingSpec<'_> {
        JsonReadingSpec {
            fields: &self.fields,
            timestamp_field: self.timestamp_field.as_deref(),
            keep_payload: self.keep_payload,
        }
    }

    pub(super) fn validate(&self, field: &str, found: &mut Vec<ConfigError>) {
        if !self.path.starts_with('/') {
            found.push(ConfigError::invalid(
                format!("{field}.path"),
                format!("must start with '/', got {:?}", self.path),
            ));
        }
        self.spec().check(field, found);
    }

    pub(super) fn build(
        &self,
        _field: &str,
        _ctx: &SourceContext,
    ) -> Result<Box<dyn Source>, ConfigError> {
        Ok(Box::new(HttpSource {
            config: self.clone(),
        }))
    }
}

struct HttpSource {
    config: HttpSourceConfig,
}

#[derive(Clone)]
struct Shared {
    config: std::sync::Arc<HttpSourceConfig>,
    out: SourceOutput,
}

async fn ingest(State(s): State<Shared>, body: Bytes) -> (StatusCode, Json<Value>) {
    let spec = s.config.spec();
    let parsed: Result<Value, _> = serde_json::from_slice(&body);
    let items = match parsed {
        Ok(Value::Array(items)) => items,
        Ok(v) => vec![v],
        Err(e) => {
            let err = ReadingError::NotJson(e.to_string());
            s.out.reject(&err);
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({"accepted": 0, "rejected": [{"index": 0, "error": err.to_string()}]})),
            );
        }
    };
    let mut accepted = 0;
    let mut rejected = Vec::new();
    for (index, item) in items.iter().enumerate() {
        match spec.parse(item) {
            Ok(r) => {
                let ts = r.ts_us.unwrap_or_else(now_us);
                if s.out
                    .emit(ts, r.values, String::new(), r.payload)
                    .await
                    .is_err()
                {
                    return (
                        StatusCode::SERVICE_UNAVAILABLE,
                        Json(json!({"accepted": accepted, "error": "agent is shutting down"})),
                    );
                }
                accepted += 1;
            }
            Err(e) => {
                s.out.reject(&e);
                rejected.push(json!({"index": index, "error": e.to_string()}));
            }
        }
    }
    let status = if accepted == 0 && !rejected.is_empty() {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    (
        status,
        Json(json!({"accepted": accepted, "rejected": rejected})),
    )
}

impl Source for HttpSource {
    fn name(&self) -> &str {
        &self.config.name
    }

    fn run(
        self: Box<Self>,
        out: SourceOutput,
        mut shutdown: watch::Receiver<bool>,
    ) -> SourceFuture {
        Box::pin(async move {
            let c = self.config;
            let fail = |message: String| SourceError {
                source_name: c.name.clone(),
                message,
            };
            let listener = tokio::net::TcpListener::bind(c.listen)
                .await
                .map_err(|e| fail(format!("cannot listen on {}: {e}", c.listen)))?;
            let local = listener.local_addr().map_err(|e| fail(e.to_string()))?;
            tracing::info!(source = %c.name, "accepting readings at http://{local}{}", c.path);
            let app = Router::new()
                .route(&c.path, post(ingest))
                .with_state(Shared {
                    config: std::sync::Arc::new(c.clone()),
                    out,
                });
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = shutdown.wait_for(|stop| *stop).await;
                })
                .await
                .map_err(|e| fail(e.to_string()))
        })
    }
}
