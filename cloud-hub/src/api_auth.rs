//! Who may use the HTTP API (`[http] auth = "tokens"`, the default).
//!
//! A caller shows an API token (`cloud-hub token create`) as
//! `Authorization: Bearer <token>`, or the dashboard's session cookie
//! (`POST /api/v1/session` with the token sets it: HttpOnly,
//! SameSite=Strict, so another site cannot ride on it). A device may show
//! its own secret as a bearer token to read what OTA needs (the keys, an
//! artifact's manifest and files).
//!
//! | caller | may |
//! |---|---|
//! | nobody | `/healthz`, `/metrics`, the dashboard's page and assets, `POST /api/v1/session` |
//! | device | `GET /api/v1/keys`, `GET /api/v1/artifacts/{id}/manifest`, `.../files/{name}` |
//! | viewer | every `GET`, and `POST /api/v1/models/{id}/infer` |
//! | operator | also every other `POST`/`PUT` (push, deploy, desired, tags, rollouts) |
//! | admin | also devices and tokens (`/api/v1/identities...`, `api_identities.rs`; or the CLI on the hub's store) |
//!
//! 401 names what to send; 403 names the role needed. The caller's name
//! goes into the request (a [`Caller`]) for the audit log.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use crate::identity::config::HttpAuth;
use crate::identity::{secret, Role};
use crate::ingest::HubState;

pub const COOKIE: &str = "conveyor_token";

/// Who is calling, once checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// A token's name, `device:<id>`, or `anyone` (no auth).
    pub name: String,
    pub role: Option<Role>,
}

/// What a route needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    Nothing,
    /// A device's secret, or any token.
    DeviceOrViewer,
    Role(Role),
}

/// The need of `method path`, as plain data.
pub fn need(method: &Method, path: &str) -> Need {
    let open = matches!(path, "/healthz" | "/metrics" | "/" | "/api/v1/session")
        || path.starts_with("/dashboard/");
    if open {
        return Need::Nothing;
    }
    if path == "/api/v1/identities" || path.starts_with("/api/v1/identities/") {
        return Need::Role(Role::Admin);
    }
    let ota_read = path == "/api/v1/keys"
        || (path.starts_with("/api/v1/artifacts/")
            && (path.ends_with("/manifest") || path.contains("/files/")));
    if *method == Method::GET || *method == Method::HEAD {
        return if ota_read {
            Need::DeviceOrViewer
        } else {
            Need::Role(Role::Viewer)
        };
    }
    if *method == Method::POST && path.starts_with("/api/v1/models/") && path.ends_with("/infer") {
        return Need::Role(Role::Viewer);
    }
    Need::Role(Role::Operator)
}

/// The credential a request carries: a bearer token, else the cookie.
fn presented(headers: &HeaderMap) -> Option<String> {
    if let Some(v) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        return v.strip_prefix("Bearer ").map(|t| t.trim().to_string());
    }
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| {
            c.trim()
                .strip_prefix(&format!("{COOKIE}="))
                .map(str::to_string)
        })
}

fn refuse(status: StatusCode, message: String) -> Response {
    let mut r = (status, Json(json!({ "error": message }))).into_response();
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            "Bearer".parse().expect("a header value"),
        );
    }
    r
}

/// Who `credential` is: a token's name and role, or a device (looking
/// at the file once more if it is neither: perhaps made a moment ago).
fn identify(s: &HubState, credential: &str) -> Option<Caller> {
    identify_in(&s.identities.current(), credential).or_else(|| {
        if s.identities.read_again().unwrap_or(false) {
            identify_in(&s.identities.current(), credential)
        } else {
            None
        }
    })
}

fn identify_in(ids: &crate::identity::Identities, credential: &str) -> Option<Caller> {
    let hash = secret::hash(credential);
    if let Some((name, role)) = ids.token_by_hash(&hash) {
        return Some(Caller {
            name: name.to_string(),
            role: Some(role),
        });
    }
    ids.device_by_hash(&hash).map(|id| Caller {
        name: format!("device:{id}"),
        role: None,
    })
}

pub async fn check(State(s): State<Arc<HubState>>, mut req: Request, next: Next) -> Response {
    if s.http_auth == HttpAuth::None {
        req.extensions_mut().insert(Caller {
            name: "anyone".into(),
            role: Some(Role::Admin),
        });
        return next.run(req).await;
    }
    let need = need(req.method(), req.uri().path());
    if need == Need::Nothing {
        return next.run(req).await;
    }
    let what = format!("{} {}", req.method(), req.uri().path());
    let Some(credential) = presented(req.headers()) else {
        s.metrics.api_refused("no_token");
        return refuse(
            StatusCode::UNAUTHORIZED,
            format!("{what} needs an API token: send `Authorization: Bearer <token>` (make one with `cloud-hub token create --name NAME --role viewer|operator|admin`)"),
        );
    };
    let Some(caller) = identify(&s, &credential) else {
        s.metrics.api_refused("bad_token");
        tracing::warn!(request = %what, "refused an API call: unknown or revoked token");
        return refuse(
            StatusCode::UNAUTHORIZED,
            format!("{what}: the token is unknown or revoked"),
        );
    };
    let allowed = match (need, caller.role) {
        (Need::Nothing, _) => true,
        (Need::DeviceOrViewer, _) => true,
        (Need::Role(want), Some(have)) => have >= want,
        (Need::Role(_), None) => false,
    };
    if !allowed {
        s.metrics.api_refused("forbidden");
        let want = match need {
            Need::Role(r) => r.to_string(),
            _ => "a token".into(),
        };
        let have = caller
            .role
            .map_or_else(|| "a device's secret".to_string(), |r| format!("role {r}"));
        tracing::warn!(caller = %caller.name, request = %what, "refused an API call: needs {want}");
        return refuse(
            StatusCode::FORBIDDEN,
            format!("{what} needs role {want}; {} has {have}", caller.name),
        );
    }
    req.extensions_mut().insert(caller);
    next.run(req).await
}

impl Caller {
    /// Who a change is recorded as made by: the token's name when the API
    /// asks for tokens (a caller cannot claim another's), else what the
    /// request says (default `api`).
    pub fn by(&self, claimed: Option<String>) -> String {
        if self.name == "anyone" {
            claimed.unwrap_or_else(|| "api".into())
        } else {
            self.name.clone()
        }
    }
}

/// The caller of a request that passed [`check`] (always there).
pub fn caller(ext: Option<axum::Extension<Caller>>) -> Caller {
    ext.map_or_else(
        || Caller {
            name: "anyone".into(),
            role: None,
        },
        |axum::Extension(c)| c,
    )
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionRequest {
    token: String,
}

/// `POST /api/v1/session {"token"}`: checks the token and sets it as the
/// dashboard's cookie; `DELETE` clears it.
pub async fn session(
    State(s): State<Arc<HubState>>,
    body: Result<Json<SessionRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Ok(Json(b)) = body else {
        return refuse(StatusCode::BAD_REQUEST, "give {\"token\": \"...\"}".into());
    };
    match identify(&s, &b.token) {
        Some(Caller {
            name,
            role: Some(role),
        }) => {
            let cookie = format!(
                "{COOKIE}={}; HttpOnly; SameSite=Strict; Path=/",
                b.token.trim()
            );
            let mut r = Json(json!({"name": name, "role": role})).into_response();
            if let Ok(v) = cookie.parse() {
                r.headers_mut().insert(header::SET_COOKIE, v);
            }
            r
        }
        _ => {
            s.metrics.api_refused("bad_token");
            refuse(
                StatusCode::UNAUTHORIZED,
                "the token is unknown or revoked".into(),
            )
        }
    }
}

pub async fn end_session() -> Response {
    let mut r = StatusCode::NO_CONTENT.into_response();
    if let Ok(v) = format!("{COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0").parse() {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_route_needs_what_the_table_says() {
        let get = Method::GET;
        let post = Method::POST;
        assert_eq!(need(&get, "/healthz"), Need::Nothing);
        assert_eq!(need(&get, "/metrics"), Need::Nothing);
        assert_eq!(need(&get, "/"), Need::Nothing);
        assert_eq!(need(&get, "/dashboard/app.js"), Need::Nothing);
        assert_eq!(need(&post, "/api/v1/session"), Need::Nothing);
        assert_eq!(need(&get, "/api/v1/keys"), Need::DeviceOrViewer);
        assert_eq!(
            need(&get, "/api/v1/artifacts/abc/manifest"),
            Need::DeviceOrViewer
        );
        assert_eq!(
            need(&get, "/api/v1/artifacts/abc/files/m.onnx"),
            Need::DeviceOrViewer
        );
        assert_eq!(need(&get, "/api/v1/artifacts"), Need::Role(Role::Viewer));
        assert_eq!(need(&get, "/api/v1/devices"), Need::Role(Role::Viewer));
        assert_eq!(
            need(&post, "/api/v1/models/m/infer"),
            Need::Role(Role::Viewer)
        );
        assert_eq!(need(&post, "/api/v1/deploy"), Need::Role(Role::Operator));
        assert_eq!(
            need(&Method::PUT, "/api/v1/devices/d/desired"),
            Need::Role(Role::Operator)
        );
        assert_eq!(need(&post, "/api/v1/artifacts"), Need::Role(Role::Operator));
        assert_eq!(
            need(&post, "/api/v1/rollouts/1/abort"),
            Need::Role(Role::Operator)
        );
        for (m, p) in [
            (&get, "/api/v1/identities"),
            (&post, "/api/v1/identities/devices"),
            (&post, "/api/v1/identities/tokens/x/revoke"),
        ] {
            assert_eq!(need(m, p), Need::Role(Role::Admin), "{p}");
        }
    }

    #[test]
    fn a_bearer_token_or_the_cookie_is_what_a_request_presents() {
        let mut h = HeaderMap::new();
        assert_eq!(presented(&h), None);
        h.insert(header::COOKIE, "a=b; conveyor_token=cvt_x".parse().unwrap());
        assert_eq!(presented(&h).as_deref(), Some("cvt_x"));
        h.insert(header::AUTHORIZATION, "Bearer cvt_y".parse().unwrap());
        assert_eq!(presented(&h).as_deref(), Some("cvt_y"));
        h.insert(header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(presented(&h), None, "only bearer tokens");
    }
}
